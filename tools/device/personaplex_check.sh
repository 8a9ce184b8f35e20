#!/usr/bin/env bash
# One device call on the H200: PersonaPlex with random full-size weights (`--model random-personaplex`),
# a wav voice prompt and a ~40-token persona, through `run` with and without CUDA graphs. Prints the
# prompt's time (voice + silence + text + silence frames, prefilled where nothing is sampled) and the
# frame times after it. Expects the stripped CUDA build at .device/moshi-rs(.gz) (carry: [".device"]).
set -uo pipefail
B=${B:-.device/moshi-rs}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -f "$B.gz" ] && gunzip -f "$B.gz"
chmod +x "$B"
P="You are a wise and friendly teacher. Answer questions or provide advice in a clear and engaging way, and keep every answer short, kind and to the point for the student."
for g in on off; do
  "$B" run assets/hello.wav "/tmp/pp_$g.wav" --summary "$OUT/pp_run_$g.json" --model random-personaplex --device cuda --dtype bf16 \
    --text-prompt "$P" --voice-prompt assets/hello.wav --cuda-graphs $g > "$OUT/pp_run_$g.txt" 2>&1
  echo "== personaplex run, graphs $g: rc=$?"; tail -3 "$OUT/pp_run_$g.txt"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({k: d.get(k) for k in ['prompt','startup_s','ms_per_frame','frames']}))" "$OUT/pp_run_$g.json"
done

#!/usr/bin/env bash
# One device call: PersonaPlex's tiny fixture through `run` on CUDA against the same on the CPU (the
# prompt's frames are sampled on the host, the conversation's on the device sampler), greedy and
# seeded-sampled, plus the README's Moshi run and `verify golden`. Expects the CUDA build of
# moshi-rs at .device/moshi-rs(.gz) (see cuda_check.sh); writes every output under $OUT.
set -uo pipefail
B=${B:-.device/moshi-rs}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -f "$B.gz" ] && gunzip -f "$B.gz"
chmod +x "$B"
nvidia-smi -L
D=golden/personaplex_tiny
P=(--model "$D" --text-prompt "You are a helpful assistant named Ada." --voice-prompt voice --voice-prompt-dir "$D")
for dev in cpu cuda; do
  "$B" run "${P[@]}" --device "$dev" --greedy --silence 0 --summary "$OUT/greedy_$dev.json" "$D/user.wav" "$OUT/greedy_$dev.wav" > "$OUT/greedy_$dev.txt" 2>&1
  echo "== greedy $dev: rc=$?"; tail -1 "$OUT/greedy_$dev.txt"
  "$B" run "${P[@]}" --device "$dev" --seed 7 --top-k 40 --silence 1 --summary "$OUT/sampled_$dev.json" "$D/user.wav" "$OUT/sampled_$dev.wav" > "$OUT/sampled_$dev.txt" 2>&1
  echo "== sampled $dev: rc=$?"; tail -1 "$OUT/sampled_$dev.txt"
  "$B" run assets/hello.wav "$OUT/hello_$dev.wav" --device "$dev" --summary "$OUT/hello_$dev.json" > "$OUT/hello_$dev.txt" 2>&1
  echo "== moshi hello $dev: rc=$?"; tail -1 "$OUT/hello_$dev.txt"
done
for run in greedy sampled hello; do
  python3 - "$OUT/${run}_cpu" "$OUT/${run}_cuda" <<'PY'
import json, struct, sys
def pcm(path):  # a 32-bit float wav: the samples of its data chunk
    b = open(path, "rb").read(); i = 12
    while b[i:i + 4] != b"data":
        i += 8 + struct.unpack("<I", b[i + 4:i + 8])[0]
    n = struct.unpack("<I", b[i + 4:i + 8])[0] // 4
    return struct.unpack(f"<{n}f", b[i + 8:i + 8 + 4 * n])
a, b = (json.load(open(p + ".json")) for p in sys.argv[1:3])
x, y = (pcm(p + ".wav") for p in sys.argv[1:3])
diff = max((abs(u - v) for u, v in zip(x, y)), default=0.0)
print(sys.argv[1].split("/")[-1], "vs cuda: transcripts equal:", a["transcript"] == b["transcript"], "| samples", len(x), len(y), "| max |Δpcm|", diff)
PY
done
"$B" verify golden --golden golden > "$OUT/verify_golden.txt" 2>&1; echo "== verify golden: rc=$?"; tail -1 "$OUT/verify_golden.txt"

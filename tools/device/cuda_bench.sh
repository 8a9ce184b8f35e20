#!/usr/bin/env bash
# One device call on the H200 (see docs/benchmarks.md, "How to reproduce"): issue 6's figures.
# Expects the stripped CUDA build at .device/moshi-rs(.gz) and the reference wheel
# .device/moshi-0.2.13-py3-none-any.whl (`pip download --no-deps moshi==0.2.13 -d .device`),
# carried with `carry: [".device"]`. Writes every output under $OUT. PARTS picks what runs:
#   ops      verify ops --device cuda
#   b1       batch 1: LM bench (breakdown) and the whole pipeline, model-dtype and 8-bit KV cache
#   ref      the reference, batch 1 (and REF_BATCH), same call
#   refc     the reference, batch 1, with torch.compile (NO_TORCH_COMPILE unset: any value disables it)
#   sweep    conversations per GPU: the serve step (slots) at the full 3000-step context
#   model    verify model on the full-size random model (CPU f32 reference), bf16 + 8-bit KV
#   quick    verify model on a 2-layer full-width random model, f32 and bf16 (a minute)
#   sampler  batch 1 with the host sampler, beside b1's device sampler
#   eager    batch 1 (LM bench and whole pipeline) with --cuda-graphs off, beside b1 (graphs on)
#   unfused  batch 1 (LM bench and whole pipeline) with MOSHI_FUSED_ADD_NORM=0 (residual adds and
#            RMSNorms as separate launches), beside b1 (fused)
#   scale    LM step breakdown (per temporal layer, synchronised) at B=96 and 128, full context, 8-bit KV
#   startup  write a random full-size 7B to the local disk once, then time `run` from there
#            (launch → first frame), page cache dropped first where allowed, then warm
#   q8       8-bit weights (--weights q8): LM bench and the whole pipeline at batch 1 (bf16 and
#            8-bit KV), and the full-context conversations sweep with the 8-bit KV cache
#   q8b1     batch 1 only: lm bench and bench with bf16 then 8-bit weights, side by side
#   hand     PersonaPlex (random full size): connect → handshake through `serve` (loadtest) with a
#            preset-style .pt voice made here by torch and a 40-token persona; 1 client, then 4
#            joining a running batch one second apart
# Every run's peak GPU memory (nvidia-smi, sampled every 200 ms) is printed and kept in $name.mem.
set -uo pipefail
B=${B:-.device/moshi-rs}
OUT=${OUT:-/tmp/out}
PARTS=${PARTS:-ops b1 ref}
FRAMES=${FRAMES:-100}
# Everything is written under $OUT/raw and packed into $OUT/raw.tgz at the end (the device
# tool brings back only a few files per call).
FINAL=$OUT; OUT=$FINAL/raw
mkdir -p "$OUT"
trap 'tar czf "$FINAL/raw.tgz" -C "$FINAL" raw && rm -rf "$OUT"' EXIT
[ -f "$B.gz" ] && gunzip -f "$B.gz"
chmod +x "$B"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
date -u +%FT%TZ > "$OUT/date.txt"
run() { # name, args...
  local name=$1; shift
  local t0=$(date +%s)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/$name.mem" 2>/dev/null &
  local mem=$!
  timeout "${LIMIT:-300}" "$B" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  kill $mem 2>/dev/null; wait $mem 2>/dev/null
  echo "== $name: rc=$rc ($(( $(date +%s) - t0 )) s), peak GPU memory $(sort -n "$OUT/$name.mem" | tail -1) MiB"
  grep -hE "FAIL|checks passed|checks failed|Error|error" "$OUT/$name.txt" | head -8
}
for part in $PARTS; do case $part in
ops)
  run verify_ops verify ops --device cuda ;;
b1)
  run lm_bench_b1 lm bench --device cuda --dtype bf16 --layers 32 --steps 100 --warmup 10
  grep "^{" "$OUT/lm_bench_b1.txt" | tail -c 700; echo
  run bench_b1 bench --model random --device cuda --dtype bf16 --frames "$FRAMES" --warmup 10 --json
  grep "^{" "$OUT/bench_b1.txt"
  run bench_b1_int8 bench --model random --device cuda --dtype bf16 --frames "$FRAMES" --warmup 10 --kv-cache int8 --json
  grep "^{" "$OUT/bench_b1_int8.txt" ;;
ref)
  python3 -m pip install --no-deps --quiet .device/moshi-0.2.13-py3-none-any.whl 2>&1 | tail -3
  t0=$(date +%s)
  NO_TORCH_COMPILE=${NO_TORCH_COMPILE:-1} python3 tools/bench/reference_gpu.py --batch "${REF_BATCH:-1}" --frames "$FRAMES" --warmup 10 \
    > "$OUT/reference.txt" 2>&1
  echo "== reference: rc=$? ($(( $(date +%s) - t0 )) s)"; grep -E "^\{|Error" "$OUT/reference.txt" ;;
refc)
  python3 -m pip install --no-deps --quiet .device/moshi-0.2.13-py3-none-any.whl 2>&1 | tail -3
  t0=$(date +%s)
  env -u NO_TORCH_COMPILE python3 tools/bench/reference_gpu.py --batch 1 --frames "$FRAMES" --warmup 10 \
    > "$OUT/reference_compiled.txt" 2>&1
  echo "== reference compiled: rc=$? ($(( $(date +%s) - t0 )) s)"; grep -E "^\{|Error" "$OUT/reference_compiled.txt" ;;
sweep)
  run sweep_int8 bench --model random --device cuda --dtype bf16 --slots --context-fill 3000 --kv-cache int8 \
    --batch "${SWEEP:-1,8,32,64,80,96,128,160}" --frames "${SWEEP_FRAMES:-30}" --warmup 3 --json
  grep "^{" "$OUT/sweep_int8.txt"
  run sweep_bf16 bench --model random --device cuda --dtype bf16 --slots --context-fill 3000 --kv-cache model \
    --batch "${SWEEP_BF16:-1,8,32,64,80}" --frames "${SWEEP_FRAMES:-30}" --warmup 3 --json
  grep "^{" "$OUT/sweep_bf16.txt" ;;
quick)
  run verify_model_random2_f32 verify model --model random:2 --device cuda --dtype f32 --frames 8
  # 40 frames: bf16's greedy-agreement bound (90%) means little over 8 tokens (one near-tie of
  # random weights is 12.5%).
  run verify_model_random2_bf16 verify model --model random:2 --device cuda --dtype bf16 --frames 40 ;;
sampler)
  run bench_b1_host_sampler bench --model random --device cuda --dtype bf16 --frames "$FRAMES" --warmup 10 --sampler host --json
  grep "^{" "$OUT/bench_b1_host_sampler.txt" ;;
eager)
  run lm_bench_b1_eager lm bench --device cuda --dtype bf16 --layers 32 --steps 100 --warmup 10 --cuda-graphs off
  grep "^{" "$OUT/lm_bench_b1_eager.txt" | tail -c 700; echo
  run bench_b1_eager bench --model random --device cuda --dtype bf16 --frames "$FRAMES" --warmup 10 --cuda-graphs off --json
  grep "^{" "$OUT/bench_b1_eager.txt" ;;
unfused)
  MOSHI_FUSED_ADD_NORM=0 run lm_bench_b1_unfused lm bench --device cuda --dtype bf16 --layers 32 --steps 100 --warmup 10
  grep "^{" "$OUT/lm_bench_b1_unfused.txt" | tail -c 700; echo
  MOSHI_FUSED_ADD_NORM=0 run bench_b1_unfused bench --model random --device cuda --dtype bf16 --frames "$FRAMES" --warmup 10 --json
  grep "^{" "$OUT/bench_b1_unfused.txt" ;;
scale)
  for b in ${SCALE:-96 128}; do
    run lm_bench_b${b}_int8 lm bench --device cuda --dtype bf16 --layers 32 --steps 10 --warmup 2 --batch $b --context-fill 3000 --kv-cache int8
    grep "^{" "$OUT/lm_bench_b${b}_int8.txt" | tail -c 900; echo
  done ;;
startup)
  DIR=${STARTUP_DIR:-/tmp/moshi-random-7b}
  run write_random lm write-random "$DIR" --device cuda --dtype bf16
  tail -1 "$OUT/write_random.txt"; du -sh "$DIR"
  for pass in cold warm; do
    [ $pass = cold ] && { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null && echo "page cache dropped" || echo "page cache not dropped (not allowed)"; }
    t0=$(date +%s.%N)
    "$B" run assets/hello.wav "/tmp/startup_$pass.wav" --summary "$OUT/startup_$pass.json" --model "$DIR" --device cuda --dtype bf16 --max-steps 5 > "$OUT/startup_$pass.txt" 2>&1
    echo "== startup $pass: rc=$? wall $(python3 -c "import sys,time; print(round(time.time() - float(sys.argv[1]), 2))" "$t0") s"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d['startup_s']))" "$OUT/startup_$pass.json"
  done ;;
q8)
  run lm_bench_b1_q8 lm bench --device cuda --dtype bf16 --layers 32 --steps 100 --warmup 10 --weights q8
  grep "^{" "$OUT/lm_bench_b1_q8.txt" | tail -c 700; echo
  run bench_b1_q8 bench --model random --device cuda --dtype bf16 --frames "$FRAMES" --warmup 10 --weights q8 --json
  grep "^{" "$OUT/bench_b1_q8.txt"
  run bench_b1_q8_int8 bench --model random --device cuda --dtype bf16 --frames "$FRAMES" --warmup 10 --weights q8 --kv-cache int8 --json
  grep "^{" "$OUT/bench_b1_q8_int8.txt"
  run sweep_q8_int8 bench --model random --device cuda --dtype bf16 --weights q8 --slots --context-fill 3000 --kv-cache int8 \
    --batch "${SWEEP_Q8:-1,64,128,160,192}" --frames "${SWEEP_FRAMES:-30}" --warmup 3 --json
  grep "^{" "$OUT/sweep_q8_int8.txt" ;;
q8b1)
  # bf16 and 8-bit weights side by side at batch 1, in one call (issue 17 item 5).
  for w in model q8; do
    run lm_bench_b1_w$w lm bench --device cuda --dtype bf16 --layers 32 --steps 100 --warmup 10 --weights $w
    grep "^{" "$OUT/lm_bench_b1_w$w.txt" | tail -c 700; echo
  done
  for w in model q8; do
    run bench_b1_w$w bench --model random --device cuda --dtype bf16 --frames "$FRAMES" --warmup 10 --weights $w --json
    grep "^{" "$OUT/bench_b1_w$w.txt"
  done ;;
hand)
  VD=/tmp/voices; mkdir -p "$VD"
  # A preset's layout ([T, 1, 1, 4096] summed input embeddings, [1, 17, 4] token ring), random.
  python3 -c "
import torch; g = torch.Generator().manual_seed(5)
torch.save({'embeddings': torch.randn(${VOICE_FRAMES:-100}, 1, 1, 4096, generator=g) * 0.02,
            'cache': torch.randint(0, 2048, (1, 17, 4), generator=g)}, '$VD/RANDF0.pt')" && ls -l "$VD"
  PERSONA="You are a wise and friendly teacher. Answer questions or provide advice in a clear and engaging way, and keep every answer short and kind."
  Q="text_prompt=$PERSONA&voice_prompt=RANDF0.pt"
  LIMIT=400 run hand_1 loadtest --model random-personaplex --device cuda --dtype bf16 --conversations 1 --seconds 6 \
    --voice-prompt-dir "$VD" --query "$Q"
  grep -E "^\{|handshake" "$OUT/hand_1.txt" | tail -c 1500; echo
  LIMIT=400 run hand_4 loadtest --model random-personaplex --device cuda --dtype bf16 --conversations 4 --stagger 1 --seconds 6 \
    --voice-prompt-dir "$VD" --query "$Q"
  grep -E "^\{|handshake" "$OUT/hand_4.txt" | tail -c 1500; echo ;;
model)
  LIMIT=${VERIFY_LIMIT:-300} run verify_model_7b verify model --model random:32 --device cuda --dtype bf16 \
    --frames "${VERIFY_FRAMES:-100}" --kv-cache model,int8
  tail -45 "$OUT/verify_model_7b.txt" ;;
esac; done

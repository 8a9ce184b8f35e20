#!/bin/sh
# CPU q8 vs bf16 vs f32 LM step: a full-width random LM (the 7B's width, 2 temporal layers,
# 2 depformer layers), batch 1, 20 steps after 3 warm-up; one JSON line per run.
B=${B:-target/release/moshi-rs}
for w in "f32 model" "bf16 model" "f32 q8" "bf16 q8"; do
  set -- $w
  $B lm bench --layers 2 --depformer-layers 2 --steps 20 --warmup 3 --dtype $1 --weights $2 2>/dev/null
done

#!/usr/bin/env python3
"""Time the PyPI `moshi` reference on CUDA the way `moshi-rs bench --model random` times moshi-rs:
full-size Mimi (f32) and the 7B LM (bf16) with random weights, B conversations streamed one 80 ms
frame at a time (Mimi encode -> LMGen.step -> Mimi decode), each stage ended by a synchronize.

LMGen keeps its own CUDA graphs; torch.compile is on unless NO_TORCH_COMPILE=1 (moshi's switch).
Prints one JSON line per batch size. Needs torch with CUDA and `pip install --no-deps moshi==0.2.13`.

    python3 tools/bench/reference_gpu.py --batch 1 --frames 100 --warmup 10
"""
import argparse
import json
import math
import os
import statistics
import time

import torch
from moshi.models import LMGen, loaders


def pct(v, q):
    s = sorted(v)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    t0 = time.perf_counter()
    mimi = loaders.get_mimi(None, device=dev)
    lm = loaders.get_moshi_lm(None, device=dev, dtype=torch.bfloat16)
    mimi.eval()
    lm.eval()
    build_s = time.perf_counter() - t0
    frame = mimi.frame_size
    for b in [int(x) for x in args.batch.split(",")]:
        gen = LMGen(lm, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25)
        times = {"encode": [], "lm": [], "decode": [], "total": []}
        t = torch.arange(frame * (args.frames + args.warmup), device=dev, dtype=torch.float32) / 24000.0
        signal = 0.2 * torch.sin(2 * math.pi * 140.0 * t)
        try:
            with torch.no_grad(), mimi.streaming(b), gen.streaming(b):
                for i in range(args.warmup + args.frames):
                    chunk = signal[i * frame:(i + 1) * frame].view(1, 1, frame).expand(b, 1, frame).contiguous()
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    codes = mimi.encode(chunk)
                    torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    tokens = gen.step(codes)
                    torch.cuda.synchronize()
                    t2 = time.perf_counter()
                    if tokens is not None:
                        mimi.decode(tokens[:, 1:])
                        torch.cuda.synchronize()
                    t3 = time.perf_counter()
                    if i >= args.warmup:
                        for k, v in (("encode", t1 - t0), ("lm", t2 - t1), ("decode", t3 - t2), ("total", t3 - t0)):
                            times[k].append(v * 1e3)
            free, total = torch.cuda.mem_get_info()
            out = {"impl": "reference moshi 0.2.13", "batch": b, "frames": args.frames, "warmup": args.warmup,
                   "torch_compile": not os.environ.get("NO_TORCH_COMPILE"), "build_s": round(build_s, 1),
                   "device_memory_used_gb": (total - free) / 1e9,
                   "max_allocated_gb": torch.cuda.max_memory_allocated() / 1e9}
            for k, v in times.items():
                out[f"{k}_ms"] = {"median": round(statistics.median(v), 3), "p90": round(pct(v, 0.9), 3),
                                  "p99": round(pct(v, 0.99), 3)}
        except torch.OutOfMemoryError as e:
            out = {"impl": "reference moshi 0.2.13", "batch": b, "error": f"out of memory: {str(e)[:120]}"}
        print(json.dumps(out), flush=True)
        del gen
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

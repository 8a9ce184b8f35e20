#!/usr/bin/env python3
"""Benchmark the PyTorch reference (moshi==0.2.13) LM streaming step on CPU, batch 1: a full-width
Moshi LM (the 7B's `_lm_kwargs`) with fewer temporal layers, random weights (the reference's own
init), timed as `LMGen.step` (default sampling: text 0.7/25, audio 0.8/250), with the same breakdown
as `moshi-rs lm bench`: each temporal layer (forward hooks), each depformer step.

    NO_TORCH_COMPILE=1 python tools/golden/bench_reference_lm.py [--layers 2] [--depformer-layers 6]
        [--threads 2] [--steps 20] [--warmup 3] [--dtype f32|bf16]

Prints one JSON object on the last line of stdout (same keys as `moshi-rs lm bench`).
"""

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from moshi.models import loaders  # noqa: E402
from moshi.models.lm import LMGen  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--depformer-layers", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--flush-denormal", action="store_true")
    args = ap.parse_args()
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16

    kw = copy.deepcopy(loaders._lm_kwargs)
    kw["num_layers"] = args.layers
    kw["depformer_num_layers"] = args.depformer_layers
    t0 = time.perf_counter()
    lm = loaders.get_moshi_lm(None, lm_kwargs=kw, device="cpu", dtype=dtype)
    lm.eval()
    params = sum(p.numel() for p in lm.parameters())
    print(f"reference LM: {params} parameters in {time.perf_counter() - t0:.1f} s", flush=True)

    # Per-layer marks: a forward hook after each temporal layer; the depformer calls wrapped.
    marks = []
    for layer in lm.transformer.layers:
        layer.register_forward_hook(lambda *_: marks.append(("layer", time.perf_counter())))
    orig_text, orig_dep = lm.forward_text, lm.forward_depformer

    def forward_text(*a, **k):
        marks.append(("text_start", time.perf_counter()))
        out = orig_text(*a, **k)
        marks.append(("text_end", time.perf_counter()))
        return out

    def forward_depformer(*a, **k):
        s = time.perf_counter()
        out = orig_dep(*a, **k)
        marks.append(("dep", s, time.perf_counter()))
        return out

    lm.forward_text = forward_text
    lm.forward_depformer = forward_depformer

    gen = LMGen(lm, use_sampling=True, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25)
    n_user = lm.n_q - lm.dep_q
    user = torch.full((1, n_user, 1), 5, dtype=torch.long)
    step_ms, layer_ms, dep_ms, head_ms = [], [[] for _ in range(args.layers)], [[] for _ in range(lm.dep_q)], []
    with torch.no_grad(), gen.streaming(1):
        for i in range(args.warmup + args.steps):
            marks.clear()
            s = time.perf_counter()
            gen.step(user)
            e = time.perf_counter()
            if i < args.warmup:
                continue
            step_ms.append((e - s) * 1e3)
            t_start = next(m[1] for m in marks if m[0] == "text_start")
            t_end = next(m[1] for m in marks if m[0] == "text_end")
            prev = t_start
            layers = [m[1] for m in marks if m[0] == "layer"]
            for j, t in enumerate(layers):
                # The first interval also holds the embeddings (as moshi-rs's layer 0 does not).
                layer_ms[j].append((t - prev) * 1e3)
                prev = t
            head_ms.append((t_end - prev) * 1e3)
            deps = [m for m in marks if m[0] == "dep"]
            for k, m in enumerate(deps):
                dep_ms[k].append((m[2] - m[1]) * 1e3)

    med = lambda v: round(float(np.median(v)), 3)  # noqa: E731
    dep_med = [med(v) for v in dep_ms]
    res = {
        "step_ms_median": med(step_ms),
        "temporal_layer_ms_median": [med(v) for v in layer_ms],
        "temporal_embed_and_heads_ms_median": med(head_ms),
        "depformer_step_ms_median": dep_med,
        "depformer_total_ms": round(sum(dep_med), 3),
        "temporal_layers": args.layers,
        "depformer_layers": args.depformer_layers,
        "dtype": args.dtype,
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "torch": torch.__version__,
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Benchmark the PyTorch reference (moshi==0.2.13) full-size Mimi: streaming encode + decode of one
1920-sample frame at a time, batch 1, CPU.

The model is the real architecture (loaders.get_mimi with the released config) with random weights,
randomised like tools/golden/make_fixtures.py does (LayerScale / LayerNorm / data-scaled codebooks),
or loaded from --weights (a safetensors file with the released naming, e.g. one written earlier by
--save-weights), so that the Rust benchmark can run on the very same weights.

    NO_TORCH_COMPILE=1 python tools/golden/bench_reference.py [--threads 1] [--frames 50]
        [--save-weights PATH | --weights PATH]

Prints one JSON object on the last line of stdout.
"""

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
from moshi.models import loaders  # noqa: E402

FRAME = 1920


def make_signal(n_samples: int, batch: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 24000.0
    out = []
    for _ in range(batch):
        s = np.zeros(n_samples)
        for _ in range(4):
            f = rng.uniform(80, 3000)
            s += rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        s += 0.02 * rng.standard_normal(n_samples)
        out.append(s)
    return torch.from_numpy(np.stack(out)[:, None, :].astype(np.float32))


def build_random(seed: int):
    torch.manual_seed(seed)
    model = loaders.get_mimi(None, device="cpu", num_codebooks=8)
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    mf.randomise_non_codebook(model, gen)
    calib = make_signal(2 * 24000, 4, seed + 2)       # 4 x 2 s -> 100 latent frames
    with torch.no_grad():
        latent = model._encode_to_unquantized_latent(calib)
    mf.randomise_codebooks(model, latent, gen, verbose=False)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1234)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--save-weights", type=Path, help="save the random weights (released naming) here")
    g.add_argument("--weights", type=Path, help="load weights (released naming) from this file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)

    if args.weights is not None:
        model = loaders.get_mimi(args.weights, device="cpu", num_codebooks=8)
    else:
        model = build_random(args.seed)
        if args.save_weights is not None:
            sd = mf.released_state_dict(model)
            args.save_weights.parent.mkdir(parents=True, exist_ok=True)
            meta = {"golden": json.dumps({"generator": "tools/golden/bench_reference.py",
                                          "seed": args.seed, "versions": mf.versions()},
                                         sort_keys=True)}
            save_file(sd, str(args.save_weights), metadata=meta)
            print(f"saved {len(sd)} tensors to {args.save_weights}", file=sys.stderr)
    model.eval()
    model.set_num_codebooks(8)

    n = args.warmup + args.frames
    x = make_signal(n * FRAME, 1, args.seed + 3)
    enc_ms, dec_ms = [], []
    with torch.no_grad(), model.streaming(batch_size=1):
        for i in range(n):
            chunk = x[..., i * FRAME:(i + 1) * FRAME]
            t0 = time.perf_counter()
            codes = model.encode(chunk)
            t1 = time.perf_counter()
            pcm = model.decode(codes)
            t2 = time.perf_counter()
            assert codes.shape == (1, 8, 1) and pcm.shape == (1, 1, FRAME)
            if i >= args.warmup:
                enc_ms.append((t1 - t0) * 1e3)
                dec_ms.append((t2 - t1) * 1e3)
    enc = np.array(enc_ms)
    dec = np.array(dec_ms)
    tot = enc + dec
    res = {
        "encode_ms_median": round(float(np.median(enc)), 3),
        "decode_ms_median": round(float(np.median(dec)), 3),
        "total_ms_median": round(float(np.median(tot)), 3),
        "p90": round(float(np.percentile(tot, 90)), 3),
        "encode_ms_p90": round(float(np.percentile(enc, 90)), 3),
        "decode_ms_p90": round(float(np.percentile(dec, 90)), 3),
        "frames": args.frames,
        "warmup": args.warmup,
        "threads": args.threads,
        "torch": torch.__version__,
        "moshi": mf.versions()["moshi"],
        "weights": str(args.weights) if args.weights else f"random(seed={args.seed})",
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()

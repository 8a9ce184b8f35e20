#!/usr/bin/env python3
"""How often does the reference itself keep its greedy choices when run in bf16 instead of f32?

The PyPI `moshi` 0.2.13 7B LM with its own random initialisation, built once in f32 on the GPU and
copied to bf16; both run `LMModel.forward` (teacher-forced) on the same random codes; the argmax of
the text and audio logits are compared over the valid positions. This is the yardstick for
`moshi-rs verify model`'s greedy agreement on a random model: a random model's top logits are close,
so bf16 rounding alone flips some of them, in any implementation.

    python3 tools/bench/reference_bf16_agreement.py --steps 100
"""
import argparse
import copy
import json

import torch
from moshi.models import loaders


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    dev = torch.device("cuda")
    lm32 = loaders.get_moshi_lm(None, device=dev, dtype=torch.float32).eval()
    lm16 = copy.deepcopy(lm32).to(torch.bfloat16)
    k = lm32.num_codebooks
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    codes = torch.randint(0, lm32.card, (1, k, args.steps), generator=g)
    codes[:, 0] = torch.randint(0, lm32.text_card, (1, args.steps), generator=g)
    codes = codes.to(dev)
    with torch.no_grad():
        o32, o16 = lm32.forward(codes), lm16.forward(codes)
    out = {"impl": "reference moshi 0.2.13", "steps": args.steps}
    for name, a, b, m in (("text", o32.text_logits, o16.text_logits, o32.text_mask),
                          ("audio", o32.logits, o16.logits, o32.mask)):
        same = (a.float().argmax(-1) == b.float().argmax(-1))[m]
        rel = ((a.float() - b.float()).abs().max() / a.float().abs().max()).item()
        out[name] = {"agreement": same.float().mean().item(), "compared": int(same.numel()), "max_rel_logit_diff": rel}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

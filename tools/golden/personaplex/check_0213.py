#!/usr/bin/env python3
"""Cross-checks between Kyutai's moshi 0.2.13 and NVIDIA's fork that golden/README.md states
(section golden/personaplex_tiny/). Writes nothing.

  1. The fork's loaders._lm_kwargs equals 0.2.13's plus `depformer_causal: True`; the Mimi kwargs are equal.
  2. 0.2.13's StreamingMultiheadAttention._load_hook on the fused per-step depformer weights of
     golden/personaplex_tiny/model.safetensors: with weights_per_step 16 it gives exactly the fork's blocks
     (rows [3D t, 3D (t+1)) / [D t, D (t+1))); with 8 PyTorch raises a size mismatch.

Usage (the venv of requirements.txt; moshi 0.2.13 only unpacked, not installed, so the fork stays `moshi`):
    pip download --no-deps moshi==0.2.13 -d /tmp/m0213 && python -m zipfile -e /tmp/m0213/moshi-0.2.13-*.whl /tmp/m0213/x
    NO_TORCH_COMPILE=1 /work/venvs/personaplex/bin/python tools/golden/personaplex/check_0213.py /tmp/m0213/x
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def main():
    site = Path(sys.argv[1])
    import moshi.models.loaders as fork  # the fork (installed)
    fork_kw = dict(fork._lm_kwargs)
    fork_mimi = {k: dict(getattr(fork, k)) for k in ("_seanet_kwargs", "_quantizer_kwargs", "_transformer_kwargs")}
    assert fork.__file__ and "moshi" in fork.__file__
    for m in [m for m in sys.modules if m == "moshi" or m.startswith("moshi.")]:
        del sys.modules[m]
    sys.path.insert(0, str(site))
    import moshi  # noqa: E402
    assert moshi.__version__ == "0.2.13", moshi.__version__
    from moshi.models import loaders as k13
    from moshi.modules.transformer import StreamingMultiheadAttention

    only_fork = {k: v for k, v in fork_kw.items() if k not in k13._lm_kwargs or k13._lm_kwargs[k] != v}
    only_k13 = {k: v for k, v in k13._lm_kwargs.items() if k not in fork_kw or fork_kw[k] != v}
    assert only_fork == {"depformer_causal": True} and not only_k13, (only_fork, only_k13)
    for k, v in fork_mimi.items():
        assert getattr(k13, k) == v, k
    print("1. fork _lm_kwargs = moshi 0.2.13's + {'depformer_causal': True}; Mimi kwargs equal")

    sd = load_file(str(REPO / "golden" / "personaplex_tiny" / "model.safetensors"))
    w = sd["depformer.layers.0.self_attn.in_proj_weight"].float()
    o = sd["depformer.layers.0.self_attn.out_proj.weight"].float()
    D = w.shape[1]
    for mult in (16, 8):
        att = StreamingMultiheadAttention(embed_dim=D, num_heads=2, causal=True, context=None, rope=None,
                                          weights_per_step=mult)
        try:
            att.load_state_dict({"in_proj_weight": w, "out_proj.weight": o}, strict=False, assign=True)
        except RuntimeError as e:
            print(f"2. weights_per_step {mult}: RuntimeError: {str(e).splitlines()[1].strip()}")
            assert mult == 8
            continue
        assert mult == 16
        for t in range(mult):
            assert torch.equal(att.in_projs[t].weight, w[3 * D * t: 3 * D * (t + 1)])
            assert torch.equal(att.out_projs[t].weight, o[D * t: D * (t + 1)])
        print(f"2. weights_per_step {mult}: loads; step t = in_proj rows [3D t, 3D (t+1)), out_proj rows"
              f" [D t, D (t+1)) (D = {D}), as in the fork")


if __name__ == "__main__":
    main()

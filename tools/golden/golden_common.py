"""Helpers shared by the fixture scripts in this folder (make_fixtures.py, make_lm_fixtures.py)."""
import json
import platform
import re
from pathlib import Path

import moshi
import numpy as np
import safetensors
import torch

REPO = Path(__file__).resolve().parents[2]


def versions(**extra) -> dict:
    """Versions recorded in every fixture's metadata (`extra` adds e.g. sentencepiece)."""
    v = {
        "moshi": getattr(moshi, "__version__", "?"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": getattr(safetensors, "__version__", "?"),
    }
    v.update(extra)
    v["python"] = platform.python_version()
    return v


def maxdiff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def key_pattern(k: str) -> str:
    """A tensor name with its indices replaced by N (two passes: adjacent indices share a dot)."""
    return re.sub(r"\.\d+\.", ".N.", re.sub(r"\.\d+\.", ".N.", k))


def check_naming(sd: dict, names_file: Path):
    """Assert that `sd` has exactly the released file's key patterns and tensor ranks."""
    if not names_file.exists():
        raise SystemExit(f"released names file not found: {names_file}")
    ref = {}
    for line in names_file.read_text().splitlines():
        if line.strip():
            parts = line.split("\t")
            ref[parts[0]] = parts[1] if len(parts) > 1 else None
    ref_pat = {key_pattern(k) for k in ref}
    ours = {key_pattern(k) for k in sd}
    only_ours = sorted(ours - ref_pat)
    only_ref = sorted(ref_pat - ours)
    print(f"naming check vs {names_file.name}: {len(ours)} patterns ours ({len(sd)} tensors),"
          f" {len(ref_pat)} released ({len(ref)} tensors)")
    assert not only_ours, f"patterns not in released file: {only_ours}"
    assert not only_ref, f"released patterns missing: {only_ref}"
    ref_rank = {key_pattern(k): len(json.loads(s)) for k, s in ref.items() if s}
    for k, v in sd.items():
        assert v.dim() == ref_rank[key_pattern(k)], (k, tuple(v.shape))
    print("  key patterns (and tensor ranks) identical to the released checkpoint")

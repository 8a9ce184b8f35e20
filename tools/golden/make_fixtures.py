#!/usr/bin/env python3
"""Generate golden reference fixtures for moshi-rs from Kyutai's PyTorch reference (moshi==0.2.13).

Builds a TINY Mimi with the reference's own `moshi.models.loaders.get_mimi` (same classes and wiring as
the released model, only smaller widths), randomises every weight deterministically, and records the
input and every stage's output, in batch (non-streaming) mode and in the reference's own streaming
mode (1920-sample chunks), into golden/mimi_tiny/.

Usage (from the repository root):
    NO_TORCH_COMPILE=1 python tools/golden/make_fixtures.py [--out golden/mimi_tiny]

Outputs:
    golden/mimi_tiny/model.safetensors   weights, released-checkpoint naming, f32
    golden/mimi_tiny/config.json         tiny config (Kyutai key names)
    golden/mimi_tiny/io.safetensors      input.pcm, batch.* and stream.* tensors
"""

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import save_file, load_file  # noqa: E402

import moshi  # noqa: E402
from moshi.models import loaders  # noqa: E402
from golden_common import REPO, check_naming, maxdiff, versions  # noqa: E402
from moshi.models.compression import MimiModel  # noqa: E402
from moshi.modules.conv import pad_for_conv1d  # noqa: E402
from moshi.modules.transformer import LayerScale  # noqa: E402
from moshi.quantization.core_vq import EuclideanCodebook  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Seeds and sizes
# --------------------------------------------------------------------------------------------------
SEED_WEIGHTS = 1234        # torch.manual_seed before get_mimi (default conv/linear init)
SEED_RANDOMISE = 5678      # torch.Generator for LayerScale / LayerNorm / codebooks
SEED_SIGNAL = 42           # numpy default_rng for the input signals
BATCH = 2
FRAME = 1920
N_FRAMES = 6
T = N_FRAMES * FRAME       # 11520 samples
NUM_CODEBOOKS = 8          # active codebooks (of 16 in the tiny model), like Moshi's 8 of 32
SHORT_CONTEXT = 5          # transformer context of the ctx5 variant (streaming != batch there)

SEANET = {
    "channels": 1,
    "dimension": 32,
    "causal": True,
    "n_filters": 4,
    "n_residual_layers": 1,
    "activation": "ELU",
    "compress": 2,
    "dilation_base": 2,
    "disable_norm_outer_blocks": 0,
    "kernel_size": 7,
    "residual_kernel_size": 3,
    "last_kernel_size": 3,
    "norm": "none",
    "pad_mode": "constant",
    "ratios": [8, 6, 5, 4],
    "true_skip": True,
}
TRANSFORMER = {
    "d_model": 32,
    "num_heads": 4,
    "num_layers": 2,
    "causal": True,
    "layer_scale": 0.01,
    "context": 250,
    "conv_layout": True,
    "max_period": 10000,
    "gating": "none",
    "norm": "layer_norm",
    "positional_embedding": "rope",
    "dim_feedforward": 64,
    "input_dimension": 32,
    "output_dimensions": [32],
}
QUANTIZER = {
    "dimension": 16,
    "n_q": 16,
    "bins": 64,
    "input_dimension": 32,
    "output_dimension": 32,
    # SplitResidualVectorQuantizer's default (loaders does not pass it); explicit for the Rust side.
    "n_q_semantic": 1,
}
MIMI_CONFIG = {
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": SEANET,
    "quantizer": QUANTIZER,
    "transformer": TRANSFORMER,
}




# --------------------------------------------------------------------------------------------------
# Weight randomisation (shared with bench_reference.py)
# --------------------------------------------------------------------------------------------------
def iter_codebooks(model: MimiModel):
    """Yields (name, EuclideanCodebook) in RVQ order: rvq_first layers, then rvq_rest layers."""
    for rvq_name in ("rvq_first", "rvq_rest"):
        rvq = getattr(model.quantizer, rvq_name)
        for i, layer in enumerate(rvq.vq.layers):
            yield f"quantizer.{rvq_name}.vq.layers.{i}._codebook", rvq, i, layer._codebook


def reset_codebook_cache(cb: EuclideanCodebook):
    # `embedding` is a lazily-computed, NON-persistent buffer: embedding_sum / clamp(cluster_usage, eps).
    # It is computed on first access and never invalidated in eval mode, so it must be reset after any
    # change to embedding_sum / cluster_usage (load_state_dict does NOT reset it either).
    cb.register_buffer("_embedding", None, persistent=False)


def randomise_non_codebook(model: MimiModel, gen: torch.Generator):
    """LayerScale scales and LayerNorm affine params. Convs/linears keep the (seeded) default init."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, LayerScale):
                mod.scale.copy_(torch.rand(mod.scale.shape, generator=gen) * 0.45 + 0.05)  # U(0.05, 0.5)
            elif isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)     # U(0.5, 1.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)


@torch.no_grad()
def randomise_codebooks(model: MimiModel, latent: torch.Tensor, gen: torch.Generator, verbose=True):
    """Data-scaled random codebooks.

    `latent` is the (unquantized) quantizer input [B, D_in, F] measured with the current weights.
    For each RVQ level k (sequentially, so residual scales are right), codebook vectors are drawn as
    mean_k + std_k * N(0, 1) with mean_k/std_k the per-dimension statistics of the residual that level
    sees; then cluster_usage ~ U(0.5, 2) and embedding_sum = vector * cluster_usage, so that
    embedding_sum / cluster_usage reproduces the vectors (up to f32 rounding, which the Rust side must
    reproduce by doing the same division). One entry per codebook (index bins-1) gets a cluster_usage
    of 1e-7 < epsilon (1e-5), so that the clamp matters: its vector is embedding_sum / 1e-5.
    """
    stats = []
    for rvq_name in ("rvq_first", "rvq_rest"):
        rvq = getattr(model.quantizer, rvq_name)
        x = rvq.input_proj(latent)                      # [B, D, F]
        residual = x.transpose(1, 2).reshape(-1, x.shape[1])  # [N, D]
        for i, layer in enumerate(rvq.vq.layers):
            cb = layer._codebook
            bins, dim = cb.embedding_sum.shape
            mean = residual.mean(0)
            std = residual.std(0).clamp(min=1e-3)
            vec = mean + std * torch.randn(bins, dim, generator=gen)
            usage = torch.rand(bins, generator=gen) * 1.5 + 0.5
            embedding_sum = vec * usage[:, None]
            # exercise the clamp(min=epsilon) in `embedding`
            usage[-1] = 1e-7
            embedding_sum[-1] = vec[-1] * cb.epsilon
            cb.embedding_sum.copy_(embedding_sum)
            cb.cluster_usage.copy_(usage)
            cb._initialized.fill_(1.0)
            reset_codebook_cache(cb)
            # advance the residual with the reference's own nearest-neighbour
            codes = cb.encode(residual)
            q = cb.decode(codes)
            stats.append((rvq_name, i, float(residual.std()), len(torch.unique(codes))))
            residual = residual - q
    if verbose:
        print("codebook init: (rvq, level, residual std, distinct codes on calibration data)")
        for s in stats:
            print(f"  {s[0]:9s} {s[1]:2d}  std={s[2]:.4g}  distinct={s[3]}")


# --------------------------------------------------------------------------------------------------
# Released-checkpoint naming
# --------------------------------------------------------------------------------------------------
def released_state_dict(model: MimiModel) -> dict:
    """Module state_dict renamed to the released checkpoint's naming.

    The module saves attention projections as `self_attn.in_projs.0.weight` / `out_projs.0.weight`;
    the released file has `self_attn.in_proj_weight` / `self_attn.out_proj.weight` (a load hook in
    StreamingMultiheadAttention converts back). Everything else already matches. The cached
    `_codebook._embedding` buffer is non-persistent and therefore not in the state_dict.
    """
    out = {}
    for k, v in model.state_dict().items():
        k2 = re.sub(r"self_attn\.in_projs\.0\.weight$", "self_attn.in_proj_weight", k)
        k2 = re.sub(r"self_attn\.out_projs\.0\.weight$", "self_attn.out_proj.weight", k2)
        assert not k2.endswith("._embedding"), k2
        out[k2] = v.detach().to(torch.float32).contiguous().clone()
    return out




# --------------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------------
def make_input() -> torch.Tensor:
    rng = np.random.default_rng(SEED_SIGNAL)
    sr = 24000
    t = np.arange(T, dtype=np.float64) / sr
    dur = T / sr
    # 0: linear chirp 100 Hz -> 4 kHz, amplitude 0.4, short fade-in
    f0, f1 = 100.0, 4000.0
    phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / dur * t * t)
    s0 = 0.4 * np.sin(phase) * np.minimum(1.0, t / 0.01)
    # 1: sum of sines + noise, amplitude ~0.45 peak
    s1 = (0.2 * np.sin(2 * np.pi * 220.0 * t + 0.3)
          + 0.12 * np.sin(2 * np.pi * 554.4 * t + 1.1)
          + 0.08 * np.sin(2 * np.pi * 1318.5 * t + 2.0)
          + 0.03 * rng.standard_normal(T))
    x = np.stack([s0, s1])[:, None, :].astype(np.float32)
    return torch.from_numpy(x)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def build_tiny_mimi() -> MimiModel:
    torch.manual_seed(SEED_WEIGHTS)
    cfg = copy.deepcopy(MIMI_CONFIG)
    model = loaders.get_mimi(None, mimi_config=cfg, device="cpu", num_codebooks=NUM_CODEBOOKS)
    model.eval()
    return model


@torch.no_grad()
def run_batch_stages(model: MimiModel, x: torch.Tensor) -> dict:
    """Calls the reference's submodules in the order MimiModel.encode/decode do (state is None)."""
    out = {}
    xp = pad_for_conv1d(x, model.frame_size, model.frame_size)   # no-op for multiples of 1920
    assert xp.shape == x.shape
    emb = model.encoder(xp)
    out["batch.seanet_latent"] = emb
    (emb,) = model.encoder_transformer(emb)
    out["batch.transformer_out"] = emb
    emb = model._to_framerate(emb)                                # == model.downsample(emb)
    out["batch.downsampled"] = emb
    codes = model.quantizer.encode(emb)
    out["batch.codes"] = codes
    q = model.quantizer.decode(codes)                             # == model.decode_latent(codes)
    out["batch.quantized"] = q
    emb = model._to_encoder_framerate(q)                          # == model.upsample(q)
    out["batch.upsampled"] = emb
    (emb,) = model.decoder_transformer(emb)
    out["batch.decoder_transformer_out"] = emb
    out["batch.pcm"] = model.decoder(emb)
    return out


@torch.no_grad()
def run_stream_stages(model: MimiModel, x: torch.Tensor) -> dict:
    """Same chain, chunk by chunk, inside one `model.streaming(B)` context (all submodules carry state)."""
    B = x.shape[0]
    keys = ["seanet_latent", "transformer_out", "downsampled", "codes", "quantized", "upsampled",
            "decoder_transformer_out", "pcm"]
    acc = {k: [] for k in keys}
    with model.streaming(batch_size=B):
        for off in range(0, x.shape[-1], model.frame_size):
            chunk = x[..., off: off + model.frame_size]
            emb = model.encoder(chunk)
            acc["seanet_latent"].append(emb)
            (emb,) = model.encoder_transformer(emb)
            acc["transformer_out"].append(emb)
            emb = model._to_framerate(emb)
            acc["downsampled"].append(emb)
            codes = model.quantizer.encode(emb)
            acc["codes"].append(codes)
            q = model.quantizer.decode(codes)
            acc["quantized"].append(q)
            emb = model._to_encoder_framerate(q)
            acc["upsampled"].append(emb)
            (emb,) = model.decoder_transformer(emb)
            acc["decoder_transformer_out"].append(emb)
            acc["pcm"].append(model.decoder(emb))
    return {f"stream.{k}": torch.cat(v, dim=-1) for k, v in acc.items()}


@torch.no_grad()
def run_stream_api(model: MimiModel, x: torch.Tensor):
    """The reference's public streaming API, as server.py / run_inference.py use it:
    one streaming context on the whole model; per 1920-sample chunk: codes = encode(chunk);
    pcm = decode(codes)."""
    B = x.shape[0]
    codes_l, pcm_l = [], []
    with model.streaming(batch_size=B):
        for off in range(0, x.shape[-1], model.frame_size):
            codes = model.encode(x[..., off: off + model.frame_size])
            codes_l.append(codes)
            pcm_l.append(model.decode(codes))
    return torch.cat(codes_l, -1), torch.cat(pcm_l, -1)


@torch.no_grad()
def code_margins(model: MimiModel, latent: torch.Tensor, codes: torch.Tensor) -> list:
    """For each active RVQ level: the smallest gap (in f64) between the nearest and second-nearest
    codebook distance over all frames, relative to the nearest distance. Near-ties (tiny margins)
    would make the codes fragile to f32 rounding differences between implementations."""
    out = []
    k = 0
    for rvq_name in ("rvq_first", "rvq_rest"):
        rvq = getattr(model.quantizer, rvq_name)
        x = rvq.input_proj(latent)
        residual = x.transpose(1, 2).reshape(-1, x.shape[1])      # [B*F, D], b-major
        for layer in rvq.vq.layers[: rvq.n_q]:
            emb = layer._codebook.embedding
            d = ((residual.double()[:, None, :] - emb.double()[None]) ** 2).sum(-1)
            top2 = d.topk(2, dim=-1, largest=False)
            ours = top2.indices[:, 0].view(codes.shape[0], -1)
            assert torch.equal(ours, codes[:, k]), f"f64 argmin differs from reference at level {k}"
            gap = (top2.values[:, 1] - top2.values[:, 0]) / top2.values[:, 0].clamp(min=1e-30)
            out.append(float(gap.min()))
            residual = residual - layer._codebook.decode(layer._codebook.encode(residual))
            k += 1
    return out


STAGES = ["seanet_latent", "transformer_out", "downsampled", "codes", "quantized", "upsampled",
          "decoder_transformer_out", "pcm"]


def record(model: MimiModel, x: torch.Tensor, label: str, strict_stream: bool = True) -> dict:
    """Runs batch + streaming, cross-checks them against the public API, prints a summary, returns
    {"input.pcm", "batch.*", "stream.*"}. strict_stream: assert batch ~= stream (only true while the
    sequence fits the transformer context)."""
    print(f"\n===== {label}: transformer context {model.encoder_transformer.transformer.layers[0].self_attn.context}")
    batch = run_batch_stages(model, x)
    with torch.no_grad():
        codes_api = model.encode(x)
        pcm_api = model.decode(batch["batch.codes"])
    assert torch.equal(codes_api, batch["batch.codes"]), "stage chain codes != model.encode"
    d = maxdiff(pcm_api, batch["batch.pcm"])
    assert d == 0.0, f"stage chain pcm != model.decode ({d})"
    print("batch stage chain == model.encode(x) / model.decode(codes): exact")

    stream = run_stream_stages(model, x)
    s_codes, s_pcm = run_stream_api(model, x)
    assert torch.equal(s_codes, stream["stream.codes"]), "streaming stage chain codes != encode API"
    d = maxdiff(s_pcm, stream["stream.pcm"])
    assert d == 0.0, f"streaming stage chain pcm != decode API ({d})"
    print("streaming stage chain == streaming model.encode / model.decode (one model.streaming(B)): exact")

    print("stage shapes / std / max|batch - stream|:")
    for k in STAGES:
        b, s = batch[f"batch.{k}"], stream[f"stream.{k}"]
        assert b.shape == s.shape, (k, b.shape, s.shape)
        if k == "codes":
            agree = float((b == s).double().mean())
            print(f"  {k:24s} {str(tuple(b.shape)):16s} {str(b.dtype):14s} agreement {agree:.4f}")
            if strict_stream:
                assert agree == 1.0
        else:
            md = maxdiff(b, s)
            print(f"  {k:24s} {str(tuple(b.shape)):16s} {str(b.dtype):14s} std {float(b.std()):.4g}"
                  f"  max|b-s| {md:.3g}")
            if strict_stream:
                assert md < 1e-5, k

    tr_delta = maxdiff(batch["batch.transformer_out"], batch["batch.seanet_latent"])
    dtr_delta = maxdiff(batch["batch.decoder_transformer_out"], batch["batch.upsampled"])
    print(f"transformer effect: enc max|out-in| {tr_delta:.4g}, dec max|out-in| {dtr_delta:.4g}")

    for mode, res in (("batch", batch), ("stream", stream)):
        codes = res[f"{mode}.codes"]
        print(f"code diversity ({mode}.codes {tuple(codes.shape)}, {codes.shape[0] * codes.shape[2]} codes"
              f" per codebook, bins {model.cardinality}):")
        for k in range(codes.shape[1]):
            vals, counts = torch.unique(codes[:, k], return_counts=True)
            hist = " ".join(f"{int(v)}:{int(c)}" for v, c in zip(vals, counts))
            print(f"  cb{k}: {len(vals):2d} distinct | {hist}")
            assert len(vals) >= 4, f"degenerate codebook {k}"
        margins = code_margins(model, res[f"{mode}.downsampled"], codes)
        print(f"min relative argmin margin per codebook (d2-d1)/d1, f64, {mode}: "
              + " ".join(f"{m:.2e}" for m in margins))
        assert min(margins) > 1e-4, "near-tie in the codes: pick other seeds"

    io = {"input.pcm": x}
    io.update(batch)
    io.update(stream)
    return {k: (v.to(torch.int64) if k.endswith("codes") else v.to(torch.float32)).contiguous()
            for k, v in io.items()}


def mimi_cfg_from_json(cfg: dict) -> dict:
    return {k: copy.deepcopy(cfg[k])
            for k in ("sample_rate", "channels", "frame_rate", "seanet", "transformer", "quantizer")}


def print_files(folder: Path):
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            print(f"  {p}  {p.stat().st_size} bytes")


def main():
    ap = argparse.ArgumentParser()
    repo = Path(__file__).resolve().parents[2]
    ap.add_argument("--out", type=Path, default=repo / "golden" / "mimi_tiny")
    ap.add_argument("--names", type=Path,
                    default=REPO / "golden" / "mimi_checkpoint_names.txt",
                    help="released checkpoint names file, for the naming check (optional)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    vers = versions()
    print("versions:", json.dumps(vers, sort_keys=True))
    print("seeds: weights", SEED_WEIGHTS, "randomise", SEED_RANDOMISE, "signal", SEED_SIGNAL)

    model = build_tiny_mimi()
    gen = torch.Generator().manual_seed(SEED_RANDOMISE)
    randomise_non_codebook(model, gen)

    x = make_input()
    assert x.shape == (BATCH, 1, T)

    # Measure the real quantizer input with the final non-codebook weights, then set the codebooks.
    with torch.no_grad():
        latent = model._encode_to_unquantized_latent(x)
    print(f"quantizer input latent: shape {tuple(latent.shape)} std {latent.std():.4g}")
    randomise_codebooks(model, latent, gen)
    model.set_num_codebooks(NUM_CODEBOOKS)
    assert model.num_codebooks == NUM_CODEBOOKS

    io = record(model, x, "mimi_tiny", strict_stream=True)

    # ---------------- save
    args.out.mkdir(parents=True, exist_ok=True)
    # One metadata key holding sorted JSON: safetensors writes __metadata__ from a hash map, so several
    # keys would come out in a random order and the files would not be byte-identical across runs.
    info = {"generator": "tools/golden/make_fixtures.py", "versions": vers,
            "seeds": {"weights": SEED_WEIGHTS, "randomise": SEED_RANDOMISE, "signal": SEED_SIGNAL},
            "num_codebooks": NUM_CODEBOOKS, "torch_num_threads": 1}

    sd = released_state_dict(model)
    print()
    check_naming(sd, args.names)
    wpath = args.out / "model.safetensors"
    save_file(sd, str(wpath), metadata={"golden": json.dumps(info, sort_keys=True)})

    cfg = copy.deepcopy(MIMI_CONFIG)
    cfg_json = {"sample_rate": cfg["sample_rate"], "channels": cfg["channels"],
                "frame_rate": cfg["frame_rate"], "num_codebooks": NUM_CODEBOOKS,
                "seanet": cfg["seanet"], "transformer": cfg["transformer"], "quantizer": cfg["quantizer"]}
    (args.out / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n")

    iopath = args.out / "io.safetensors"
    save_file(io, str(iopath), metadata={"golden": json.dumps(info, sort_keys=True)})

    # ---------------- round trip: the saved file must load into the reference strictly and reproduce
    torch.manual_seed(999)  # different init: everything must come from the file
    cfg2 = json.loads((args.out / "config.json").read_text())
    model2 = loaders.get_mimi(wpath, mimi_config=mimi_cfg_from_json(cfg2), device="cpu",
                              num_codebooks=cfg2["num_codebooks"])
    batch2 = run_batch_stages(model2, x)
    for k, v in batch2.items():
        assert maxdiff(v, io[k]) == 0.0, f"round trip mismatch at {k}"
    loaded = load_file(str(iopath))
    assert set(loaded) == set(io)
    print("round trip: model.safetensors + config.json reload via loaders.get_mimi reproduces batch.* exactly")

    # ---------------- variant: same weights, transformer context 5 (< the 12 transformer steps)
    # Pins the reference's streaming KV-cache semantics: a ring buffer of `context` entries, written
    # BEFORE attending, with 2 transformer steps per 1920-sample chunk, so once the cache has wrapped the
    # first query of each chunk sees only context-1 keys. Streaming therefore differs from batch
    # (which uses an exact sliding window of `context` keys) as soon as the sequence exceeds context.
    ctx_dir = args.out / f"ctx{SHORT_CONTEXT}"
    ctx_dir.mkdir(parents=True, exist_ok=True)
    cfg3 = copy.deepcopy(cfg_json)
    cfg3["transformer"]["context"] = SHORT_CONTEXT
    cfg3["weights"] = "../model.safetensors"
    (ctx_dir / "config.json").write_text(json.dumps(cfg3, indent=2) + "\n")
    model3 = loaders.get_mimi(wpath, mimi_config=mimi_cfg_from_json(cfg3), device="cpu",
                              num_codebooks=cfg3["num_codebooks"])
    io3 = record(model3, x, f"mimi_tiny/ctx{SHORT_CONTEXT}", strict_stream=False)
    info3 = dict(info, variant=f"transformer context {SHORT_CONTEXT}, weights ../model.safetensors")
    save_file(io3, str(ctx_dir / "io.safetensors"), metadata={"golden": json.dumps(info3, sort_keys=True)})

    print("\nfiles:")
    print_files(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"  total {total} bytes")
    assert total <= 2 * 1024 * 1024, "golden fixtures exceed 2 MB"
    print(f"model.safetensors: {len(sd)} tensors")
    print("io.safetensors (same keys in ctx5/io.safetensors):")
    for k in sorted(io):
        print(f"  {k:32s} {str(list(io[k].shape)):16s} {io[k].dtype}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Record a reference trace of one offline Moshi run, for `moshi-rs verify trace`.

Runs Kyutai's PyTorch reference (PyPI `moshi` 0.2.13) on YOUR model and YOUR audio, the offline
pipeline as `moshi-rs run` runs it (run_inference.py's loop: whole 1920-sample frames, then
`--silence` seconds of zeros, the first frame's codes given to the LM twice; Mimi encode -> LMGen
step -> Mimi decode, batch 1), and writes one safetensors file:

    input_pcm          [N] f32      the 24 kHz mono input exactly as the reference read and resampled it
    user_codes         [K, F] i64   Mimi's codes of every frame (input + silence)
    lm_input           [1+n_q, S]   the tokens the temporal transformer read at each LM step (delayed)
    text_tokens        [S] i64      the text token sampled at each step
    audio_tokens       [dep_q, S]   the audio tokens the depformer sampled at each step
    text_logits_top    [S, k] f32   the top-k text logits of each step (k = --logits-top-k; the whole
    text_logits_idx    [S, k] i64   vocabulary when it is smaller), and their token ids
    reply_codes        [dep_q, R]   the codes handed to Mimi's decoder (LMGen's returned audio)
    reply_pcm          [R*1920] f32 the reply
    layer.{i}          [L, dim] f32 temporal layer i's output for the first L = --layer-steps steps
    out_norm           [L, dim]     the temporal output after out_norm, same steps
    mimi.{stage}       stage outputs (streaming) for the first --mimi-frames frames:
                       seanet_latent, transformer_out, downsampled (encode; [C, T]),
                       quantized, upsampled, decoder_transformer_out, pcm (decode)

and in __metadata__["trace"] a JSON object with the settings, versions and model identity.
Size: a 7B run of 10 s with the defaults (8 layer steps, 4 Mimi frames, top-64 logits) is about
2.5 MB, most of it the 32 layers x 8 steps x 4096 floats.

Greedy by default (--sampling samples as the checkpoint's lm_gen_config says; the tokens are still
recorded, and `verify trace` is teacher-forced on them, but it can then compare logits only, not
token choices, since torch's sampling noise is not recorded).

Usage:
    NO_TORCH_COMPILE=1 python tools/golden/record_trace.py --model kyutai/moshiko-pytorch-bf16 \\
        --input question.wav --out trace.safetensors [--device mps|cuda|cpu] [--dtype bf16|f32]
    (--model also takes a folder with Kyutai's config.json naming its files, relative to it)
"""

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import moshi  # noqa: E402
from moshi.models import loaders  # noqa: E402
from moshi.models.lm import LMGen  # noqa: E402


def checkpoint_of(model: str) -> "loaders.CheckpointInfo":
    """A Hugging Face repo, or a folder whose config.json names its files relative to itself."""
    d = Path(model)
    if not d.is_dir():
        return loaders.CheckpointInfo.from_hf_repo(model)
    cfg_path = d / "config.json"
    raw = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}

    def local(key, default):
        return (d / raw.get(key, default)).resolve()

    mimi_cfg = raw.get("mimi_config_name")
    return loaders.CheckpointInfo.from_hf_repo(
        "local/none",
        moshi_weights=local("moshi_name", loaders.MOSHI_NAME),
        mimi_weights=local("mimi_name", loaders.MIMI_NAME),
        tokenizer=local("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
        config_path=cfg_path if cfg_path.exists() else None,
        mimi_config_path=(d / mimi_cfg).resolve() if mimi_cfg else None,
    )


def read_input(path: str, rate: int) -> torch.Tensor:
    """The input as run_inference.py reads it (sphn decodes and resamples), mono [1, 1, N]."""
    import sphn

    pcm, _ = sphn.read(path, sample_rate=rate)
    x = torch.from_numpy(pcm)
    if x.dim() == 2 and x.shape[0] > 1:
        x = x.mean(dim=0, keepdim=True)
    return x.reshape(1, 1, -1).float()


class Recorder:
    """Forward hooks that keep a module's output for the first `limit` calls."""

    def __init__(self):
        self.data: dict[str, list[torch.Tensor]] = {}
        self.handles = []

    def hook(self, module, name: str, limit: int, pick=lambda o: o):
        def fn(_m, _i, out):
            if len(self.data.setdefault(name, [])) < limit:
                self.data[name].append(pick(out).detach().float().cpu().clone())
        self.handles.append(module.register_forward_hook(fn))

    def close(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def record(args) -> tuple[dict, dict]:
    torch.manual_seed(args.seed)
    info = checkpoint_of(args.model)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    mimi = info.get_mimi(device=device)
    lm = info.get_moshi(device=device, dtype=dtype)
    lm.eval()
    frame = int(mimi.sample_rate / mimi.frame_rate)
    x = read_input(args.input, mimi.sample_rate)
    if args.max_frames:
        x = x[..., : args.max_frames * frame]

    gen_kwargs = dict(info.lm_gen_config)
    if not args.sampling:
        gen_kwargs["use_sampling"] = False
    texts, audios, text_logits, lm_inputs = [], [], [], []
    lm_gen = LMGen(lm, on_text_hook=lambda t: texts.append(t.cpu().clone()),
                   on_audio_hook=lambda a: audios.append(a.cpu().clone()),
                   on_text_logits_hook=lambda lg: text_logits.append(lg.float().cpu().clone()),
                   **gen_kwargs)

    rec = Recorder()
    for i, layer in enumerate(lm.transformer.layers):
        rec.hook(layer, f"layer.{i}", args.layer_steps)
    rec.hook(lm.out_norm, "out_norm", args.layer_steps)
    n = args.mimi_frames
    rec.hook(mimi.encoder, "mimi.seanet_latent", n)
    rec.hook(mimi.encoder_transformer, "mimi.transformer_out", n, pick=lambda o: o[0])
    rec.hook(mimi.downsample, "mimi.downsampled", n)
    rec.hook(mimi.upsample, "mimi.upsampled", n)
    rec.hook(mimi.decoder_transformer, "mimi.decoder_transformer_out", n, pick=lambda o: o[0])
    rec.hook(mimi.decoder, "mimi.pcm", n)
    quantized = []
    orig_decode = mimi.quantizer.decode
    mimi.quantizer.decode = lambda c: (lambda q: (quantized.append(q.float().cpu().clone()) if len(quantized) < n else None, q)[1])(orig_decode(c))

    chunks = [c for c in x.split(frame, dim=2) if c.shape[-1] == frame]
    chunks += [torch.zeros(1, 1, frame) for _ in range(int(round(args.silence * mimi.sample_rate / frame + 0.4999)))]
    user, reply_codes, pcms = [], [], []
    with mimi.streaming(1), lm_gen.streaming(1):
        state = lm_gen._streaming_state
        main = state.graphed_main
        state.graphed_main = lambda inp, *a: (lm_inputs.append(inp[0, :, 0].cpu().clone()), main(inp, *a))[1]

        def step(codes):
            out = lm_gen.step(codes)
            if out is not None:
                tokens = out[0] if isinstance(out, tuple) else out
                reply_codes.append(tokens[0, 1:, 0].cpu().clone())
                pcms.append(mimi.decode(tokens[:, 1:]).float().cpu().clone())

        for fi, chunk in enumerate(chunks):
            codes = mimi.encode(chunk.to(device))
            user.append(codes[0, :, 0].cpu().clone())
            if fi == 0:
                step(codes)  # run_inference: the first frame is seen twice
            step(codes)
    rec.close()
    mimi.quantizer.decode = orig_decode

    logits = torch.cat(text_logits, dim=0).reshape(len(text_logits), -1)  # [S, text_card]
    k = min(args.logits_top_k, logits.shape[-1]) if args.logits_top_k > 0 else logits.shape[-1]
    top, idx = logits.topk(k, dim=-1)
    t = {
        "input_pcm": x.reshape(-1).contiguous(),
        "user_codes": torch.stack(user, dim=1).long(),
        "lm_input": torch.stack(lm_inputs, dim=1).long(),
        "text_tokens": torch.stack(texts, dim=0).reshape(-1).long(),
        "audio_tokens": torch.stack(audios, dim=0)[:, 0, :].t().contiguous().long(),
        "text_logits_top": top.contiguous(),
        "text_logits_idx": idx.long().contiguous(),
        "reply_codes": torch.stack(reply_codes, dim=1).long() if reply_codes else torch.zeros(lm.dep_q, 0, dtype=torch.long),
        "reply_pcm": torch.cat(pcms, dim=-1).reshape(-1) if pcms else torch.zeros(0),
    }
    for name, parts in rec.data.items():
        if name.startswith("mimi."):
            t[name] = torch.cat(parts, dim=-1)[0].contiguous()       # [C, T]
        else:
            t[name] = torch.cat(parts, dim=1)[0].contiguous()        # [L, dim]
    if quantized:
        t["mimi.quantized"] = torch.cat(quantized, dim=-1)[0].contiguous()
    meta = {
        "model": args.model, "device": args.device, "dtype": args.dtype, "greedy": not args.sampling,
        "lm_gen_config": gen_kwargs, "silence_s": args.silence, "seed": args.seed,
        "layer_steps": min(args.layer_steps, len(lm_inputs)), "mimi_frames": min(n, len(user)),
        "logits_top_k": k, "frame_size": frame, "delays": list(lm.delays), "dep_q": lm.dep_q,
        "versions": {"moshi": moshi.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    return t, meta


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face repo or local folder")
    p.add_argument("--input", required=True, help="audio file (any rate; read and resampled as run_inference does)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--silence", type=float, default=2.0, help="seconds of zeros after the input (as moshi-rs run)")
    p.add_argument("--sampling", action="store_true", help="sample as lm_gen_config says instead of greedy")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--layer-steps", type=int, default=8, help="LM steps whose temporal layer outputs are kept")
    p.add_argument("--mimi-frames", type=int, default=4, help="frames whose Mimi stage outputs are kept")
    p.add_argument("--logits-top-k", type=int, default=64, help="text logits kept per step (0: all)")
    p.add_argument("--max-frames", type=int, default=0, help="keep only this many frames of the input (0: all)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()) if args.device != "cpu" else 1)
    tensors, meta = record(args)
    save_file(tensors, args.out, metadata={"trace": json.dumps(meta)})
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {len(tensors)} tensors, {size / 1e6:.2f} MB, {tensors['lm_input'].shape[1]} LM steps")


if __name__ == "__main__":
    main()

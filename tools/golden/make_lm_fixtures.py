#!/usr/bin/env python3
"""Generate golden reference fixtures for the Moshi LM of moshi-rs from Kyutai's PyTorch reference
(moshi==0.2.13).

Builds a TINY Moshi LM with the reference's own `moshi.models.loaders.get_moshi_lm` (the 7B's
`_lm_kwargs`, every key kept, only the sizes shrunk; Moshi's real delays), randomises the weights
deterministically, and records into golden/lm_tiny/:
  (a) the teacher-forced `LMModel.forward` (temporal transformer, text head, depformer, un-delaying);
  (b) streaming `LMGen` runs of 24 steps at batch 2: greedy, and sampled with the reference's own
      sampler fed from a seeded generator, every Exponential noise tensor recorded in call order;
  (c) a tiny SentencePiece model and id/piece/text cases.
and into golden/lm_tiny_delays/ a greedy LMGen run of the same weights with other delays.

Usage (from the repository root):
    NO_TORCH_COMPILE=1 python tools/golden/make_lm_fixtures.py [--out golden]

Outputs:
    golden/lm_tiny/model.safetensors         weights, released-checkpoint naming, f32
    golden/lm_tiny/config.json               Kyutai's config.json keys (LM kwargs + moshi_name, ...)
    golden/lm_tiny/io.safetensors            tf.*, greedy.*, sampled.* tensors
    golden/lm_tiny/tokenizer.model           tiny SentencePiece unigram model (48 pieces)
    golden/lm_tiny/tokenizer_cases.json      id -> piece table, encode/decode cases
    golden/lm_tiny_delays/config.json        same LM, other delays; weights ../lm_tiny/model.safetensors
    golden/lm_tiny_delays/io.safetensors     greedy.* tensors
"""

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import io as _io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import safetensors  # noqa: E402
import sentencepiece as spm  # noqa: E402
from safetensors.torch import save_file, load_file  # noqa: E402

import moshi  # noqa: E402
from moshi.models import loaders  # noqa: E402
from golden_common import check_naming, maxdiff, versions  # noqa: E402
from moshi.models.lm import LMModel, LMGen  # noqa: E402
from moshi.modules.transformer import RMSNorm, StreamingMultiheadAttention  # noqa: E402
from moshi.utils import sampling  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Seeds and sizes
# --------------------------------------------------------------------------------------------------
SEED_WEIGHTS = 1234        # torch.manual_seed before get_moshi_lm (the reference's own init)
SEED_RANDOMISE = 5678      # torch.Generator for RMSNorm alphas and head rescaling
SEED_TOKENS = 42           # numpy default_rng for the teacher-forced codes and the user codes
SEED_NOISE = 2024          # torch.Generator fed to the reference's sampler (sampled run)
BATCH = 2
T_TF = 24                  # teacher-forced sequence length
STEPS = 24                 # LMGen steps

MOSHI_DELAYS = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
OTHER_DELAYS = [0, 1, 2, 2, 2, 2, 2, 2, 2, 0, 1, 2, 2, 2, 2, 2, 2]

# Sampling settings of the sampled run = LMGen's defaults (temp 0.8 / top-k 250 for audio, clamped by
# sample_top_k to the card 32; temp 0.7 / top-k 25 for text).
LM_GEN_CONFIG = {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25}


def tiny_lm_kwargs(delays) -> dict:
    """`loaders._lm_kwargs` (the 7B config), every key kept, sizes shrunk."""
    kw = copy.deepcopy(loaders._lm_kwargs)
    kw.update({
        "dim": 64,
        "text_card": 48,
        "existing_text_padding_id": 3,
        "n_q": 16,
        "dep_q": 8,
        "card": 32,
        "num_heads": 4,
        "num_layers": 2,
        "hidden_scale": 4.125,
        "context": 3000,
        "depformer_dim": 32,
        "depformer_dim_feedforward": int(4.125 * 32),
        "depformer_num_heads": 4,
        "depformer_num_layers": 2,
        "depformer_context": 8,
        "delays": list(delays),
    })
    assert set(kw) == set(loaders._lm_kwargs)
    return kw




# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def build_tiny_lm(delays) -> LMModel:
    torch.manual_seed(SEED_WEIGHTS)
    lm = loaders.get_moshi_lm(None, lm_kwargs=tiny_lm_kwargs(delays), device="cpu", dtype=torch.float32)
    lm.eval()
    return lm


@torch.no_grad()
def randomise(lm: LMModel, gen: torch.Generator):
    """RMSNorm alphas ~ U(0.6, 1.4) (the reference inits them to 1). The heads are rescaled so that
    logits have std ~2 (the reference init gives ~0.5 here: almost flat distributions)."""
    for name, mod in lm.named_modules():
        if isinstance(mod, RMSNorm):
            mod.alpha.copy_(torch.rand(mod.alpha.shape, generator=gen) * 0.8 + 0.6)
    lm.text_linear.weight.mul_(HEAD_SCALE_TEXT)
    for lin in lm.linears:
        lin.weight.mul_(HEAD_SCALE_AUDIO)


HEAD_SCALE_TEXT = 3.0
HEAD_SCALE_AUDIO = 3.0


# --------------------------------------------------------------------------------------------------
# Released-checkpoint naming
# --------------------------------------------------------------------------------------------------
def released_state_dict(lm: LMModel) -> dict:
    """Module state_dict renamed to the released checkpoint's naming: the per-step attention
    projections `self_attn.in_projs.{i}.weight` / `out_projs.{i}.weight` are concatenated along dim 0
    into `self_attn.in_proj_weight` / `self_attn.out_proj.weight` (i = 0 only for the temporal
    transformer; i = 0..dep_q-1 for the depformer). The reference's load hook
    (StreamingMultiheadAttention._load_hook) splits them back with `.view(mult, -1, in)`."""
    sd = lm.state_dict()
    out = {}
    stacked: dict = {}
    for k, v in sd.items():
        m = re.match(r"^(.*\.self_attn)\.(in_projs|out_projs)\.(\d+)\.weight$", k)
        if m:
            stacked.setdefault((m.group(1), m.group(2)), {})[int(m.group(3))] = v
            continue
        out[k] = v
    for (prefix, kind), parts in stacked.items():
        assert sorted(parts) == list(range(len(parts)))
        name = f"{prefix}.in_proj_weight" if kind == "in_projs" else f"{prefix}.out_proj.weight"
        out[name] = torch.cat([parts[i] for i in range(len(parts))], dim=0)
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in sorted(out.items())}




# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
def make_tf_codes(lm: LMModel) -> torch.Tensor:
    """[B, 17, T] teacher-forced codes: stream 0 text in [0, text_card), 1..16 audio in [0, card).
    Row 1 also holds special values the reference accepts in forward: -1 ("zero": embedding 0) and
    the initial tokens (text_card for text, card for audio; their embedding rows exist)."""
    rng = np.random.default_rng(SEED_TOKENS)
    K = lm.num_codebooks
    codes = np.zeros((BATCH, K, T_TF), dtype=np.int64)
    codes[:, 0] = rng.integers(0, lm.text_card, size=(BATCH, T_TF))
    codes[:, 1:] = rng.integers(0, lm.card, size=(BATCH, K - 1, T_TF))
    # specials, row 1 only
    codes[1, 0, 5] = -1
    codes[1, 0, 6] = lm.text_initial_token_id          # 48
    codes[1, 0, 7] = lm.existing_text_padding_id       # 3
    codes[1, 2, 9] = -1                                # model audio cb 1
    codes[1, 4, 10] = lm.initial_token_id              # 32, model audio cb 3
    codes[1, 9, 12] = -1                               # user audio cb 0
    codes[1, 11, 12] = lm.initial_token_id             # user audio cb 2
    codes[1, 12:17, 15] = -1                           # user audio cb 3..7
    return torch.from_numpy(codes)


def make_user_codes(lm: LMModel) -> torch.Tensor:
    """[B, 8, STEPS] user audio codes in [0, card); LMGen step n gets [:, :, n:n+1]."""
    rng = np.random.default_rng(SEED_TOKENS + 1)
    n_user = lm.num_codebooks - lm.dep_q - 1
    return torch.from_numpy(rng.integers(0, lm.card, size=(BATCH, n_user, STEPS)).astype(np.int64))


# --------------------------------------------------------------------------------------------------
# (a) teacher-forced forward
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def run_teacher_forced(lm: LMModel, codes: torch.Tensor) -> dict:
    from moshi.models.lm_utils import _delay_sequence
    B, K, T = codes.shape
    hidden = {}
    h = lm.transformer.register_forward_hook(lambda m, i, o: hidden.__setitem__("x", o.clone()))
    res = lm.forward(codes)
    h.remove()

    # The same chain, step by step (what forward does internally).
    initial = lm._get_initial_token().expand(B, -1, -1)
    delayed = torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], dim=2)  # [B, K, T+1]
    transformer_out, text_logits = lm.forward_text(delayed[:, :, :-1])
    assert maxdiff(hidden["x"], lm.transformer(_embed_sum(lm, delayed[:, :, :-1]))) == 0.0
    dep_logits = lm.forward_depformer_training(delayed[:, :, 1:], transformer_out)

    # Cross-check: forward's un-delayed outputs are built from the same raw tensors.
    from moshi.models.lm_utils import _undelay_sequence
    lg, _ = _undelay_sequence(lm.delays[1:1 + lm.dep_q], dep_logits, fill_value=float("NaN"))
    assert torch.equal(torch.nan_to_num(lg, nan=-7.0), torch.nan_to_num(res.logits, nan=-7.0))
    assert torch.equal(text_logits, res.text_logits)  # text delay 0: no shift

    # Cross-check: the depformer's streaming path (what LMGen uses), one position at a time.
    stream_logits = torch.empty_like(dep_logits)
    for t in range(T):
        with lm.depformer.streaming(B):
            for k in range(lm.dep_q):
                tok = delayed[:, k, t + 1]  # k=0: text (stream 0); k>=1: model audio cb k-1 (stream k)
                lo = lm.forward_depformer(k, tok[:, None, None], transformer_out[:, t:t + 1])
                stream_logits[:, k, t] = lo[:, 0, 0]
    d_stream = maxdiff(stream_logits, dep_logits)
    print(f"teacher forced: depformer streaming (forward_depformer) vs batch (training path): max|d| {d_stream:.3g}")
    assert d_stream < 1e-5

    print(f"teacher forced: text logits std {float(text_logits.std()):.3g}, "
          f"depformer logits std {float(dep_logits.std()):.3g}, "
          f"hidden std {float(hidden['x'].std()):.3g}, transformer_out std {float(transformer_out.std()):.3g}")

    return {
        "tf.codes": codes,
        "tf.delayed_input": delayed[:, :, :-1],
        "tf.depformer_tokens": delayed[:, :lm.dep_q, 1:],
        "tf.transformer_hidden": hidden["x"],
        "tf.transformer_out": transformer_out,
        "tf.text_logits_raw": text_logits,
        "tf.depformer_logits_raw": dep_logits,
        "tf.logits": res.logits,
        "tf.logits_mask": res.mask.to(torch.uint8),
        "tf.text_logits": res.text_logits,
        "tf.text_logits_mask": res.text_mask.to(torch.uint8),
    }


def _embed_sum(lm: LMModel, seq: torch.Tensor) -> torch.Tensor:
    x = None
    for k in range(lm.num_audio_codebooks):
        e = lm.emb[k](seq[:, k + 1])
        x = e if x is None else x + e
    return x + lm.text_emb(seq[:, 0])


# --------------------------------------------------------------------------------------------------
# (b) streaming LMGen
# --------------------------------------------------------------------------------------------------
class NoiseTap:
    """Wraps moshi.utils.sampling.multinomial (called by sample_top_k with num_samples=1): the
    reference's own code runs, but with `generator=` a seeded torch.Generator; the Exponential(1)
    tensor it draws is reproduced beforehand from a copy of the generator state and recorded."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.noise: list = []
        self.probs: list = []
        self.orig = sampling.multinomial

    def __call__(self, input, num_samples, replacement=False, *, generator=None):
        assert generator is None and num_samples == 1 and not replacement
        input_ = input.reshape(-1, input.shape[-1])
        st = self.gen.get_state()
        q = torch.empty_like(input_).exponential_(1, generator=self.gen)
        self.gen.set_state(st)
        out = self.orig(input, num_samples, replacement, generator=self.gen)
        assert torch.equal(self.gen.get_state(), _advance(st, q)), "noise tap out of sync"
        again = (input_ / q).argmax(dim=-1, keepdim=True).reshape(out.shape)
        assert torch.equal(again, out), "noise replay mismatch"
        self.noise.append(q.clone())
        self.probs.append(input_.clone())
        return out

    def __enter__(self):
        sampling.multinomial = self
        return self

    def __exit__(self, *exc):
        sampling.multinomial = self.orig


def _advance(state, q):
    g = torch.Generator()
    g.set_state(state)
    torch.empty_like(q).exponential_(1, generator=g)
    return g.get_state()


@torch.no_grad()
def run_lmgen(lm: LMModel, user: torch.Tensor, prefix: str, use_sampling: bool,
              noise_seed: int | None = None) -> dict:
    """One LMGen streaming run of STEPS steps at batch B; every internal call recorded."""
    B, n_user, S = user.shape
    rec = {"input": [], "tout": [], "tlogits": [], "dep_cb": [], "dep_tok": [], "dep_logits": []}
    orig_ft, orig_fd = lm.forward_text, lm.forward_depformer

    def forward_text(seq, *a):
        tout, tl = orig_ft(seq, *a)
        rec["input"].append(seq.clone())
        rec["tout"].append(tout.clone())
        rec["tlogits"].append(tl.clone())
        return tout, tl

    def forward_depformer(cb, seq, tout):
        lo = orig_fd(cb, seq, tout)
        rec["dep_cb"].append(cb)
        rec["dep_tok"].append(seq.clone())
        rec["dep_logits"].append(lo.clone())
        return lo

    texts, audios = [], []
    kwargs = dict(LM_GEN_CONFIG) if use_sampling else {}
    gen = LMGen(lm, use_sampling=use_sampling, check=True,
                on_text_hook=lambda t: texts.append(t.clone()),
                on_audio_hook=lambda a: audios.append(a.clone()), **kwargs)
    lm.forward_text = forward_text          # instance attributes: picked up by LMGen's state
    lm.forward_depformer = forward_depformer
    outs, returned = [], []
    tap = NoiseTap(noise_seed) if use_sampling else None
    try:
        if tap is not None:
            tap.__enter__()
        with gen.streaming(B):
            for n in range(S):
                o = gen.step(user[:, :, n:n + 1])
                returned.append(o is not None)
                outs.append(o[:, :, 0].clone() if o is not None
                            else torch.full((B, 1 + lm.dep_q), lm.ungenerated_token_id, dtype=torch.long))
    finally:
        if tap is not None:
            tap.__exit__()
        del lm.forward_text
        del lm.forward_depformer

    assert len(rec["input"]) == S and len(rec["dep_cb"]) == S * lm.dep_q
    assert rec["dep_cb"] == list(range(lm.dep_q)) * S
    r = {
        f"{prefix}.user_codes": user,
        f"{prefix}.model_input": torch.cat(rec["input"], dim=2),                        # [B, 17, S]
        f"{prefix}.transformer_out": torch.cat(rec["tout"], dim=1),                     # [B, S, dim]
        f"{prefix}.text_logits": torch.cat(rec["tlogits"], dim=2),                      # [B, 1, S, text_card]
        f"{prefix}.depformer_tokens": torch.stack(
            [t[:, 0, 0] for t in rec["dep_tok"]], 1).view(B, S, lm.dep_q).transpose(1, 2),   # [B, 8, S]
        f"{prefix}.depformer_logits": torch.stack(
            [x[:, 0, 0] for x in rec["dep_logits"]], 1).view(B, S, lm.dep_q, -1).transpose(1, 2),  # [B,8,S,card]
        f"{prefix}.text_tokens": torch.stack(texts, 1),                                  # [B, S]
        f"{prefix}.audio_tokens": torch.stack(audios, 2),                                # [B, 8, S]
        f"{prefix}.out_tokens": torch.stack(outs, 2),                                    # [B, 9, S]
        f"{prefix}.out_returned": torch.tensor(returned, dtype=torch.uint8),             # [S]
    }
    if tap is not None:
        nt = tap.noise[0::1 + lm.dep_q]
        na = [tap.noise[i] for i in range(len(tap.noise)) if i % (1 + lm.dep_q) != 0]
        assert len(tap.noise) == S * (1 + lm.dep_q)
        r[f"{prefix}.noise_text"] = torch.stack(nt, 0)                                   # [S, B, k_text]
        r[f"{prefix}.noise_audio"] = torch.stack(na, 0).view(S, lm.dep_q, B, -1)         # [S, 8, B, k_audio]
        r["_probs"] = tap.probs
    return r


# --------------------------------------------------------------------------------------------------
# Independent model of the LMGen alignment (the spec written in golden/README.md)
# --------------------------------------------------------------------------------------------------
def spec_check(lm: LMModel, r: dict, prefix: str):
    """Rebuilds model_input and out_tokens from the sampled tokens and the user codes alone, with
    the rules of golden/README.md, and compares with what the reference did."""
    D = lm.delays
    M = max(D)
    K = lm.num_codebooks
    user = r[f"{prefix}.user_codes"]
    s = torch.cat([r[f"{prefix}.text_tokens"][:, None], r[f"{prefix}.audio_tokens"]], 1)  # [B, 9, S]
    B, _, S = s.shape
    init = [lm.text_initial_token_id] + [lm.initial_token_id] * (K - 1)
    exp_in = torch.empty(B, K, S, dtype=torch.long)
    for n in range(S):
        for k in range(K):
            if n <= D[k]:
                exp_in[:, k, n] = init[k]
            elif k <= lm.dep_q:
                exp_in[:, k, n] = s[:, k, n - 1]
            else:
                exp_in[:, k, n] = user[:, k - 1 - lm.dep_q, n - D[k]]
    assert torch.equal(exp_in, r[f"{prefix}.model_input"]), "spec: model input mismatch"
    exp_out = torch.full((B, 1 + lm.dep_q, S), -2, dtype=torch.long)
    for n in range(M, S):
        for k in range(1 + lm.dep_q):
            exp_out[:, k, n] = s[:, k, n - M + D[k]]
    assert torch.equal(exp_out, r[f"{prefix}.out_tokens"]), "spec: output mismatch"
    ret = torch.tensor([n >= M for n in range(S)], dtype=torch.uint8)
    assert torch.equal(ret, r[f"{prefix}.out_returned"])
    # depformer inputs: step k<8 gets (k=0: text token, else audio token k-1) sampled at that step
    assert torch.equal(r[f"{prefix}.depformer_tokens"][:, 0], r[f"{prefix}.text_tokens"])
    assert torch.equal(r[f"{prefix}.depformer_tokens"][:, 1:], r[f"{prefix}.audio_tokens"][:, :-1])
    print(f"{prefix}: spec check OK (delays {D}; first output at step {M}; user code of step n"
          f" enters the model at step n + delay, code of step 0 never)")


@torch.no_grad()
def stream_vs_batch(lm: LMModel, r: dict, prefix: str):
    """The streamed transformer outputs equal a non-streaming forward_text of the same inputs."""
    tout, tl = lm.forward_text(r[f"{prefix}.model_input"])
    d1 = maxdiff(tout, r[f"{prefix}.transformer_out"])
    d2 = maxdiff(tl, r[f"{prefix}.text_logits"])
    print(f"{prefix}: streaming vs batch forward_text on the recorded inputs: max|d| out {d1:.3g}, logits {d2:.3g}")
    assert d1 < 1e-5 and d2 < 1e-4


def greedy_margins(r: dict, prefix: str) -> float:
    m = []
    for key in (f"{prefix}.text_logits", f"{prefix}.depformer_logits"):
        top2 = r[key].double().topk(2, dim=-1).values
        m.append(float((top2[..., 0] - top2[..., 1]).min()))
    return min(m)


def sampled_margins(r: dict, prefix: str, lm: LMModel):
    """Per sampling call: relative gap between the best and second best probs/noise ratio, and the
    smallest relative gap between consecutive sorted probs (the top-k order the noise is aligned to)."""
    ratio_gap, order_gap = [], []
    for p, q in zip(r["_probs"], r[f"{prefix}._noise_all"]):
        v = (p.double() / q.double())
        top2 = v.topk(2, dim=-1).values
        ratio_gap.append(float(((top2[:, 0] - top2[:, 1]) / top2[:, 0]).min()))
        ps = p.double()
        order_gap.append(float(((ps[:, :-1] - ps[:, 1:]) / ps[:, :-1]).min()))
    return min(ratio_gap), min(order_gap)


def diversity(x: torch.Tensor) -> int:
    return len(torch.unique(x))


# --------------------------------------------------------------------------------------------------
# (c) SentencePiece
# --------------------------------------------------------------------------------------------------
SPM_SENTENCES = [
    "hello there, how are you today?",
    "i am fine, thank you. and you?",
    "the cat sat on the mat.",
    "the rain in spain stays mainly in the plain.",
    "moshi is a speech text foundation model.",
    "she sells sea shells on the sea shore.",
    "a tiny model for the tests.",
    "this is the end of the text.",
]
SPM_VOCAB = 48


def make_tokenizer(out_dir: Path) -> dict:
    buf = _io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_SENTENCES * 4), model_writer=buf,
        vocab_size=SPM_VOCAB, model_type="unigram", character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,      # Moshi: text pad id 3, end-of-padding 0
        num_threads=1, seed_sentencepiece_size=1000, shuffle_input_sentence=False,
        normalization_rule_name="identity", minloglevel=2)
    data = buf.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=data)
    assert sp.get_piece_size() == SPM_VOCAB
    (out_dir / "tokenizer.model").write_bytes(data)
    pieces = [sp.id_to_piece(i) for i in range(SPM_VOCAB)]
    cases = []
    for text in ["the cat sat on the mat.", "hello moshi", "spain rain", "tiny tests, you?"]:
        ids = sp.encode(text, out_type=int)
        cases.append({"text": text, "ids": ids, "pieces": [sp.id_to_piece(i) for i in ids],
                      "decoded": sp.decode(ids)})
    id_cases = []
    rng = np.random.default_rng(7)
    for n in (1, 3, 6, 10):
        ids = [int(i) for i in rng.integers(4, SPM_VOCAB, size=n)]
        id_cases.append({"ids": ids, "decoded": sp.decode(ids),
                         "pieces": [sp.id_to_piece(i) for i in ids]})
    # control / unknown ids: decode drops <s> </s> <pad>, renders <unk> as " \u2047 "
    for ids in ([3, 5, 0, 31, 1, 2, 4, 16], [0], [3, 3, 5]):
        id_cases.append({"ids": ids, "decoded": sp.decode(ids), "pieces": [sp.id_to_piece(i) for i in ids]})
    assert any(p.startswith("\u2581") and len(p) > 1 for p in pieces)
    info = {
        "model": "tokenizer.model", "vocab_size": SPM_VOCAB, "model_type": "unigram",
        "normalization_rule_name": "identity",
        "special": {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()},
        "id_to_piece": pieces,
        "is_control": [i for i in range(SPM_VOCAB) if sp.is_control(i)],
        "is_unknown": [i for i in range(SPM_VOCAB) if sp.is_unknown(i)],
        "encode_cases": cases,
        "decode_cases": id_cases,
        "training_sentences": SPM_SENTENCES,
    }
    (out_dir / "tokenizer_cases.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    print(f"tokenizer: {SPM_VOCAB} pieces, {len(data)} bytes; e.g. {cases[0]['pieces']}")
    return info


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def config_json(delays, moshi_name: str, tokenizer_name: str) -> dict:
    cfg = {"model_type": "moshi", "moshi_name": moshi_name, "tokenizer_name": tokenizer_name,
           "lm_gen_config": dict(LM_GEN_CONFIG)}
    cfg.update(tiny_lm_kwargs(delays))
    return cfg


def load_via_reference(cfg_path: Path, weights: Path, tokenizer: Path) -> LMModel:
    """The reference's own load path: CheckpointInfo (config.json parsing) -> get_moshi_lm ->
    load_state_dict(assign=True) with the attention load hook converting the stacked names."""
    torch.manual_seed(999)  # different init: everything must come from the file
    info = loaders.CheckpointInfo.from_hf_repo(
        "local/none", moshi_weights=weights, mimi_weights=Path("/nonexistent"), tokenizer=tokenizer,
        config_path=cfg_path)
    assert info.lm_gen_config == LM_GEN_CONFIG
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    lm.eval()
    return lm


def save(path: Path, tensors: dict, info: dict):
    t = {k: v.contiguous().clone() for k, v in tensors.items() if not k.startswith("_") and "._" not in k}
    save_file(t, str(path), metadata={"golden": json.dumps(info, sort_keys=True)})
    back = load_file(str(path))
    assert set(back) == set(t)
    return t


def describe(tensors: dict):
    for k in sorted(tensors):
        print(f"  {k:32s} {str(list(tensors[k].shape)):18s} {tensors[k].dtype}")


def main():
    ap = argparse.ArgumentParser()
    repo = Path(__file__).resolve().parents[2]
    ap.add_argument("--out", type=Path, default=repo / "golden")
    ap.add_argument("--names", type=Path,
                    default=repo / "golden" / "moshi7b_checkpoint_names.txt")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    vers = versions(sentencepiece=getattr(spm, "__version__", "?"))
    print("versions:", json.dumps(vers, sort_keys=True))

    lm = build_tiny_lm(MOSHI_DELAYS)
    randomise(lm, torch.Generator().manual_seed(SEED_RANDOMISE))
    print(f"tiny LM: {sum(p.numel() for p in lm.parameters())} parameters")

    out_dir = args.out / "lm_tiny"
    out_dir.mkdir(parents=True, exist_ok=True)

    # ---------------- (a) teacher forced
    io = run_teacher_forced(lm, make_tf_codes(lm))

    # ---------------- (b) LMGen greedy + sampled
    user = make_user_codes(lm)
    g = run_lmgen(lm, user, "greedy", use_sampling=False)
    spec_check(lm, g, "greedy")
    stream_vs_batch(lm, g, "greedy")
    gm = greedy_margins(g, "greedy")
    print(f"greedy: min top1-top2 logit gap {gm:.3g}; distinct text tokens {diversity(g['greedy.text_tokens'])},"
          f" audio per cb {[diversity(g['greedy.audio_tokens'][:, k]) for k in range(lm.dep_q)]}")
    print("greedy text tokens:", g["greedy.text_tokens"].tolist())
    assert gm > 1e-3, "near-tie in a greedy decision: pick other seeds"
    assert diversity(g["greedy.text_tokens"]) >= 4

    s = run_lmgen(lm, user, "sampled", use_sampling=True, noise_seed=SEED_NOISE)
    spec_check(lm, s, "sampled")
    s["sampled._noise_all"] = []
    nt, na = s["sampled.noise_text"], s["sampled.noise_audio"]
    for n in range(STEPS):
        s["sampled._noise_all"].append(nt[n])
        for k in range(lm.dep_q):
            s["sampled._noise_all"].append(na[n, k])
    rg, og = sampled_margins(s, "sampled", lm)
    # text top-k membership: relative gap between the k-th and (k+1)-th largest probability
    kt = LM_GEN_CONFIG["top_k_text"]
    pt = torch.softmax(s["sampled.text_logits"].double() / LM_GEN_CONFIG["temp_text"], -1).sort(-1, True).values
    bg = float(((pt[..., kt - 1] - pt[..., kt]) / pt[..., kt - 1]).min())
    print(f"sampled: min relative gap best/second probs/noise {rg:.3g}; min relative gap between"
          f" consecutive sorted top-k probs {og:.3g}; text top-{kt} boundary gap {bg:.3g}")
    assert bg > 1e-6
    print("sampled text tokens:", s["sampled.text_tokens"].tolist())
    assert rg > 1e-4 and og > 1e-6, "near-tie in a sampling decision: pick other seeds"
    io.update(g)
    io.update(s)

    # ---------------- save lm_tiny
    info = {"generator": "tools/golden/make_lm_fixtures.py", "versions": vers,
            "seeds": {"weights": SEED_WEIGHTS, "randomise": SEED_RANDOMISE, "tokens": SEED_TOKENS,
                      "noise": SEED_NOISE},
            "head_scale": {"text": HEAD_SCALE_TEXT, "audio": HEAD_SCALE_AUDIO},
            "torch_num_threads": 1}
    sd = released_state_dict(lm)
    check_naming(sd, args.names)
    wpath = out_dir / "model.safetensors"
    save_file(sd, str(wpath), metadata={"golden": json.dumps(info, sort_keys=True)})
    make_tokenizer(out_dir)
    cfg_path = out_dir / "config.json"
    cfg_path.write_text(json.dumps(config_json(MOSHI_DELAYS, "model.safetensors", "tokenizer.model"),
                                   indent=2) + "\n")
    io_saved = save(out_dir / "io.safetensors", io, info)

    # ---------------- round trip through the reference's load path: bit-for-bit
    lm2 = load_via_reference(cfg_path, wpath, out_dir / "tokenizer.model")
    sd_mod = lm.state_dict()
    sd_mod2 = lm2.state_dict()
    assert set(sd_mod) == set(sd_mod2)
    for k in sd_mod:
        assert torch.equal(sd_mod[k], sd_mod2[k]), k
    io2 = run_teacher_forced(lm2, io["tf.codes"])
    for k, v in io2.items():
        assert torch.equal(torch.nan_to_num(v.float(), nan=-7.0), torch.nan_to_num(io[k].float(), nan=-7.0)), k
    g2 = run_lmgen(lm2, user, "greedy", use_sampling=False)
    for k, v in g2.items():
        assert torch.equal(v, io[k]), k
    s2 = run_lmgen(lm2, user, "sampled", use_sampling=True, noise_seed=SEED_NOISE)
    for k, v in s2.items():
        if not k.startswith("_"):
            assert torch.equal(v, io[k]), k
    print("round trip: config.json + model.safetensors via CheckpointInfo.get_moshi reproduce tf.*, greedy.*,"
          " sampled.* bit for bit")

    # ---------------- lm_tiny_delays: same weights, other delays, greedy LMGen
    d_dir = args.out / "lm_tiny_delays"
    d_dir.mkdir(parents=True, exist_ok=True)
    d_cfg_path = d_dir / "config.json"
    d_cfg_path.write_text(json.dumps(config_json(OTHER_DELAYS, "../lm_tiny/model.safetensors",
                                                 "../lm_tiny/tokenizer.model"), indent=2) + "\n")
    lm3 = load_via_reference(d_cfg_path, wpath, out_dir / "tokenizer.model")
    assert lm3.delays == OTHER_DELAYS
    g3 = run_lmgen(lm3, user, "greedy", use_sampling=False)
    spec_check(lm3, g3, "greedy")
    stream_vs_batch(lm3, g3, "greedy")
    gm3 = greedy_margins(g3, "greedy")
    print(f"delays variant greedy: min top1-top2 logit gap {gm3:.3g}")
    assert gm3 > 1e-3
    info3 = dict(info, variant=f"delays {OTHER_DELAYS}, weights ../lm_tiny/model.safetensors")
    io3_saved = save(d_dir / "io.safetensors", g3, info3)

    # ---------------- summary
    print("\nfiles:")
    total = 0
    for d in (out_dir, d_dir):
        for p in sorted(d.rglob("*")):
            if p.is_file():
                print(f"  {p}  {p.stat().st_size} bytes")
                total += p.stat().st_size
    print(f"  total {total} bytes")
    assert total <= 3 * 1024 * 1024, "LM golden fixtures exceed 3 MB"
    print(f"model.safetensors: {len(sd)} tensors")
    for k in sorted(sd):
        if not re.search(r"\.(?:[1-9]\d*)\.", k):
            print(f"  {k:48s} {list(sd[k].shape)}")
    print("lm_tiny/io.safetensors:")
    describe(io_saved)
    print("lm_tiny_delays/io.safetensors:")
    describe(io3_saved)


if __name__ == "__main__":
    main()

//! The cases of `verify ops`: each builds its inputs from the [`Env`] it is given and returns
//! the op's result, so the same function computes the reference and the device side. Shapes are
//! small versions of the engine's; layouts are the ones the engine produces (see each comment).
//! Where the engine always computes an op in f32 whatever the model dtype (softmax, RMSNorm,
//! RoPE, long reductions), the case does the same, so its bf16 rows check the path a bf16 model
//! takes.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::ops::{silu, softmax_last_dim};

use super::Env;
use crate::error::Result;
use crate::lm::temporal::ZeroableEmbedding;
use crate::exec::{elu, KvCache, KvCacheKind, StepCall, StepCtx};
use crate::nn::attention::Attention;
use crate::nn::conv::{ConvSpec, ConvState, ConvTrState, PadMode, StreamingConv1d, StreamingConvTr1d};
use crate::nn::norm::Norm;
use crate::nn::per_step::StepLayout;
use crate::nn::rope::Rope;
use crate::nn::Linear;

/// How a case's result is compared.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Arithmetic: within the dtype's tolerance.
    Float,
    /// Values moved or converted, never combined (copies, gathers, max, conversions): there is
    /// one right answer, bit for bit, on every backend.
    Exact,
    /// Indices: all equal.
    Codes,
    /// An 8-bit weight product (`ops_q8`): the dtype's bound where the kernel keeps the
    /// activations as they are (ours, on CUDA), `TOL_Q8_ACT` where it quantizes them too
    /// (Candle's: `candle`, or any device other than CUDA).
    Q8 { candle: bool },
}

pub(super) struct Case {
    pub op: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    pub run: CaseFn,
}

/// Computes a case's result on the side `Env` describes.
pub(super) type CaseFn = Box<dyn Fn(&mut Env<'_>) -> Result<Tensor>>;

type Run = fn(&mut Env<'_>) -> Result<Tensor>;

/// An arithmetic case.
fn f(op: &'static str, name: &'static str, run: impl Fn(&mut Env<'_>) -> Result<Tensor> + 'static) -> Case {
    Case { op, name, kind: Kind::Float, run: Box::new(run) }
}

/// A bit-exact case.
fn x(op: &'static str, name: &'static str, run: Run) -> Case {
    Case { op, name, kind: Kind::Exact, run: Box::new(run) }
}

/// An indices case.
fn c(op: &'static str, name: &'static str, run: Run) -> Case {
    Case { op, name, kind: Kind::Codes, run: Box::new(run) }
}

/// Input layouts of a [a, b, c] tensor.
#[derive(Clone, Copy)]
enum L {
    Contiguous,
    /// Stored as [a, c, b], viewed transposed.
    Transposed,
    /// A slice of the last dim of [a, b, 2c] (strided rows, nonzero offset).
    Narrowed,
    /// [1, b, c] broadcast over the first dim (stride 0).
    Broadcast,
}

/// Uniform values in ±scale plus shift, laid out as `l`.
fn input(e: &mut Env, [a, b, c]: [usize; 3], scale: f32, shift: f64, l: L) -> Result<Tensor> {
    let host = |e: &mut Env, s: &[usize]| -> Result<Tensor> { Ok((e.host(s, scale)? + shift)?) };
    Ok(match l {
        L::Contiguous => {
            let h = host(e, &[a, b, c])?;
            e.put(&h)?
        }
        L::Transposed => {
            let h = host(e, &[a, b, c])?;
            e.put_t(&h, 1, 2)?
        }
        L::Narrowed => {
            let h = host(e, &[a, b, 2 * c])?;
            e.put(&h)?.narrow(2, c / 2, c)?
        }
        L::Broadcast => {
            let h = host(e, &[1, b, c])?;
            e.put(&h)?.broadcast_as((a, b, c))?
        }
    })
}

fn linear(e: &mut Env, rows: usize, transposed: bool) -> Result<Tensor> {
    let w = e.host(&[130, 70], 1.0 / 70f32.sqrt())?;
    let lin = Linear::new(e.put(&w)?)?;
    let x = if transposed { e.rand_t(&[1, rows, 70], 1.0, 1, 2)? } else { e.rand(&[1, rows, 70], 1.0)? };
    Ok(lin.forward(&x)?)
}

fn spec(c: usize, o: usize, k: usize, s: usize, d: usize, pad_mode: PadMode) -> ConvSpec {
    ConvSpec { in_channels: c, out_channels: o, kernel: k, stride: s, dilation: d, bias: true, pad_mode }
}

/// The engine's causal conv on [b, C_in, t], fed in `chunks` equal streaming chunks.
fn conv(e: &mut Env, sp: ConvSpec, b: usize, t: usize, transposed: bool, chunks: usize) -> Result<Tensor> {
    let (ci, co, k) = (sp.in_channels, sp.out_channels, sp.kernel);
    let w = e.host(&[co, ci, k], 1.0 / ((ci * k) as f32).sqrt())?;
    let bias = e.host(&[co], 0.1)?;
    let m = StreamingConv1d::new(sp, e.vb(vec![("conv.conv.weight", w), ("conv.conv.bias", bias)])?)?;
    let x = if transposed { e.rand_t(&[b, ci, t], 1.0, 1, 2)? } else { e.rand(&[b, ci, t], 1.0)? };
    let mut state = ConvState::default();
    let n = t / chunks;
    let outs = (0..chunks).map(|i| m.forward(&x.narrow(2, i * n, n)?, &mut state)).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&outs, 2)?)
}

/// Candle's conv1d with groups (the engine's convs have one group; Mimi's depthwise layers are
/// transposed): [2, 6, 16] with padding 1.
fn grouped_conv(e: &mut Env, out: usize, k: usize, stride: usize, groups: usize) -> Result<Tensor> {
    let w = e.rand(&[out, 6 / groups, k], 0.5)?;
    let x = e.rand(&[2, 6, 16], 1.0)?;
    Ok(x.conv1d(&w, 1, stride, 1, groups)?)
}

/// The engine's transposed conv (C_in, C_out), (kernel, stride), depthwise when `depthwise`, on
/// [2, C_in, t] fed in `chunks` chunks.
fn convtr(e: &mut Env, (ci, co): (usize, usize), (k, s): (usize, usize), depthwise: bool, t: usize, transposed: bool, chunks: usize) -> Result<Tensor> {
    let groups = if depthwise { ci } else { 1 };
    let w = e.host(&[ci, co / groups, k], 1.0 / ((ci * k) as f32).sqrt())?;
    let bias = e.host(&[co], 0.1)?;
    let sp = ConvSpec { bias: !depthwise, ..spec(ci, co, k, s, 1, PadMode::Constant) };
    let mut ws = vec![("convtr.convtr.weight", w)];
    if sp.bias {
        ws.push(("convtr.convtr.bias", bias));
    }
    let m = StreamingConvTr1d::new(sp, groups, e.vb(ws)?)?;
    let x = if transposed { e.rand_t(&[2, ci, t], 1.0, 1, 2)? } else { e.rand(&[2, ci, t], 1.0)? };
    let mut state = ConvTrState::default();
    let n = t / chunks;
    let outs = (0..chunks).map(|i| m.forward(&x.narrow(2, i * n, n)?, &mut state)).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&outs, 2)?)
}

/// An additive f32 mask [t, s]: 0 where `visible(row, col)`, −∞ elsewhere.
fn mask(e: &Env, t: usize, s: usize, visible: impl Fn(usize, usize) -> bool) -> Result<Tensor> {
    let v: Vec<f32> = (0..t * s).map(|i| if visible(i / s, i % s) { 0.0 } else { f32::NEG_INFINITY }).collect();
    e.put_as(&Tensor::from_vec(v, (t, s), &Device::Cpu)?, DType::F32)
}

/// As attention: scores in the model dtype, to f32, plus the mask, softmax, back.
fn softmax(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let s = x.to_dtype(DType::F32)?;
    let s = match mask {
        Some(m) => s.broadcast_add(m)?,
        None => s,
    };
    Ok(softmax_last_dim(&s)?.to_dtype(x.dtype())?)
}

fn layer_norm(e: &mut Env, shape: [usize; 3], l: L) -> Result<Tensor> {
    let d = shape[2];
    let (w, b) = ((e.host(&[d], 0.2)? + 1.0)?, e.host(&[d], 0.2)?);
    let norm = Norm::Layer(candle_nn::LayerNorm::new(e.put(&w)?, e.put(&b)?, 1e-5));
    Ok(norm.forward(&input(e, shape, 2.0, 0.5, l)?)?)
}

fn rms_norm(e: &mut Env, shape: [usize; 3], l: L) -> Result<Tensor> {
    let alpha = (e.host(&[shape[2]], 0.2)? + 1.0)?;
    let norm = Norm::RmsF32 { alpha: e.put_as(&alpha, DType::F32)?, alpha_model: e.put(&alpha)?, eps: 1e-8 };
    Ok(norm.forward(&input(e, shape, 2.0, 0.5, l)?)?)
}

/// The residual add and the RMSNorm after it (`exec::add_rms_norm`; on CUDA in bf16 our fused
/// kernel): x laid out as `l`, r contiguous; both outputs, the sum and the norm, side by side.
fn add_rms_norm(e: &mut Env, shape: [usize; 3], l: L) -> Result<Tensor> {
    let alpha = (e.host(&[shape[2]], 0.2)? + 1.0)?;
    let norm = Norm::RmsF32 { alpha: e.put_as(&alpha, DType::F32)?, alpha_model: e.put(&alpha)?, eps: 1e-8 };
    let x = input(e, shape, 2.0, 0.5, l)?;
    let r = input(e, shape, 1.0, 0.0, L::Contiguous)?;
    let (s, y) = norm.add_forward(&x, &r)?;
    Ok(Tensor::cat(&[s, y], 2)?)
}

/// q or k [2, 3, 5, 16] at `offset`; `permuted`: the view attention takes out of the fused QKV.
fn rope(e: &mut Env, offset: usize, permuted: bool) -> Result<Tensor> {
    let x = if permuted {
        e.rand(&[2, 5, 3, 3, 16], 1.0)?.permute((2, 0, 3, 1, 4))?.get(1)?
    } else {
        e.rand(&[2, 3, 5, 16], 1.0)?
    };
    Rope::new(16, 10_000.0).apply(&x, offset)
}

fn zeroable_embedding(e: &mut Env) -> Result<Tensor> {
    let table = e.host(&[51, 24], 1.0)?;
    let emb = ZeroableEmbedding::new(51, 24, &e.vb(vec![("weight", table)])?.into())?;
    let tokens: Vec<i64> = (0..12).map(|_| e.below(52) as i64 - 1).collect(); // −1: "no token"
    emb.forward(&Tensor::from_vec(tokens, (2, 6), &Device::Cpu)?.to_device(e.device)?)
}

/// `Env::planted` rows on this side, stored transposed when `transposed`.
fn planted(e: &mut Env, rows: usize, n: usize, transposed: bool) -> Result<Tensor> {
    let h = e.planted(rows, n)?;
    if transposed {
        e.put_t(&h, 0, 1)
    } else {
        e.put(&h)
    }
}

/// Self-attention streamed one step at a time through a ring of 8 slots for 12 steps (the ring
/// wraps), RoPE on, batch 2 whose row 1 restarts at step 5 (its older keys masked): on CUDA in
/// bf16 this is our decode kernel (and the 8-bit write kernel), elsewhere Candle's ops.
fn streamed_attention(e: &mut Env, dh: usize, kind: KvCacheKind) -> Result<Tensor> {
    let (b, h, steps, cap) = (2, 2, 12, 8);
    let d = h * dh;
    let w_in = e.host(&[3 * d, d], 1.0 / (d as f32).sqrt())?;
    let w_out = e.host(&[d, d], 1.0 / (d as f32).sqrt())?;
    let attn = Attention::new(d, h, true, &StepLayout::Shared(e.vb(vec![("in_proj_weight", w_in), ("out_proj.weight", w_out)])?.into()))?;
    let rope = Rope::new(dh, 10_000.0);
    let x = e.rand(&[b, steps, d], 1.0)?;
    let mut cache = KvCache::new(kind);
    let mut starts = vec![0usize; b];
    let mut ys = Vec::with_capacity(steps);
    for p in 0..steps {
        if p == 5 {
            starts[1] = 5;
        }
        let call = StepCall { batch: b, steps: 1, offset: p, capacity: Some(cap), starts: &starts, context: cap, rope: Some(&rope), dtype: x.dtype(), head_dim: dh, heads: h, fixed: false };
        let ctx = StepCtx::new(&call, e.device)?;
        ys.push(attn.forward(&x.narrow(1, p, 1)?.contiguous()?, &ctx, &mut cache)?);
    }
    Ok(Tensor::cat(&ys, 1)?)
}

/// Ring [2, 3, 8, 16] of zeros; `writes` (start in the new keys, length, slot) as `KvCache`.
fn ring(e: &mut Env, writes: &[(usize, usize, usize)]) -> Result<Tensor> {
    let ring = Tensor::zeros((2, 3, 8, 16), e.dtype, e.device)?;
    let k = e.rand(&[2, 3, 5, 16], 1.0)?;
    for &(i, n, slot) in writes {
        ring.slice_set(&k.narrow(2, i, n)?.contiguous()?, 2, slot)?;
    }
    Ok(ring)
}

/// An elementwise op on [3, 10, 24] (values in ±3) in every layout.
fn unary(op: &'static str, g: fn(&Tensor) -> Result<Tensor>) -> Vec<Case> {
    let layouts = [("contiguous", L::Contiguous), ("transposed", L::Transposed), ("narrowed", L::Narrowed), ("broadcast", L::Broadcast)];
    layouts.into_iter().map(|(name, l)| f(op, name, move |e| g(&input(e, [3, 10, 24], 3.0, 0.0, l)?))).collect()
}

/// Every case, grouped by op.
pub(super) fn all() -> Vec<Case> {
    use L::*;
    let mut v = vec![
        // matmul: the products of attention (q·kᵀ, p·v against the KV ring's filled part), of
        // Linear's Candle path (x·Wᵀ) and of the 1×1 convs ([B, C, T]ᵀ·Wᵀ).
        f("matmul", "2-D contiguous", |e| Ok(e.rand(&[12, 40], 1.0)?.matmul(&e.rand(&[40, 24], 1.0)?)?)),
        f("matmul", "2-D transposed rhs", |e| Ok(e.rand(&[12, 40], 1.0)?.matmul(&e.rand(&[24, 40], 1.0)?.t()?)?)),
        f("matmul", "2-D transposed lhs", |e| Ok(e.rand_t(&[12, 40], 1.0, 0, 1)?.matmul(&e.rand(&[40, 24], 1.0)?)?)),
        f("matmul", "4-D q·kᵀ (transposed rhs)", |e| {
            let q = e.rand(&[2, 3, 5, 16], 1.0)?;
            Ok(q.matmul(&e.rand(&[2, 3, 9, 16], 1.0)?.t()?)?)
        }),
        f("matmul", "4-D q·kᵀ, narrowed KV ring", |e| {
            let q = e.rand(&[2, 3, 5, 16], 1.0)?;
            Ok(q.matmul(&e.rand(&[2, 3, 12, 16], 1.0)?.narrow(2, 0, 9)?.t()?)?)
        }),
        f("matmul", "4-D p·v, narrowed KV ring", |e| {
            let p = e.rand(&[2, 3, 5, 9], 1.0)?;
            Ok(p.matmul(&e.rand(&[2, 3, 12, 16], 1.0)?.narrow(2, 0, 9)?)?)
        }),
        f("matmul", "broadcast 3-D × 2-D transposed", |e| {
            let x = e.rand(&[2, 7, 40], 1.0)?;
            Ok(x.broadcast_matmul(&e.rand(&[24, 40], 1.0)?.t()?)?)
        }),
        f("matmul", "broadcast, transposed lhs", |e| {
            let x = e.rand_t(&[2, 7, 40], 1.0, 1, 2)?;
            Ok(x.broadcast_matmul(&e.rand(&[24, 40], 1.0)?.t()?)?)
        }),
        // Linear [130, 70]: ≤ 8 rows take the CPU weight-streaming kernel (f32 and bf16), more
        // rows and other devices Candle's matmul.
        f("linear", "1 row", |e| linear(e, 1, false)),
        f("linear", "2 rows", |e| linear(e, 2, false)),
        f("linear", "8 rows", |e| linear(e, 8, false)),
        f("linear", "17 rows", |e| linear(e, 17, false)),
        f("linear", "2 rows, transposed input", |e| linear(e, 2, true)),
        f("linear", "17 rows, transposed input", |e| linear(e, 17, true)),
        // conv1d: SEANet's k7 and dilated k3, the k4 s2 replicate-padded downsampling, through
        // the engine's StreamingConv1d (2 × 4 output steps: its CPU unfold + kernel path).
        f("conv1d", "k7 s1, 2×4 steps", |e| conv(e, spec(6, 8, 7, 1, 1, PadMode::Constant), 2, 4, false, 1)),
        f("conv1d", "k7 s1, 2×20 steps", |e| conv(e, spec(6, 8, 7, 1, 1, PadMode::Constant), 2, 20, false, 1)),
        f("conv1d", "k4 s2 replicate", |e| conv(e, spec(6, 8, 4, 2, 1, PadMode::Replicate), 2, 16, false, 1)),
        f("conv1d", "k3 dilation 3", |e| conv(e, spec(6, 8, 3, 1, 3, PadMode::Constant), 2, 16, false, 1)),
        f("conv1d", "k3 s1, transposed input", |e| conv(e, spec(6, 8, 3, 1, 1, PadMode::Constant), 2, 16, true, 1)),
        f("conv1d", "k4 s2, streamed in 4 chunks", |e| conv(e, spec(6, 8, 4, 2, 1, PadMode::Replicate), 2, 16, false, 4)),
        f("conv1d", "groups 2 (candle)", |e| grouped_conv(e, 8, 3, 1, 2)),
        f("conv1d", "depthwise s2 (candle)", |e| grouped_conv(e, 6, 3, 2, 6)),
        // Transposed convs: SEANet's k = 2·ratio upsampling, Mimi's depthwise k4 s2.
        f("conv_tr1d", "k8 s4", |e| convtr(e, (6, 4), (8, 4), false, 5, false, 1)),
        f("conv_tr1d", "k3 s2 (K not a multiple of S)", |e| convtr(e, (6, 4), (3, 2), false, 5, false, 1)),
        f("conv_tr1d", "k8 s4, transposed input", |e| convtr(e, (6, 4), (8, 4), false, 5, true, 1)),
        f("conv_tr1d", "k8 s4, streamed in 5 chunks", |e| convtr(e, (6, 4), (8, 4), false, 5, false, 5)),
        f("conv_tr1d", "k4 s2 depthwise", |e| convtr(e, (6, 6), (4, 2), true, 6, false, 1)),
        f("conv_tr1d", "k4 s2 depthwise, streamed in 3 chunks", |e| convtr(e, (6, 6), (4, 2), true, 6, false, 3)),
    ];
    v.extend(unary("elu", elu));
    v.extend(unary("gelu_erf", |x| Ok(x.gelu_erf()?)));
    v.extend(unary("silu", |x| Ok(silu(x)?)));
    v.extend([
        // The gated FFN: silu of one half of linear_in's output times the other half.
        f("silu", "gated halves", |e| {
            let h = e.rand(&[2, 5, 48], 3.0)?;
            Ok((silu(&h.narrow(D::Minus1, 0, 24)?)? * h.narrow(D::Minus1, 24, 24)?)?)
        }),
        f("softmax", "contiguous", |e| softmax(&e.rand(&[2, 3, 5, 9], 4.0)?, None)),
        f("softmax", "causal −inf mask", |e| {
            let s = e.rand(&[2, 3, 5, 9], 4.0)?;
            // Attention's: key j visible from query i when j ≤ i + (S − T).
            softmax(&s, Some(&mask(e, 5, 9, |i, j| j <= i + 4)?))
        }),
        f("softmax", "offset (narrowed batch)", |e| softmax(&e.rand(&[3, 3, 5, 9], 4.0)?.narrow(0, 1, 2)?, None)),
        // Softmax kernels take contiguous rows; strided scores reach it through the mask add.
        f("softmax", "transposed scores + mask", |e| {
            let s = e.rand_t(&[2, 3, 5, 9], 4.0, 2, 3)?;
            softmax(&s, Some(&mask(e, 5, 9, |i, j| j <= i + 4)?))
        }),
        f("softmax", "long rows", |e| softmax(&e.rand(&[4, 1500], 8.0)?, None)),
        f("softmax", "long rows, −inf mask", |e| {
            let s = e.rand(&[4, 1500], 8.0)?;
            // Whole blocks masked: row r sees its first 1200 − 300·r keys.
            softmax(&s, Some(&mask(e, 4, 1500, |r, j| j < 1200 - 300 * r)?))
        }),
        f("layer_norm", "contiguous", |e| layer_norm(e, [2, 7, 64], Contiguous)),
        f("layer_norm", "transposed", |e| layer_norm(e, [2, 7, 64], Transposed)),
        f("layer_norm", "narrowed", |e| layer_norm(e, [2, 7, 64], Narrowed)),
        f("layer_norm", "broadcast", |e| layer_norm(e, [2, 7, 64], Broadcast)),
        f("layer_norm", "long rows", |e| layer_norm(e, [1, 3, 1000], Contiguous)),
        f("rms_norm", "contiguous", |e| rms_norm(e, [2, 7, 64], Contiguous)),
        f("rms_norm", "transposed", |e| rms_norm(e, [2, 7, 64], Transposed)),
        f("rms_norm", "narrowed", |e| rms_norm(e, [2, 7, 64], Narrowed)),
        f("rms_norm", "broadcast", |e| rms_norm(e, [2, 7, 64], Broadcast)),
        f("rms_norm", "long rows", |e| rms_norm(e, [1, 3, 1000], Contiguous)),
        // The depformer's and the temporal LM's widths (one block per row, 4 and 16 values a
        // thread), a strided input (copied first), and a width the kernel does not take (not a
        // multiple of 8: the unfused ops).
        f("add_rms_norm", "depformer width", |e| add_rms_norm(e, [2, 1, 1024], Contiguous)),
        f("add_rms_norm", "temporal width", |e| add_rms_norm(e, [1, 1, 4096], Contiguous)),
        f("add_rms_norm", "transposed", |e| add_rms_norm(e, [2, 7, 64], Transposed)),
        f("add_rms_norm", "width 1000, 3 rows", |e| add_rms_norm(e, [1, 3, 1000], Contiguous)),
        f("add_rms_norm", "width 60", |e| add_rms_norm(e, [2, 3, 60], Contiguous)),
        f("rope", "offset 0", |e| rope(e, 0, false)),
        f("rope", "offset 37", |e| rope(e, 37, false)),
        f("rope", "offset 37, QKV view", |e| rope(e, 37, true)),
        f("rope", "offset 3000", |e| rope(e, 3000, false)),
        f("attention", "streamed, Dh 64, model-dtype cache", |e| streamed_attention(e, 64, KvCacheKind::Model)),
        f("attention", "streamed, Dh 128, model-dtype cache", |e| streamed_attention(e, 128, KvCacheKind::Model)),
        f("attention", "streamed, Dh 64, 8-bit cache", |e| streamed_attention(e, 64, KvCacheKind::Int8)),
        f("attention", "streamed, Dh 128, 8-bit cache", |e| streamed_attention(e, 128, KvCacheKind::Int8)),
        // Embeddings and codebook lookups.
        x("embedding", "rows", |e| {
            let table = e.rand(&[50, 24], 1.0)?;
            Ok(table.index_select(&e.ids(11, 50)?, 0)?)
        }),
        // index_select takes contiguous tables; an offset into the storage is still allowed.
        x("embedding", "offset table", |e| {
            let table = e.rand(&[50, 24], 1.0)?.narrow(0, 5, 45)?;
            Ok(table.index_select(&e.ids(11, 45)?, 0)?)
        }),
        x("embedding", "along dim 1", |e| {
            let x = e.rand(&[4, 50], 1.0)?;
            Ok(x.index_select(&e.ids(11, 50)?, 1)?)
        }),
        x("embedding", "zeroable, −1 tokens", zeroable_embedding),
        // Greedy picks and the quantizer's nearest code; one planted extreme per row.
        c("argmax", "argmax last dim", |e| Ok(planted(e, 6, 100, false)?.argmax(D::Minus1)?)),
        c("argmax", "argmax transposed", |e| Ok(planted(e, 6, 100, true)?.argmax(D::Minus1)?)),
        c("argmax", "argmax offset rows", |e| Ok(planted(e, 6, 100, false)?.narrow(0, 2, 3)?.argmax(D::Minus1)?)),
        c("argmax", "argmax long rows", |e| Ok(planted(e, 3, 2048, false)?.argmax(D::Minus1)?)),
        c("argmax", "argmin last dim", |e| Ok(planted(e, 6, 100, false)?.argmin(D::Minus1)?)),
        c("argmax", "argmin long rows", |e| Ok(planted(e, 3, 2048, false)?.argmin(D::Minus1)?)),
        x("reduce", "max last dim", |e| Ok(e.rand(&[6, 100], 1.0)?.max(D::Minus1)?)),
        x("reduce", "max transposed", |e| Ok(e.rand_t(&[6, 100], 1.0, 0, 1)?.max(D::Minus1)?)),
        x("reduce", "max_keepdim dim 0", |e| Ok(e.rand(&[6, 100], 1.0)?.max_keepdim(0)?)),
        f("reduce", "sum dim 1", |e| Ok(e.rand(&[50, 24], 1.0)?.sum(1)?)),
        f("reduce", "sum dim 1, transposed", |e| Ok(e.rand_t(&[50, 24], 1.0, 0, 1)?.sum(1)?)),
        f("reduce", "mean long rows (f32)", |e| Ok(e.rand(&[3, 1000], 1.0)?.to_dtype(DType::F32)?.mean_keepdim(D::Minus1)?)),
        // Elementwise binary ops in the layouts the engine produces.
        f("add", "contiguous", |e| Ok((e.rand(&[4, 30], 1.0)? + e.rand(&[4, 30], 1.0)?)?)),
        f("add", "broadcast bias [1, C, 1]", |e| {
            let y = e.rand(&[2, 6, 10], 1.0)?;
            Ok(y.broadcast_add(&e.rand(&[6], 1.0)?.reshape((1, (), 1))?)?)
        }),
        f("add", "broadcast [T, S] over [B, H, T, S]", |e| {
            let s = e.rand(&[2, 3, 5, 9], 1.0)?;
            Ok(s.broadcast_add(&e.rand(&[5, 9], 1.0)?)?)
        }),
        f("add", "transposed", |e| Ok((e.rand_t(&[4, 30], 1.0, 0, 1)? + e.rand_t(&[4, 30], 1.0, 0, 1)?)?)),
        f("add", "narrowed", |e| {
            let (a, b) = (e.rand(&[2, 5, 48], 1.0)?, e.rand(&[2, 5, 48], 1.0)?);
            Ok((a.narrow(2, 0, 24)? + b.narrow(2, 24, 24)?)?)
        }),
        f("add", "broadcast sub", |e| Ok(e.rand(&[1, 50], 1.0)?.broadcast_sub(&e.rand(&[7, 50], 1.0)?)?)),
        f("mul", "contiguous", |e| Ok((e.rand(&[4, 30], 1.0)? * e.rand(&[4, 30], 1.0)?)?)),
        f("mul", "broadcast row", |e| Ok(e.rand(&[2, 5, 24], 1.0)?.broadcast_mul(&e.rand(&[24], 1.0)?)?)),
        f("mul", "broadcast column", |e| Ok(e.rand(&[12, 24], 1.0)?.broadcast_mul(&e.rand(&[12, 1], 1.0)?)?)),
        f("mul", "scalar", |e| Ok((e.rand(&[2, 3, 5, 9], 1.0)? * 0.25)?)),
        f("mul", "transposed", |e| Ok((e.rand_t(&[4, 30], 1.0, 0, 1)? * e.rand_t(&[4, 30], 1.0, 0, 1)?)?)),
        f("mul", "broadcast div", |e| {
            let x = e.rand(&[50, 24], 1.0)?;
            let h = (e.host(&[50, 1], 0.5)? + 1.5)?;
            Ok(x.broadcast_div(&e.put(&h)?)?)
        }),
        // Concatenation as the streaming state and padding use it.
        x("cat", "dim 2", |e| Ok(Tensor::cat(&[&e.rand(&[2, 6, 3], 1.0)?, &e.rand(&[2, 6, 8], 1.0)?], 2)?)),
        x("cat", "dim 1", |e| {
            let (a, b, c) = (e.rand(&[2, 3, 5], 1.0)?, e.rand(&[2, 4, 5], 1.0)?, e.rand(&[2, 1, 5], 1.0)?);
            Ok(Tensor::cat(&[&a, &b, &c], 1)?)
        }),
        x("cat", "dim 0", |e| Ok(Tensor::cat(&[&e.rand(&[2, 6, 3], 1.0)?, &e.rand(&[1, 6, 3], 1.0)?], 0)?)),
        x("cat", "broadcast operand", |e| {
            let x = e.rand(&[2, 6, 8], 1.0)?;
            Ok(Tensor::cat(&[&x.narrow(2, 0, 1)?.broadcast_as((2, 6, 3))?, &x], 2)?)
        }),
        x("cat", "transposed operand", |e| Ok(Tensor::cat(&[&e.rand_t(&[2, 6, 8], 1.0, 1, 2)?, &e.rand(&[2, 6, 4], 1.0)?], 2)?)),
        x("cat", "pad_with_zeros", |e| Ok(e.rand(&[2, 6, 8], 1.0)?.pad_with_zeros(2, 2, 3)?)),
        // Strided copies: narrow / permute / transpose / broadcast made contiguous.
        x("narrow", "dim 2", |e| Ok(e.rand(&[2, 6, 12], 1.0)?.narrow(2, 3, 5)?.contiguous()?)),
        x("narrow", "last dim of 4-D", |e| Ok(e.rand(&[2, 3, 12, 16], 1.0)?.narrow(3, 4, 8)?.contiguous()?)),
        x("narrow", "QKV split", |e| {
            let qkv = e.rand(&[2, 5, 144], 1.0)?.reshape((2, 5, 3, 3, 16))?.permute((2, 0, 3, 1, 4))?;
            Ok(qkv.get(1)?.contiguous()?)
        }),
        x("narrow", "transpose", |e| Ok(e.rand(&[7, 30], 1.0)?.t()?.contiguous()?)),
        x("narrow", "broadcast", |e| Ok(e.rand(&[1, 6, 1], 1.0)?.broadcast_as((2, 6, 5))?.contiguous()?)),
        x("narrow", "reshape of transposed", |e| Ok(e.rand_t(&[2, 6, 10], 1.0, 1, 2)?.reshape((2, 60))?)),
        // Conversions on the device. The bf16 roundings start from unrounded f32 values (moved
        // as they are) so that the device's rounding itself is compared, bit for bit.
        x("to_dtype", "model dtype to f32", |e| Ok(e.rand_t(&[6, 40], 1.0, 0, 1)?.to_dtype(DType::F32)?)),
        x("to_dtype", "f32 ↔ bf16", |e| {
            let h = e.host(&[6, 40], 1.0)?.to_device(e.device)?;
            Ok(h.to_dtype(DType::BF16)?.to_dtype(DType::F32)?)
        }),
        x("to_dtype", "f32 ↔ bf16, transposed", |e| {
            let h = e.host(&[40, 6], 1.0)?.to_device(e.device)?.t()?;
            Ok(h.to_dtype(DType::BF16)?.to_dtype(DType::F32)?)
        }),
        x("to_dtype", "large values ↔ bf16", |e| {
            let h = e.host(&[6, 40], 1000.0)?.to_device(e.device)?;
            Ok(h.to_dtype(DType::BF16)?.to_dtype(DType::F32)?)
        }),
        c("to_dtype", "u32 → i64 → f32 → u32", |e| {
            Ok(e.ids(30, 2048)?.to_dtype(DType::I64)?.to_dtype(DType::F32)?.to_dtype(DType::U32)?)
        }),
        // The KV ring written in place.
        x("slice_set", "at slot 0", |e| ring(e, &[(0, 3, 0)])),
        x("slice_set", "at slot 5", |e| ring(e, &[(0, 3, 5)])),
        x("slice_set", "wrapping", |e| ring(e, &[(0, 2, 6), (2, 3, 0)])),
        x("slice_set", "overwrite", |e| ring(e, &[(0, 5, 0), (1, 4, 3)])),
        x("slice_set", "filled part", |e| Ok(ring(e, &[(0, 5, 0), (0, 1, 5)])?.narrow(2, 0, 6)?)),
    ]);
    v
}

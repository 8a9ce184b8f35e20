//! Causal multi-head self-attention with a fused QKV projection, rotary embeddings and a KV
//! cache that keeps the last `context` steps, as `StreamingMultiheadAttention` with its
//! `RingKVCache` in the reference.
//!
//! Semantics kept from the reference: a query at position p sees key positions q with
//! 0 ≤ p − q < context. In streaming, the new keys of a call are written into the cache
//! *before* attending, and the cache holds only `context` steps, so once a stream is longer
//! than the context, the first queries of a multi-step chunk lose the oldest keys (the reference
//! does the same; batch and streaming then differ, which is why fixtures stay shorter).

use candle_core::{DType, Device, Module, Tensor, D};

use super::per_step::{PerStep, StepLayout};
use super::Linear;
use crate::error::{EngineError, Result};
use crate::weights::get_checked;

/// How a streaming KV cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheKind {
    /// The model's dtype (bf16 for the released LM), as the reference.
    #[default]
    Model,
    /// 8 bits per value, symmetric: one f32 scale per (row, head, position) = max|x| / 127,
    /// values round(x / scale) stored as u8 = q + 128. Half the bytes of bf16 (plus 3% scales).
    Int8,
}

#[derive(Debug)]
enum Ring {
    /// [B, H, capacity, Dh] each, in the model's dtype.
    Full { k: Tensor, v: Tensor },
    /// u8 [B, H, capacity, Dh] and f32 scales [B, H, capacity].
    Int8 { k: Tensor, v: Tensor, ks: Tensor, vs: Tensor },
}

/// Keys and values of one layer for one stream: a ring of `capacity` slots, allocated once at
/// the first step and written in place; position p lives in slot p mod capacity, as in the
/// reference's `RingKVCache`.
#[derive(Debug, Default)]
pub struct KvCache {
    ring: Option<Ring>,
    /// Positions written so far (the next position to write).
    written: usize,
}

impl Clone for KvCache {
    /// A deep copy: the ring is written in place, so clones must not share its storage.
    fn clone(&self) -> Self {
        let c = |t: &Tensor| t.copy().expect("copy KV cache");
        let ring = self.ring.as_ref().map(|r| match r {
            Ring::Full { k, v } => Ring::Full { k: c(k), v: c(v) },
            Ring::Int8 { k, v, ks, vs } => Ring::Int8 { k: c(k), v: c(v), ks: c(ks), vs: c(vs) },
        });
        Self { ring, written: self.written }
    }
}

/// 8-bit symmetric quantisation of x [.., Dh] along its last dim: (u8 = q + 128, f32 scales [..]).
/// The CUDA kernel `qkv_rope_write` computes the same (it rounds ties to even, this away from zero).
pub fn quantize_i8(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let xf = x.to_dtype(DType::F32)?;
    let amax = xf.abs()?.max_keepdim(D::Minus1)?.clamp(1e-30f32, f32::MAX)?;
    let inv = Tensor::full(127f32, amax.shape(), amax.device())?.div(&amax)?;
    let q = xf.broadcast_mul(&inv)?.round()?.clamp(-127f32, 127f32)?;
    let u = (q + 128.0)?.to_dtype(DType::U8)?;
    Ok((u, (amax / 127.0)?.squeeze(D::Minus1)?))
}

/// The inverse of `quantize_i8`, in f32.
pub fn dequantize_i8(u: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok((u.to_dtype(DType::F32)? - 128.0)?.broadcast_mul(&scale.unsqueeze(D::Minus1)?)?)
}

impl KvCache {
    /// Number of cached steps.
    pub fn len(&self) -> usize {
        match &self.ring {
            Some(Ring::Full { k, .. }) | Some(Ring::Int8 { k, .. }) => self.written.min(k.dim(2).unwrap_or(0)),
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the ring (keys, values and scales).
    pub fn bytes(&self) -> usize {
        let b = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match &self.ring {
            Some(Ring::Full { k, v }) => b(k) + b(v),
            Some(Ring::Int8 { k, v, ks, vs }) => b(k) + b(v) + b(ks) + b(vs),
            None => 0,
        }
    }

    /// Move the write position back by `steps` (see `TransformerState::rewind`).
    pub fn rewind(&mut self, steps: usize) {
        self.written = self.written.saturating_sub(steps);
    }

    /// Move the write position forward by `steps` without writing (benchmarks: a cache as full
    /// as a long conversation's, whatever its contents).
    pub fn skip(&mut self, steps: usize) {
        self.written += steps;
    }

    /// Write `k`, `v` [B, H, T, Dh] for positions `offset .. offset + T`.
    fn append(&mut self, k: &Tensor, v: &Tensor, offset: usize, capacity: usize, kind: KvCacheKind) -> Result<()> {
        let (b, h, t, dh) = k.dims4()?;
        self.prepare(b, h, dh, offset, capacity, k.dtype(), kind, k.device())?;
        let ring = self.ring.as_ref().expect("allocated by prepare");
        // Only the last `capacity` positions of the chunk can survive the writes.
        let skip = t.saturating_sub(capacity);
        let mut pos = offset + skip;
        let mut i = skip;
        while i < t {
            let slot = pos % capacity;
            let n = (capacity - slot).min(t - i);
            let (kn, vn) = (k.narrow(2, i, n)?.contiguous()?, v.narrow(2, i, n)?.contiguous()?);
            match ring {
                Ring::Full { k: rk, v: rv } => {
                    rk.slice_set(&kn, 2, slot)?;
                    rv.slice_set(&vn, 2, slot)?;
                }
                Ring::Int8 { k: rk, v: rv, ks, vs } => {
                    let ((kq, kscale), (vq, vscale)) = (quantize_i8(&kn)?, quantize_i8(&vn)?);
                    rk.slice_set(&kq, 2, slot)?;
                    rv.slice_set(&vq, 2, slot)?;
                    ks.slice_set(&kscale.contiguous()?, 2, slot)?;
                    vs.slice_set(&vscale.contiguous()?, 2, slot)?;
                }
            }
            i += n;
            pos += n;
        }
        self.written = offset + t;
        Ok(())
    }

    /// Check that a write of batch `b` at `offset` continues this cache, and allocate the ring
    /// ([B, H, capacity, Dh] in `dtype` or 8-bit) at the first write.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        b: usize,
        h: usize,
        dh: usize,
        offset: usize,
        capacity: usize,
        dtype: DType,
        kind: KvCacheKind,
        dev: &Device,
    ) -> Result<()> {
        if offset != self.written {
            return Err(EngineError::Streaming(format!(
                "KV cache holds {} positions but the step starts at {offset}",
                self.written
            )));
        }
        if let Some(Ring::Full { k: rk, .. } | Ring::Int8 { k: rk, .. }) = &self.ring {
            if rk.dim(0)? != b {
                return Err(EngineError::Streaming(format!(
                    "batch size changed mid-stream ({} then {b}); reset the state first",
                    rk.dim(0)?
                )));
            }
        }
        if self.ring.is_none() {
            self.ring = Some(match kind {
                KvCacheKind::Model => {
                    let z = Tensor::zeros((b, h, capacity, dh), dtype, dev)?;
                    Ring::Full { v: z.copy()?, k: z }
                }
                KvCacheKind::Int8 => {
                    let z = Tensor::zeros((b, h, capacity, dh), DType::U8, dev)?;
                    let s = Tensor::zeros((b, h, capacity), DType::F32, dev)?;
                    Ring::Int8 { v: z.copy()?, k: z, vs: s.copy()?, ks: s }
                }
            });
        }
        Ok(())
    }

    /// The filled part of the ring as keys and values in `dtype` (8-bit rings dequantised).
    fn filled(&self, dtype: DType) -> Result<(Tensor, Tensor)> {
        let n = self.len();
        match self.ring.as_ref() {
            Some(Ring::Full { k, v }) => Ok((k.narrow(2, 0, n)?, v.narrow(2, 0, n)?)),
            Some(Ring::Int8 { k, v, ks, vs }) => Ok((
                dequantize_i8(&k.narrow(2, 0, n)?, &ks.narrow(2, 0, n)?)?.to_dtype(dtype)?,
                dequantize_i8(&v.narrow(2, 0, n)?, &vs.narrow(2, 0, n)?)?.to_dtype(dtype)?,
            )),
            None => Err(EngineError::Streaming("the KV cache was read before any write".into())),
        }
    }

    #[cfg(feature = "cuda")]
    fn ring_view(&self) -> Option<super::cuda::RingView<'_>> {
        let (filled, last) = (self.len(), self.written as i64 - 1);
        Some(match self.ring.as_ref()? {
            Ring::Full { k, v } => super::cuda::RingView { k, v, scales: None, filled, last },
            Ring::Int8 { k, v, ks, vs } => super::cuda::RingView { k, v, scales: Some((ks, vs)), filled, last },
        })
    }
}

/// What every layer of one transformer call shares, computed once per call (not per layer):
/// positions, RoPE tables, the additive mask (None when nothing is masked, as in a streaming
/// step of a row that began long ago) and the rows' starts on the device (for the CUDA kernel).
pub struct StepCtx {
    pub offset: usize,
    /// Ring capacity for a streaming call, None for a whole sequence.
    pub capacity: Option<usize>,
    pub kind: KvCacheKind,
    /// Empty, or one start position per row.
    pub starts: Vec<usize>,
    /// cos, sin: [T, D/2], or [B, T, D/2] with per-row starts.
    pub rope: Option<(Tensor, Tensor)>,
    /// [T, S] or [B, 1, T, S].
    pub mask: Option<Tensor>,
    /// [B] i64, on CUDA only.
    pub starts_dev: Option<Tensor>,
}

impl StepCtx {
    /// `context`: the attention span; `rope`: the layers' rotary embedding, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: usize,
        t: usize,
        offset: usize,
        capacity: Option<usize>,
        kind: KvCacheKind,
        starts: &[usize],
        context: usize,
        rope: Option<&super::rope::Rope>,
        device: &Device,
    ) -> Result<Self> {
        let per_row = starts.iter().any(|&s| s > 0);
        if per_row && starts.len() != b {
            return Err(EngineError::Streaming(format!("{} row starts for a batch of {b}", starts.len())));
        }
        let starts: Vec<usize> = if per_row { starts.to_vec() } else { Vec::new() };
        // The position held by each slot the layers will read (after this call's writes).
        let key_pos: Vec<i64> = match capacity {
            Some(cap) => {
                let written = offset + t;
                let (filled, last, cap) = (written.min(cap), written as i64 - 1, cap as i64);
                (0..filled as i64).map(|s| last - (last - s).rem_euclid(cap)).collect()
            }
            None => (offset..offset + t).map(|p| p as i64).collect(),
        };
        let row_starts: Vec<i64> = if per_row { starts.iter().map(|&s| s as i64).collect() } else { vec![0] };
        let mut mask = Vec::with_capacity(row_starts.len() * t * key_pos.len());
        let mut any = false;
        for &start in &row_starts {
            for i in 0..t {
                let qp = (offset + i) as i64;
                for &kp in &key_pos {
                    let delta = qp - kp;
                    let ok = delta >= 0 && delta < context as i64 && kp >= start;
                    any |= !ok;
                    mask.push(if ok { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let s = key_pos.len();
        let mask = match (any, per_row) {
            (false, _) => None,
            (true, false) => Some(Tensor::from_vec(mask, (t, s), device)?),
            (true, true) => Some(Tensor::from_vec(mask, (b, 1, t, s), device)?),
        };
        let rope = match rope {
            None => None,
            Some(r) if per_row => {
                let offsets: Vec<usize> = starts.iter().map(|&st| offset.saturating_sub(st)).collect();
                Some(r.row_tables(&offsets, t, device)?)
            }
            Some(r) => Some(r.tables(offset, t, device)?),
        };
        // Zeros are made on the device (no host copy in the common case).
        let starts_dev = match (device.is_cuda() && capacity.is_some() && t == 1, per_row) {
            (false, _) => None,
            (true, false) => Some(Tensor::zeros(b, DType::I64, device)?),
            (true, true) => Some(Tensor::from_vec(row_starts, b, device)?),
        };
        Ok(Self { offset, capacity, kind, starts, rope, mask, starts_dev })
    }
}

/// Self-attention with checkpoint names `in_proj_weight` [3·d, d] and `out_proj.weight` [d, d],
/// or per step (see [`StepLayout`]).
#[derive(Debug, Clone)]
pub struct Attention {
    in_proj: PerStep<Linear>,
    out_proj: PerStep<Linear>,
    num_heads: usize,
    head_dim: usize,
    rope: bool,
}

fn stacked_rows(vb: &candle_nn::VarBuilder, name: &str, steps: usize, rows: usize, cols: usize) -> Result<PerStep<Linear>> {
    let w = get_checked(vb, &[steps * rows, cols], name)?;
    Ok(PerStep::per_step((0..steps).map(|s| Linear::new(w.narrow(0, s * rows, rows)?)).collect::<candle_core::Result<_>>()?))
}

impl Attention {
    /// `layout` points at the `self_attn` module.
    /// `rope`: whether queries and keys are rotated (with the tables of the call's `StepCtx`).
    pub fn new(d_model: usize, num_heads: usize, rope: bool, layout: &StepLayout) -> Result<Self> {
        let d = d_model;
        let (in_proj, out_proj) = match layout {
            StepLayout::Shared(vb) => (
                PerStep::shared(Linear::new(get_checked(vb, &[3 * d, d], "in_proj_weight")?)?),
                PerStep::shared(Linear::new(get_checked(&vb.pp("out_proj"), &[d, d], "weight")?)?),
            ),
            StepLayout::Stacked(vb, steps) => (
                stacked_rows(vb, "in_proj_weight", *steps, 3 * d, d)?,
                stacked_rows(&vb.pp("out_proj"), "weight", *steps, d, d)?,
            ),
            StepLayout::Sliced(vbs) => {
                let mut ins = Vec::new();
                let mut outs = Vec::new();
                for vb in vbs {
                    ins.push(Linear::new(get_checked(vb, &[3 * d, d], "in_proj_weight")?)?);
                    outs.push(Linear::new(get_checked(&vb.pp("out_proj"), &[d, d], "weight")?)?);
                }
                (PerStep::per_step(ins), PerStep::per_step(outs))
            }
        };
        Ok(Self { in_proj, out_proj, num_heads, head_dim: d_model / num_heads, rope })
    }

    /// `x` [B, T, d] at positions `ctx.offset ..`. `ctx.capacity` None: a whole sequence,
    /// every key kept, `cache` untouched. Some(c): a streaming step through the ring cache.
    ///
    /// Rows with a start (see `StepCtx::starts`) see only keys at positions ≥ their start and are
    /// rotated as if their stream began at 0 (RoPE at p − s), so a conversation that joins a
    /// running batch computes what it would alone.
    pub fn forward(&self, x: &Tensor, ctx: &StepCtx, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let (h, dh) = (self.num_heads, self.head_dim);
        let offset = ctx.offset;
        let scale = 1.0 / (dh as f64).sqrt();
        let qkv = self.in_proj.apply(x, offset, |l, x| Ok(l.forward(x)?))?;
        #[cfg(feature = "cuda")]
        if let (Some(cap), Some(starts), true) = (ctx.capacity, &ctx.starts_dev, t == 1 && x.dtype() == DType::BF16) {
            if matches!(dh, 64 | 128) {
                // One query per row on the GPU: our kernels split and rotate q, k, v and write
                // the ring slot (one launch), then attend over the ring in place (two).
                cache.prepare(b, h, dh, offset, cap, DType::BF16, ctx.kind, x.device())?;
                let rope = match (self.rope, &ctx.rope) {
                    (false, _) => None,
                    (true, Some(r)) => Some(r),
                    (true, None) => return Err(EngineError::Streaming("RoPE tables missing".into())),
                };
                let view = cache.ring_view().ok_or_else(|| EngineError::Streaming("KV ring missing".into()))?;
                let q = super::cuda::qkv_rope_write(&qkv, h, rope, &view, offset % cap)?;
                cache.written = offset + 1;
                let view = cache.ring_view().ok_or_else(|| EngineError::Streaming("KV ring missing".into()))?;
                let y = super::cuda::decode_attention(&q, &view, starts, scale as f32)?;
                // [B, H, 1, Dh] has the memory order of [B, 1, H·Dh].
                return self.out_proj.apply(&y.reshape((b, 1, d))?, offset, |l, y| Ok(l.forward(y)?));
            }
        }
        // "b t (p h d) -> p b h t d"
        let qkv = qkv.reshape((b, t, 3, h, dh))?.permute((2, 0, 3, 1, 4))?;
        let mut q = qkv.get(0)?.contiguous()?;
        let mut k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        if self.rope {
            let (cos, sin) = ctx.rope.as_ref().ok_or_else(|| EngineError::Streaming("RoPE tables missing".into()))?;
            q = super::rope::rotate(&q, cos, sin)?;
            k = super::rope::rotate(&k, cos, sin)?;
        }
        let (k, v) = match ctx.capacity {
            Some(cap) => {
                cache.append(&k, &v, offset, cap, ctx.kind)?;
                cache.filled(q.dtype())?
            }
            None => (k, v),
        };
        // Candle's CPU bf16 matmul allocates and widens on every call (≈ 20% of a bf16 LM step
        // in `perf`); on the CPU the attention products run in f32 instead.
        let dtype = q.dtype();
        let (q, k, v) = if x.device().is_cpu() && dtype != DType::F32 {
            (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?)
        } else {
            (q, k, v)
        };
        let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
        let scores = match &ctx.mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let y = probs.matmul(&v)?.to_dtype(dtype)?; // [B, H, T, Dh]
        let y = y.transpose(1, 2)?.reshape((b, t, d))?;
        self.out_proj.apply(&y, offset, |l, y| Ok(l.forward(y)?))
    }
}

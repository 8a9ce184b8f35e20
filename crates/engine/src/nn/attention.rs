//! Causal multi-head self-attention with a fused QKV projection, rotary embeddings and a KV
//! cache that keeps the last `context` steps, as `StreamingMultiheadAttention` with its
//! `RingKVCache` in the reference.
//!
//! Semantics kept from the reference: a query at position p sees key positions q with
//! 0 ≤ p − q < context. In streaming, the new keys of a call are written into the cache
//! *before* attending, and the cache holds only `context` steps, so once a stream is longer
//! than the context, the first queries of a multi-step chunk lose the oldest keys (the reference
//! does the same; batch and streaming then differ, which is why fixtures stay shorter).

use candle_core::{DType, Device, Module, Tensor};

use super::per_step::{PerStep, StepLayout};
use super::rope::Rope;
use super::Linear;
use crate::error::{EngineError, Result};
use crate::weights::get_checked;

/// Keys and values of one layer for one stream: a ring of `capacity` slots, allocated once at
/// the first step ([B, H, capacity, Dh] each) and written in place; position p lives in slot
/// p mod capacity, as in the reference's `RingKVCache`.
#[derive(Debug, Default)]
pub struct KvCache {
    ring: Option<(Tensor, Tensor)>,
    /// Positions written so far (the next position to write).
    written: usize,
}

impl Clone for KvCache {
    /// A deep copy: the ring is written in place, so clones must not share its storage.
    fn clone(&self) -> Self {
        let ring = self.ring.as_ref().map(|(k, v)| (k.copy().expect("copy k"), v.copy().expect("copy v")));
        Self { ring, written: self.written }
    }
}

impl KvCache {
    /// Number of cached steps.
    pub fn len(&self) -> usize {
        match &self.ring {
            Some((k, _)) => self.written.min(k.dim(2).unwrap_or(0)),
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Move the write position back by `steps` (see `TransformerState::rewind`).
    pub fn rewind(&mut self, steps: usize) {
        self.written = self.written.saturating_sub(steps);
    }

    /// Write `k`, `v` [B, H, T, Dh] for positions `offset .. offset + T` and return the filled
    /// part of the ring with the position held by each slot.
    fn append(&mut self, k: &Tensor, v: &Tensor, offset: usize, capacity: usize) -> Result<(Tensor, Tensor, Vec<i64>)> {
        let (b, h, t, dh) = k.dims4()?;
        if offset != self.written {
            return Err(EngineError::Streaming(format!(
                "KV cache holds {} positions but the step starts at {offset}",
                self.written
            )));
        }
        if let Some((rk, _)) = &self.ring {
            if rk.dim(0)? != b {
                return Err(EngineError::Streaming(format!(
                    "batch size changed mid-stream ({} then {b}); reset the state first",
                    rk.dim(0)?
                )));
            }
        }
        let (rk, rv) = match &self.ring {
            Some(r) => r.clone(),
            None => {
                let z = Tensor::zeros((b, h, capacity, dh), k.dtype(), k.device())?;
                let r = (z.clone(), z.copy()?);
                self.ring = Some(r.clone());
                r
            }
        };
        // Only the last `capacity` positions of the chunk can survive the writes.
        let skip = t.saturating_sub(capacity);
        let mut pos = offset + skip;
        let mut i = skip;
        while i < t {
            let slot = pos % capacity;
            let n = (capacity - slot).min(t - i);
            rk.slice_set(&k.narrow(2, i, n)?.contiguous()?, 2, slot)?;
            rv.slice_set(&v.narrow(2, i, n)?.contiguous()?, 2, slot)?;
            i += n;
            pos += n;
        }
        self.written = offset + t;
        let filled = self.written.min(capacity);
        let last = self.written as i64 - 1;
        let cap = capacity as i64;
        let positions = (0..filled as i64).map(|s| last - (last - s).rem_euclid(cap)).collect();
        Ok((rk.narrow(2, 0, filled)?, rv.narrow(2, 0, filled)?, positions))
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
    context: usize,
    rope: Option<Rope>,
}

fn stacked_rows(vb: &candle_nn::VarBuilder, name: &str, steps: usize, rows: usize, cols: usize) -> Result<PerStep<Linear>> {
    let w = get_checked(vb, &[steps * rows, cols], name)?;
    Ok(PerStep::per_step((0..steps).map(|s| Linear::new(w.narrow(0, s * rows, rows)?)).collect::<candle_core::Result<_>>()?))
}

impl Attention {
    /// `layout` points at the `self_attn` module.
    pub fn new(d_model: usize, num_heads: usize, context: usize, rope: Option<Rope>, layout: &StepLayout) -> Result<Self> {
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
        Ok(Self { in_proj, out_proj, num_heads, head_dim: d_model / num_heads, context, rope })
    }

    /// `x` [B, T, d] at positions `offset ..`. `capacity` None: a whole sequence, every key
    /// kept, `cache` untouched. Some(c): a streaming step through the ring cache of `c` slots.
    ///
    /// `starts` (empty, or one per batch row): the position at which each row's stream began.
    /// A row that began at s sees only keys at positions ≥ s and is rotated as if its stream
    /// began at 0 (RoPE at p − s), so a conversation that joins a running batch computes what
    /// it would alone.
    pub fn forward(
        &self,
        x: &Tensor,
        offset: usize,
        cache: &mut KvCache,
        capacity: Option<usize>,
        starts: &[usize],
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let (h, dh) = (self.num_heads, self.head_dim);
        // "b t (p h d) -> p b h t d"
        let qkv = self.in_proj.apply(x, offset, |l, x| Ok(l.forward(x)?))?;
        let qkv = qkv.reshape((b, t, 3, h, dh))?.permute((2, 0, 3, 1, 4))?;
        let mut q = qkv.get(0)?.contiguous()?;
        let mut k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let per_row = starts.iter().any(|&s| s > 0);
        if per_row && starts.len() != b {
            return Err(EngineError::Streaming(format!("{} row starts for a batch of {b}", starts.len())));
        }
        if let Some(rope) = &self.rope {
            if per_row {
                let offsets: Vec<usize> = starts.iter().map(|&s| offset.saturating_sub(s)).collect();
                q = rope.apply_rows(&q, &offsets)?;
                k = rope.apply_rows(&k, &offsets)?;
            } else {
                q = rope.apply(&q, offset)?;
                k = rope.apply(&k, offset)?;
            }
        }
        let (k, v, key_pos) = match capacity {
            Some(cap) => cache.append(&k, &v, offset, cap)?,
            None => (k, v, (offset..offset + t).map(|p| p as i64).collect()),
        };
        let mask = if per_row {
            self.row_mask(offset, t, &key_pos, starts, x.device())?
        } else {
            self.mask(offset, t, &key_pos, x.device())?
        };
        // Candle's CPU bf16 matmul allocates and widens on every call (≈ 20% of a bf16 LM step
        // in `perf`); on the CPU the attention products run in f32 instead.
        let dtype = q.dtype();
        let (q, k, v) = if x.device().is_cpu() && dtype != DType::F32 {
            (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?)
        } else {
            (q, k, v)
        };
        let scale = 1.0 / (dh as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = scores.to_dtype(DType::F32)?.broadcast_add(&mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let y = probs.matmul(&v)?.to_dtype(dtype)?; // [B, H, T, Dh]
        let y = y.transpose(1, 2)?.reshape((b, t, d))?;
        self.out_proj.apply(&y, offset, |l, y| Ok(l.forward(y)?))
    }

    /// Additive mask [T, S]: 0 where the key at position `key_pos[j]` may be seen from query
    /// position q (0 ≤ q − k < context), −∞ elsewhere.
    fn mask(&self, q0: usize, t: usize, key_pos: &[i64], device: &Device) -> Result<Tensor> {
        let s = key_pos.len();
        let mut m = Vec::with_capacity(t * s);
        for i in 0..t {
            let qp = (q0 + i) as i64;
            for &kp in key_pos {
                let delta = qp - kp;
                let ok = delta >= 0 && delta < self.context as i64;
                m.push(if ok { 0f32 } else { f32::NEG_INFINITY });
            }
        }
        Ok(Tensor::from_vec(m, (t, s), device)?)
    }

    /// As `mask`, per batch row, also hiding keys older than the row's start: [B, 1, T, S].
    fn row_mask(&self, q0: usize, t: usize, key_pos: &[i64], starts: &[usize], device: &Device) -> Result<Tensor> {
        let s = key_pos.len();
        let mut m = Vec::with_capacity(starts.len() * t * s);
        for &start in starts {
            for i in 0..t {
                let qp = (q0 + i) as i64;
                for &kp in key_pos {
                    let delta = qp - kp;
                    let ok = delta >= 0 && delta < self.context as i64 && kp >= start as i64;
                    m.push(if ok { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        Ok(Tensor::from_vec(m, (starts.len(), 1, t, s), device)?)
    }
}

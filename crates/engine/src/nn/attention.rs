//! Causal multi-head self-attention with a fused QKV projection, rotary embeddings and a KV
//! cache that keeps the last `context` steps, as `StreamingMultiheadAttention` with its
//! `RingKVCache` in the reference.
//!
//! Semantics kept from the reference: a query at position p sees key positions q with
//! 0 ≤ p − q < context. In streaming, the new keys of a call are written into the cache
//! *before* attending, and the cache holds only `context` steps, so once a stream is longer
//! than the context, the first queries of a multi-step chunk lose the oldest keys (the reference
//! does the same; batch and streaming then differ, which is why fixtures stay shorter).

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use super::{linear_no_bias, Linear};
use super::rope::Rope;
use crate::error::{EngineError, Result};
use crate::weights::get_checked;

/// Keys and values seen so far, [B, H, S, Dh] each, S ≤ capacity when it has one.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    kv: Option<(Tensor, Tensor)>,
}

impl KvCache {
    /// Number of cached steps.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map(|(k, _)| k.dim(2).unwrap_or(0)).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append `k`, `v` and return everything to attend to, keeping at most `capacity` steps.
    fn append(&mut self, k: Tensor, v: Tensor, capacity: Option<usize>) -> Result<(Tensor, Tensor)> {
        let (k, v) = match self.kv.take() {
            None => (k, v),
            Some((pk, pv)) => {
                if pk.dim(0)? != k.dim(0)? {
                    return Err(EngineError::Streaming(format!(
                        "batch size changed mid-stream ({} then {}); reset the state first",
                        pk.dim(0)?,
                        k.dim(0)?
                    )));
                }
                (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?)
            }
        };
        let (k, v) = match capacity {
            Some(cap) if k.dim(2)? > cap => {
                let s = k.dim(2)?;
                (k.narrow(2, s - cap, cap)?.contiguous()?, v.narrow(2, s - cap, cap)?.contiguous()?)
            }
            _ => (k, v),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// Self-attention with checkpoint names `in_proj_weight` [3·d, d] and `out_proj.weight` [d, d].
#[derive(Debug, Clone)]
pub struct Attention {
    in_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    context: usize,
    rope: Option<Rope>,
}

impl Attention {
    pub fn new(d_model: usize, num_heads: usize, context: usize, rope: Option<Rope>, vb: VarBuilder) -> Result<Self> {
        let in_w = get_checked(&vb, &[3 * d_model, d_model], "in_proj_weight")?;
        let out_proj = linear_no_bias(d_model, d_model, &vb.pp("out_proj"))?;
        Ok(Self {
            in_proj: Linear::new(in_w)?,
            out_proj,
            num_heads,
            head_dim: d_model / num_heads,
            context,
            rope,
        })
    }

    /// `x` [B, T, d] at positions `offset ..`; `capacity` None keeps every key (batch).
    pub fn forward(&self, x: &Tensor, offset: usize, cache: &mut KvCache, capacity: Option<usize>) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let (h, dh) = (self.num_heads, self.head_dim);
        // "b t (p h d) -> p b h t d"
        let qkv = self.in_proj.forward(x)?.reshape((b, t, 3, h, dh))?.permute((2, 0, 3, 1, 4))?;
        let mut q = qkv.get(0)?.contiguous()?;
        let mut k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        if let Some(rope) = &self.rope {
            q = rope.apply(&q, offset)?;
            k = rope.apply(&k, offset)?;
        }
        let (k, v) = cache.append(k, v, capacity)?;
        let s = k.dim(2)?;
        let end = offset + t;
        let first_key = end - s;
        let mask = self.mask(offset, t, first_key, s, x.device())?;
        let scale = 1.0 / (dh as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = scores.to_dtype(DType::F32)?.broadcast_add(&mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let y = probs.matmul(&v)?; // [B, H, T, Dh]
        let y = y.transpose(1, 2)?.reshape((b, t, d))?;
        Ok(self.out_proj.forward(&y)?)
    }

    /// Additive mask [T, S]: 0 where key position k may be seen from query position q
    /// (0 ≤ q − k < context), −∞ elsewhere.
    fn mask(&self, q0: usize, t: usize, k0: usize, s: usize, device: &candle_core::Device) -> Result<Tensor> {
        let mut m = Vec::with_capacity(t * s);
        for i in 0..t {
            let qp = (q0 + i) as i64;
            for j in 0..s {
                let delta = qp - (k0 + j) as i64;
                let ok = delta >= 0 && delta < self.context as i64;
                m.push(if ok { 0f32 } else { f32::NEG_INFINITY });
            }
        }
        Ok(Tensor::from_vec(m, (t, s), device)?)
    }
}

//! The attention of one call, from the fused QKV projection to the heads' outputs, in the two
//! forms the seam chooses between (`exec::attention`): Candle's ops on any device, and (feature
//! `cuda`) our kernels for a one-step streaming call.
//!
//! Semantics kept from the reference: a query at position p sees key positions q with
//! 0 ≤ p − q < context. In streaming, the new keys of a call are written into the cache
//! *before* attending, and the cache holds only `context` steps, so once a stream is longer
//! than the context, the first queries of a multi-step chunk lose the oldest keys (the reference
//! does the same; batch and streaming then differ, which is why fixtures stay shorter).

use candle_core::{DType, Tensor};

use super::kv_cache::KvCache;
use super::step_ctx::StepCtx;
use crate::error::{EngineError, Result};

fn rope_tables(rope: bool, ctx: &StepCtx) -> Result<Option<&(Tensor, Tensor)>> {
    match (rope, &ctx.rope) {
        (false, _) => Ok(None),
        (true, Some(r)) => Ok(Some(r)),
        (true, None) => Err(EngineError::Streaming("RoPE tables missing".into())),
    }
}

/// Candle's ops: split, rotate, write the ring (streaming; in the fixed layout by a scatter, then
/// over the whole ring) or keep every key (whole sequence),
/// scores, mask, softmax in f32, values. `f32_products`: compute q·kᵀ and p·v in f32 whatever
/// the model dtype. qkv [B, T, 3·H·Dh] → [B, T, H·Dh].
pub(super) fn generic(qkv: &Tensor, heads: usize, rope: bool, ctx: &StepCtx, cache: &mut KvCache, f32_products: bool) -> Result<Tensor> {
    let (b, t, three_d) = qkv.dims3()?;
    let (h, d) = (heads, three_d / 3);
    let dh = d / h;
    let scale = 1.0 / (dh as f64).sqrt();
    // "b t (p h d) -> p b h t d"
    let qkv = qkv.reshape((b, t, 3, h, dh))?.permute((2, 0, 3, 1, 4))?;
    let mut q = qkv.get(0)?.contiguous()?;
    let mut k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    if let Some((cos, sin)) = rope_tables(rope, ctx)? {
        q = crate::nn::rope::rotate(&q, cos, sin)?;
        k = crate::nn::rope::rotate(&k, cos, sin)?;
    }
    let (k, v) = match (ctx.capacity, &ctx.slots) {
        // The fixed layout: a scatter at the slots held on the device, then the whole ring.
        (Some(cap), Some(slots)) => {
            cache.write_slots(&k, &v, slots, ctx.offset, cap)?;
            cache.whole()?
        }
        (Some(cap), None) => {
            cache.append(&k, &v, ctx.offset, cap)?;
            cache.filled(q.dtype())?
        }
        (None, _) => (k, v),
    };
    let dtype = q.dtype();
    let (q, k, v) = if f32_products && dtype != DType::F32 {
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
    Ok(y.transpose(1, 2)?.reshape((b, t, d))?)
}

/// One query per row on the GPU (bf16, T = 1, a streaming call with `ctx.fused`): our kernels
/// split and rotate q, k, v and write the ring slot (one launch), then attend over the ring in
/// place (two). Positions are read on the device (`fused.pos`), so the launches are the same at
/// every step (a CUDA graph replays them). qkv [B, 1, 3·H·Dh] → [B, 1, H·Dh].
#[cfg(feature = "cuda")]
pub(super) fn cuda_decode(
    qkv: &Tensor,
    heads: usize,
    rope: bool,
    ctx: &StepCtx,
    cache: &mut KvCache,
    cap: usize,
    fused: &super::step_ctx::FusedInputs,
) -> Result<Tensor> {
    let (b, _t, three_d) = qkv.dims3()?;
    let d = three_d / 3;
    let dh = d / heads;
    let offset = ctx.offset;
    cache.prepare(b, heads, dh, offset, cap, DType::BF16, qkv.device())?;
    let tables = rope_tables(rope, ctx)?;
    let view = cache.ring_view().ok_or_else(|| EngineError::Streaming("KV ring missing".into()))?;
    let q = super::cuda::qkv_rope_write(qkv, heads, tables, &view, &fused.pos)?;
    let y = super::cuda::decode_attention(&q, &view, &fused.starts, &fused.pos, (1.0 / (dh as f64).sqrt()) as f32)?;
    cache.written = offset + 1;
    // [B, H, 1, Dh] has the memory order of [B, 1, H·Dh].
    Ok(y.reshape((b, 1, d))?)
}

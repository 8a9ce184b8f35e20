//! Causal multi-head self-attention with a fused QKV projection and rotary embeddings, as
//! `StreamingMultiheadAttention` in the reference: the weights live here; the attention itself
//! (the KV cache, the per-call context, Candle's ops or our CUDA kernels) is the seam's
//! (`exec::attention`, `exec::KvCache`, `exec::StepCtx`).

use super::per_step::{PerStep, StepLayout};
use super::Linear;
use crate::error::Result;
use crate::exec::{KvCache, StepCtx};
use crate::weights::Weights;
use candle_core::{Module, Tensor};

/// Self-attention with checkpoint names `in_proj_weight` [3·d, d] and `out_proj.weight` [d, d],
/// or per step (see [`StepLayout`]).
#[derive(Debug, Clone)]
pub struct Attention {
    in_proj: PerStep<Linear>,
    out_proj: PerStep<Linear>,
    num_heads: usize,
    rope: bool,
}

fn stacked_rows(vb: &Weights, name: &str, steps: usize, rows: usize, cols: usize) -> Result<PerStep<Linear>> {
    let w = vb.linear_source(&[steps * rows, cols], name)?;
    Ok(PerStep::per_step((0..steps).map(|s| vb.linear_of(&w.narrow(0, s * rows, rows)?)).collect::<Result<_>>()?))
}

impl Attention {
    /// `layout` points at the `self_attn` module.
    /// `rope`: whether queries and keys are rotated (with the tables of the call's `StepCtx`).
    pub fn new(d_model: usize, num_heads: usize, rope: bool, layout: &StepLayout) -> Result<Self> {
        let d = d_model;
        let (in_proj, out_proj) = match layout {
            StepLayout::Shared(vb) => (
                PerStep::shared(vb.linear([3 * d, d], "in_proj_weight")?),
                PerStep::shared(vb.pp("out_proj").linear([d, d], "weight")?),
            ),
            StepLayout::Stacked(vb, steps) => (
                stacked_rows(vb, "in_proj_weight", *steps, 3 * d, d)?,
                stacked_rows(&vb.pp("out_proj"), "weight", *steps, d, d)?,
            ),
            StepLayout::Sliced(vbs) => {
                let mut ins = Vec::new();
                let mut outs = Vec::new();
                for vb in vbs {
                    ins.push(vb.linear([3 * d, d], "in_proj_weight")?);
                    outs.push(vb.pp("out_proj").linear([d, d], "weight")?);
                }
                (PerStep::per_step(ins), PerStep::per_step(outs))
            }
        };
        Ok(Self { in_proj, out_proj, num_heads, rope })
    }

    /// Bytes of the projections' weights.
    pub fn weight_bytes(&self) -> usize {
        self.in_proj.items().iter().chain(self.out_proj.items()).map(Linear::bytes).sum()
    }

    /// Per-step weights shared as `schedule` says (see `PerStep::scheduled`).
    pub fn scheduled(mut self, schedule: Option<&[usize]>) -> Result<Self> {
        self.in_proj = self.in_proj.scheduled(schedule)?;
        self.out_proj = self.out_proj.scheduled(schedule)?;
        Ok(self)
    }

    /// `x` [B, T, d] at positions `ctx.offset ..`. `ctx.capacity` None: a whole sequence,
    /// every key kept, `cache` untouched. Some(c): a streaming step through the ring cache.
    ///
    /// Rows with a start (see `StepCtx::starts`) see only keys at positions ≥ their start and are
    /// rotated as if their stream began at 0 (RoPE at p − s), so a conversation that joins a
    /// running batch computes what it would alone.
    pub fn forward(&self, x: &Tensor, ctx: &StepCtx, cache: &mut KvCache) -> Result<Tensor> {
        let offset = ctx.offset;
        let qkv = self.in_proj.apply(x, offset, |l, x| Ok(l.forward(x)?))?;
        let y = crate::exec::attention(&qkv, self.num_heads, self.rope, ctx, cache)?;
        self.out_proj.apply(&y, offset, |l, y| Ok(l.forward(y)?))
    }
}

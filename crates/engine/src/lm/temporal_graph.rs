//! The temporal half of a frame on the GPU as one CUDA graph: the 32 layers of the temporal
//! transformer (≈ 14 launches each: norms, products, our fused QKV/RoPE/ring-write and decode
//! attention kernels), `out_norm` and the text head, recorded once per conversation and shape
//! and replayed each frame (`RunOptions::cuda_graphs`, see `exec::graph`).
//!
//! What changes per frame reaches the graph through buffers it reads, written in place before
//! each replay: the step's input embedding, and the step context's device tensors (the position,
//! the rows' starts, the RoPE tables: `StepCtx::refill`). The attention kernels read the position
//! on the device and launch one chunk per 256 slots of the whole ring, so the recorded launches
//! are right at every position. The KV rings are written in place by the replays; the graph
//! holds their addresses, so it is replayed only while the state's rings are the tensors it was
//! recorded with (`TransformerState::ring_fingerprint`: a splice that replaced them, or a new
//! batch, makes a new graph). The host's bookkeeping (positions written) advances as an eager
//! step's would.
//!
//! As for the depformer's graph (`frame_graph`), a graph is made in two frames: the first runs the
//! step eagerly on the new buffers with Candle's capture cache on, the second records it and
//! replays it. Only a step the fused decode kernel runs is graphed (bf16, heads of 64 or 128, no
//! sinusoidal embedding); other steps, and every step with graphs off, run eagerly. Should
//! recording fail, the conversation goes on eagerly and says why once.

use candle_core::{Tensor, TensorId};

use super::frame_graph::GraphState;
use super::temporal::{Temporal, TemporalOut};
use crate::error::Result;
use crate::exec::graph::{self, Captured};
use crate::exec::StepCtx;
use crate::nn::transformer::TransformerState;

/// A conversation's temporal graph and the buffers it reads.
pub struct TemporalGraph {
    /// Declared before the inputs: the graph goes first, then what it read.
    captured: Option<Captured<TemporalOut>>,
    failed: Option<String>,
    /// [B, 1, dim]: the step's input embedding.
    x: Tensor,
    /// The step context whose device tensors the graph reads.
    ctx: StepCtx,
    /// The rings the graph was made for.
    rings: Vec<TensorId>,
}

impl TemporalGraph {
    pub fn state(&self) -> GraphState {
        GraphState::of(self.captured.is_some(), self.failed.as_ref())
    }

    fn fits(&self, x: &Tensor, ctx: &StepCtx, rings: &[TensorId]) -> bool {
        self.x.dims() == x.dims() && self.x.dtype() == x.dtype() && self.ctx.same_layout(ctx) && self.rings == rings
    }
}

fn copies(o: &TemporalOut) -> Result<TemporalOut> {
    Ok(TemporalOut { hidden: o.hidden.copy()?, out: o.out.copy()?, text_logits: o.text_logits.copy()? })
}

impl Temporal {
    /// One streaming step from the input embedding `x` [B, 1, dim] through the conversation's
    /// graph `slot` (made, warmed, recorded or replayed as the module docs say), or eagerly where
    /// the step cannot be graphed. The same result as `step_embedded`.
    pub fn step_graphed(&self, x: &Tensor, state: &mut TransformerState, slot: &mut Option<TemporalGraph>) -> Result<TemporalOut> {
        let tr = self.transformer();
        let fresh = tr.step_ctx(x, state)?;
        // The first step of a state allocates its rings: eagerly, before any graph.
        let rings = match state.ring_fingerprint() {
            Some(r) if tr.graphable(&fresh) => r,
            _ => {
                *slot = None;
                return self.head(tr.step_with_ctx(x, state, &fresh)?);
            }
        };
        let device = x.device().clone();
        if !matches!(slot, Some(g) if g.fits(x, &fresh, &rings)) {
            *slot = None; // a graph of another shape goes before new buffers are made
            let g = TemporalGraph { captured: None, failed: None, x: x.contiguous()?.copy()?, ctx: fresh.deep_copy()?, rings };
            let out = graph::warm(&device, || self.head(tr.step_with_ctx(&g.x, state, &g.ctx)?))?;
            *slot = Some(g);
            return Ok(out);
        }
        let g = slot.as_mut().expect("matched above");
        if g.failed.is_some() {
            // Recording failed for this shape: eager, with the reason kept in `state()`.
            return self.head(tr.step_with_ctx(x, state, &fresh)?);
        }
        g.x.slice_set(&x.contiguous()?, 0, 0)?;
        g.ctx.refill(&fresh)?;
        if g.captured.is_none() {
            // The capture records the launches without running them; the host's bookkeeping
            // (the caches' write positions) advances as it goes, for the replay just below.
            let before = state.offset();
            match graph::capture(&device, || self.head(tr.step_with_ctx(&g.x, state, &g.ctx)?)) {
                Ok(c) => g.captured = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "recording the temporal step's CUDA graph failed; this conversation runs it eagerly");
                    g.failed = Some(e.to_string());
                    state.rewind_to(before);
                    return self.head(tr.step_with_ctx(x, state, &fresh)?);
                }
            }
        } else {
            state.skip(1);
        }
        let c = g.captured.as_ref().expect("recorded above");
        c.replay()?;
        // The graph rewrites its outputs at the next replay: the caller gets copies.
        copies(&c.outputs)
    }
}

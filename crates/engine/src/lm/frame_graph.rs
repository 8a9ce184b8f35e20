//! The sampling half of a frame on the device: the text token sampled from the temporal
//! output's logits, then the depformer's steps, each sampling its codebook from its logits and
//! feeding the token to the next step, with no host round trip (`exec::sampler`). It runs
//! eagerly, or (`RunOptions::cuda_graphs`, see `exec::graph`) as one CUDA graph recorded once
//! per conversation and shape and replayed each frame: 8 × (6 layers + sampling) ≈ 400 launches
//! become one. Its per-frame inputs (the temporal output, the text logits, the frame's sampling
//! settings and noise) are written in place into buffers the graph reads.
//!
//! A graph is made in two frames: the first runs the chain eagerly on fresh input buffers with
//! Candle's capture cache on (the warm-up `exec::graph::capture` needs), the second records it
//! and replays it, as does every frame after. A new shape (batch, noise strides, dtype) starts
//! over. Should recording fail, the conversation goes on eagerly and says why once (tracing
//! and [`GraphState::Failed`]).

use candle_core::Tensor;

use super::model::LmModel;
use crate::error::Result;
use crate::exec::graph::{self, Captured};
use crate::exec::{FrameSampler, FrameTokens, SampleCallPlan};
use crate::nn::transformer::TransformerState;

/// Where a conversation's depformer graph stands (`LmGenState::graph_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphState {
    /// Graphs off, or no frame sampled on the device yet.
    Off,
    /// Inputs made and warmed up; recorded at the next frame of the same shape.
    Warm,
    /// Recorded; frames replay it.
    Replaying,
    /// Recording failed (the reason); frames run eagerly.
    Failed(String),
}

/// A conversation's depformer graph and the buffers it reads.
pub struct DepformerGraph {
    /// Declared before the inputs: the graph goes first, then what it read.
    captured: Option<Captured<Vec<Tensor>>>,
    failed: Option<String>,
    out: Tensor,
    text_logits: Tensor,
    sampler: FrameSampler,
}

impl GraphState {
    /// The state of a graph holder: recorded or not, and why recording failed, if it did.
    pub(crate) fn of(recorded: bool, failed: Option<&String>) -> Self {
        match (recorded, failed) {
            (_, Some(e)) => Self::Failed(e.clone()),
            (true, None) => Self::Replaying,
            (false, None) => Self::Warm,
        }
    }
}

impl DepformerGraph {
    pub fn state(&self) -> GraphState {
        GraphState::of(self.captured.is_some(), self.failed.as_ref())
    }

    fn fits(&self, out: &Tensor, text_logits: &Tensor, calls: &[SampleCallPlan]) -> bool {
        let same = |a: &Tensor, b: &Tensor| a.dims() == b.dims() && a.dtype() == b.dtype();
        same(&self.out, out) && same(&self.text_logits, text_logits) && self.sampler.fits(out.dims()[0], calls)
    }
}

fn fresh(t: &Tensor) -> Result<Tensor> {
    Ok(t.contiguous()?.copy()?)
}

impl LmModel {
    /// The chain (see the module docs) through `sampler`'s calls: call 0 the text token, call
    /// 1 + k depformer step k, for the model's own codebooks only (PersonaPlex's depformer also
    /// predicts the user's, which nothing keeps). Returns those steps' logits [B, 1, card] each.
    pub(super) fn depformer_chain(&self, out: &Tensor, text_logits: &Tensor, sampler: &FrameSampler) -> Result<Vec<Tensor>> {
        let dq = self.config().agent_streams();
        let mut prev = sampler.sample(text_logits, 0)?;
        // The depformer's cache is one frame deep: always in the model's dtype.
        let mut dstate = TransformerState::default();
        let mut logits = Vec::with_capacity(dq);
        for k in 0..dq {
            let l = self.depformer().step_shifted(k, out, &prev, &mut dstate)?;
            prev = sampler.sample(&l, 1 + k)?;
            logits.push(l);
        }
        Ok(logits)
    }

    /// The chain for one frame through the conversation's graph `slot` (made, warmed, recorded
    /// or replayed as the module docs say): the frame's tokens and the depformer's logits.
    pub(super) fn depformer_graphed(
        &self,
        slot: &mut Option<DepformerGraph>,
        out: &Tensor,
        text_logits: &Tensor,
        calls: &[SampleCallPlan],
    ) -> Result<(FrameTokens, Vec<Tensor>)> {
        let device = out.device().clone();
        let g = match slot {
            Some(g) if g.fits(out, text_logits, calls) => g,
            _ => {
                *slot = None; // a graph of another shape goes before new buffers are made
                let g = DepformerGraph {
                    captured: None,
                    failed: None,
                    out: fresh(out)?,
                    text_logits: fresh(text_logits)?,
                    sampler: FrameSampler::new(&device, out.dim(0)?, calls)?,
                };
                let logits = graph::warm(&device, || self.depformer_chain(&g.out, &g.text_logits, &g.sampler))?;
                let tokens = g.sampler.read()?;
                *slot = Some(g);
                return Ok((tokens, logits));
            }
        };
        g.out.slice_set(&out.contiguous()?, 0, 0)?;
        g.text_logits.slice_set(&text_logits.contiguous()?, 0, 0)?;
        g.sampler.update(calls)?;
        if g.captured.is_none() && g.failed.is_none() {
            match graph::capture(&device, || self.depformer_chain(&g.out, &g.text_logits, &g.sampler)) {
                Ok(c) => g.captured = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "recording the depformer's CUDA graph failed; this conversation runs it eagerly");
                    g.failed = Some(e.to_string());
                }
            }
        }
        let logits = match &g.captured {
            Some(c) => {
                c.replay()?;
                // The graph rewrites its outputs at the next replay: the caller gets copies.
                c.outputs.iter().map(|t| t.copy()).collect::<candle_core::Result<Vec<_>>>()?
            }
            None => graph::warm(&device, || self.depformer_chain(&g.out, &g.text_logits, &g.sampler))?,
        };
        Ok((g.sampler.read()?, logits))
    }
}

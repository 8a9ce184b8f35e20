//! Mimi's streaming encode and decode on the GPU as CUDA graphs (`exec::graph`): one graph for a
//! frame's encode (SEANet, transformer, downsampling, RVQ: ≈ 400 launches) and one for its decode,
//! recorded per stream batch and shape and replayed every frame.
//!
//! A streaming call reads what the state carries between calls (each conv's last inputs, each
//! transposed conv's overlap tail, the transformer's KV rings) and makes new tensors of it, which a
//! graph cannot: it holds the addresses it was recorded with. So a graphed stream keeps each
//! carried tensor in a buffer of its own (`CodecGraph::bufs`): the call reads the buffers, and at
//! its end copies each new carried tensor back into its buffer, the copy being part of the graph.
//! The transformer runs in the fixed layout (`exec::step_ctx`): its keys are written by a scatter at
//! slots held on the device and it attends over the whole ring under a mask, so that its launches
//! do not depend on the position; the position-dependent values (mask, slots, RoPE tables) are
//! written into the captured context before each replay (`StepCtx::refill`).
//!
//! As for the LM's graphs, a graph is made in two frames: the first runs the call eagerly on new
//! buffers with Candle's capture cache on, the second records it and replays it. Calls the graph
//! cannot take run eagerly, in the same fixed layout (so a graphed stream computes the same values
//! whichever way each call went): the first call of a stream (nothing carried yet), a call where a
//! row starts afresh (its padding is made on the host), and any call after recording failed. A call
//! of more transformer steps than the ring holds runs eagerly in the usual layout.
//! [`CodecGraphs::Emulate`] runs the graph path's buffers and layout eagerly on any device: what a
//! replay computes, checked by the CPU tests and by `verify model` against the replays.

use std::fmt;

use candle_core::{Device, Tensor, TensorId};

use crate::error::Result;
use crate::exec::graph::{self, Captured};
use crate::exec::StepCtx;
use crate::lm::GraphState;
use crate::nn::transformer::TransformerState;

/// How a stream's Mimi calls run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodecGraphs {
    /// Eagerly, in the transformer's usual layout (the CPU path, and `--cuda-graphs off`).
    #[default]
    Off,
    /// Recorded and replayed where `exec::graph` can capture (a CUDA build on a CUDA device);
    /// as `Off` elsewhere.
    On,
    /// The graph path's buffers and fixed layout, run eagerly on any device (tests, `verify`).
    Emulate,
}

impl CodecGraphs {
    /// What this choice means on `device`.
    pub(super) fn on(self, device: &Device) -> Self {
        match self {
            Self::On if !(cfg!(feature = "cuda") && device.is_cuda()) => Self::Off,
            m => m,
        }
    }
}

/// What a graphed stream's state gives the graph: its carried tensors and its transformer.
pub(super) trait Streamed {
    fn carried_mut(&mut self) -> Vec<&mut Option<Tensor>>;
    fn has_fresh_rows(&self) -> bool;
    fn transformer(&mut self) -> &mut TransformerState;
}

/// One streaming call offered to the graph.
pub(super) struct Call<'a> {
    /// The call's input (pcm for an encode, u32 codes for a decode), on the device.
    pub input: &'a Tensor,
    /// The transformer's fixed-layout context for this call (`Transformer::step_ctx_fixed`).
    pub fresh: StepCtx,
    /// The transformer steps the call takes.
    pub steps: usize,
    pub mode: CodecGraphs,
}

/// A stream's graph (of its encode or of its decode) and the buffers it reads.
pub struct CodecGraph {
    /// Declared before the buffers: the graph goes first, then what it read.
    captured: Option<Captured<Tensor>>,
    failed: Option<String>,
    input: Tensor,
    ctx: StepCtx,
    /// The carried tensors' buffers, in the state's order (None where it carries nothing).
    bufs: Vec<Option<Tensor>>,
    /// The KV rings the graph was made for.
    rings: Vec<TensorId>,
}

impl fmt::Debug for CodecGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodecGraph").field("state", &self.state()).field("input", &self.input.dims()).finish()
    }
}

impl CodecGraph {
    pub fn state(&self) -> GraphState {
        GraphState::of(self.captured.is_some(), self.failed.as_ref())
    }

    fn fits(&self, call: &Call, carried: &[&mut Option<Tensor>], rings: &[TensorId]) -> bool {
        let same = |a: &Tensor, b: &Tensor| a.dims() == b.dims() && a.dtype() == b.dtype();
        let bufs = self.bufs.len() == carried.len()
            && self.bufs.iter().zip(carried).all(|(b, c)| match (b, &**c) {
                (None, None) => true,
                (Some(b), Some(c)) => same(b, c),
                _ => false,
            });
        same(&self.input, call.input) && self.ctx.same_layout(&call.fresh) && self.rings == rings && bufs
    }
}

/// The state of a graph slot (`Off` with none).
pub(super) fn slot_state(slot: &Option<CodecGraph>, mode: CodecGraphs) -> GraphState {
    match slot {
        Some(g) if mode == CodecGraphs::On => g.state(),
        _ => GraphState::Off,
    }
}

/// Point every carried tensor at its buffer.
fn point_at(bufs: &[Option<Tensor>], carried: Vec<&mut Option<Tensor>>) {
    for (b, c) in bufs.iter().zip(carried) {
        if let Some(b) = b {
            *c = Some(b.clone());
        }
    }
}

/// Run `body` on the graph's input and context, then copy each new carried tensor into its buffer
/// (what the graph records).
fn with_copy_back<S: Streamed>(g: &CodecGraph, state: &mut S, body: &dyn Fn(&Tensor, &mut S, &StepCtx) -> Result<Tensor>) -> Result<Tensor> {
    let y = body(&g.input, state, &g.ctx)?;
    let carried = state.carried_mut();
    for (b, c) in g.bufs.iter().zip(&carried) {
        if let (Some(b), Some(c)) = (b, &**c) {
            b.slice_set(&c.contiguous()?, 0, 0)?;
        }
    }
    point_at(&g.bufs, carried);
    Ok(y)
}

/// One streaming call through the stream's graph `slot` (made, warmed, recorded or replayed as
/// the module docs say), or eagerly where the graph cannot take it; the same result as `body` on
/// `call.input` with `call.fresh`.
pub(super) fn run<S: Streamed>(
    slot: &mut Option<CodecGraph>,
    call: Call,
    state: &mut S,
    body: &dyn Fn(&Tensor, &mut S, &StepCtx) -> Result<Tensor>,
) -> Result<Tensor> {
    let rings = match state.transformer().ring_fingerprint() {
        Some(r) if !state.has_fresh_rows() => r,
        _ => {
            *slot = None;
            return body(call.input, state, &call.fresh);
        }
    };
    let device = call.input.device().clone();
    if !matches!(slot, Some(g) if g.fits(&call, &state.carried_mut(), &rings)) {
        *slot = None; // a graph of another shape goes before new buffers are made
        let bufs = state.carried_mut().into_iter().map(|c| c.as_ref().map(|t| t.contiguous()?.copy()).transpose()).collect::<candle_core::Result<Vec<_>>>()?;
        point_at(&bufs, state.carried_mut());
        let g = CodecGraph { captured: None, failed: None, input: call.input.contiguous()?.copy()?, ctx: call.fresh.deep_copy()?, bufs, rings };
        let y = graph::warm(&device, || with_copy_back(&g, state, body))?;
        *slot = Some(g);
        return Ok(y);
    }
    let g = slot.as_mut().expect("matched above");
    if g.failed.is_some() {
        return body(call.input, state, &call.fresh);
    }
    // Bring the state into the buffers (an eager call since may have replaced them).
    for (b, c) in g.bufs.iter().zip(state.carried_mut()) {
        if let (Some(b), Some(t)) = (b, c.as_ref()) {
            if t.id() != b.id() {
                b.slice_set(&t.contiguous()?, 0, 0)?;
                *c = Some(b.clone());
            }
        }
    }
    g.input.slice_set(&call.input.contiguous()?, 0, 0)?;
    g.ctx.refill(&call.fresh)?;
    if call.mode == CodecGraphs::Emulate {
        return Ok(with_copy_back(g, state, body)?.copy()?);
    }
    if g.captured.is_none() {
        // The capture records without running; the host's bookkeeping advances as it goes.
        let before = state.transformer().offset();
        match graph::capture(&device, || with_copy_back(g, state, body)) {
            Ok(c) => g.captured = Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "recording a Mimi CUDA graph failed; this stream runs eagerly");
                g.failed = Some(e.to_string());
                state.transformer().rewind_to(before);
                point_at(&g.bufs, state.carried_mut());
                return body(call.input, state, &call.fresh);
            }
        }
    } else {
        state.transformer().skip(call.steps);
    }
    let c = g.captured.as_ref().expect("recorded above");
    c.replay()?;
    // The graph rewrites its output at the next replay: the caller gets a copy.
    Ok(c.outputs.copy()?)
}

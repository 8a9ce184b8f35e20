//! The `mimi graphs` group of `verify model`: Mimi streamed frame by frame on the device under test
//! through its CUDA graphs (`mimi::graph`), against the same stream run eagerly.
//!
//! Two rows (the test signal, and it reversed), row 1 starting a new stream half-way (a call that
//! runs eagerly and a graph made again after it), over more frames than the transformers' rings
//! hold, so that the rings wrap. Three runs of the same stream:
//! - `Emulate`: the graph path's buffers and fixed layout, eagerly: the replays must give the same
//!   codes and the same pcm bit for bit (a replay launches the kernels the eager call launched, on
//!   the same buffers; a difference is a recording or refill bug);
//! - `Off`: the usual eager layout: codes agree at the run's agreement bound and pcm within its
//!   relative tolerance (the fixed layout sums attention over the whole ring, in another order);
//! - both graphs must be replaying at the end (a run that fell back to eager execution fails).

use candle_core::{Device, Tensor};

use super::Check;
use crate::error::Result;
use crate::lm::GraphState;
use crate::mimi::{CodecGraphs, DecoderState, EncoderState, Mimi};

/// Codes [2, K, frames] and pcm [2, 1, frames · frame] of the stream in `mode`, with the graph
/// states at its end.
fn stream(mimi: &Mimi, pcm: &Tensor, frames: usize, mode: CodecGraphs) -> Result<(Tensor, Tensor, [GraphState; 2])> {
    let n = mimi.frame_size();
    let (mut es, mut ds) = (EncoderState::new(mode), DecoderState::new(mode));
    let (mut codes, mut out) = (Vec::with_capacity(frames), Vec::with_capacity(frames));
    for f in 0..frames {
        if f == frames / 2 {
            es.reset_row(1, 2);
            ds.reset_row(1, 2);
        }
        let c = mimi.encode_step(&pcm.narrow(2, f * n, n)?, &mut es)?;
        out.push(mimi.decode_step(&c, &mut ds)?.to_device(&Device::Cpu)?);
        codes.push(c.to_device(&Device::Cpu)?);
    }
    Ok((Tensor::cat(&codes, 2)?, Tensor::cat(&out, 2)?, [es.graph_state(), ds.graph_state()]))
}

/// The group's checks for `mimi` on its device, streaming `signal` (at least `frames` frames).
pub(super) fn run(mimi: &Mimi, signal: &[f32], frames: usize, rel: f64, agreement: f64) -> Result<Vec<Check>> {
    let g = "mimi graphs";
    let samples = frames * mimi.frame_size();
    let reversed: Vec<f32> = signal[..samples].iter().rev().copied().collect();
    let rows = [&signal[..samples], &reversed[..]].concat();
    let pcm = Tensor::from_vec(rows, (2, 1, samples), mimi.device())?;
    let (gc, gp, [enc, dec]) = stream(mimi, &pcm, frames, CodecGraphs::On)?;
    let (ec, ep, _) = stream(mimi, &pcm, frames, CodecGraphs::Emulate)?;
    let (oc, op, _) = stream(mimi, &pcm, frames, CodecGraphs::Off)?;
    let mut codes = Check::codes(g, &format!("graphs vs graph path eagerly, codes ({frames} frames, 2 rows)"), &gc, &ec)?;
    if enc != GraphState::Replaying || dec != GraphState::Replaying {
        codes.name = format!("{} (did not replay: encode {enc:?}, decode {dec:?})", codes.name);
        codes.ok = false;
    }
    let mut out = vec![codes, Check::float(g, "graphs vs graph path eagerly, pcm", &gp, &ep, 0.0)?];
    out.push(super::model::agreement(g, "graphs vs usual eager layout, codes (agreement)", &gc, &oc, agreement)?);
    out.push(Check::float_rel(g, "graphs vs usual eager layout, pcm", &gp, &op, rel)?);
    Ok(out)
}

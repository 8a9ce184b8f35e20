//! Mimi against the PyTorch reference, stage by stage, on the tiny reference-built model
//! (golden/mimi_tiny): codes exactly, floats within `F32_ABS_TOL`.

mod common;

use candle_core::Tensor;
use common::{tiny_mimi, Fixture, Report, F32_ABS_TOL};
use moshi_engine::mimi::{CodecGraphs, DecoderState, EncoderState, Mimi};

fn check_batch(mimi: &Mimi, fx: &Fixture, what: &str) {
    let enc = mimi.encode_stages(fx.get("input.pcm")).unwrap();
    let mut r = Report::default();
    r.float("seanet_latent", &enc.seanet_latent, fx.get("batch.seanet_latent"), F32_ABS_TOL);
    r.float("transformer_out", &enc.transformer_out, fx.get("batch.transformer_out"), F32_ABS_TOL);
    r.float("downsampled", &enc.downsampled, fx.get("batch.downsampled"), F32_ABS_TOL);
    r.codes("codes", &enc.codes, fx.get("batch.codes"));
    // Decode the reference's codes so a code mismatch above does not hide decoder errors.
    let dec = mimi.decode_stages(fx.get("batch.codes")).unwrap();
    r.float("quantized", &dec.quantized, fx.get("batch.quantized"), F32_ABS_TOL);
    r.float("upsampled", &dec.upsampled, fx.get("batch.upsampled"), F32_ABS_TOL);
    r.float("decoder_transformer_out", &dec.decoder_transformer_out, fx.get("batch.decoder_transformer_out"), F32_ABS_TOL);
    r.float("pcm", &dec.pcm, fx.get("batch.pcm"), F32_ABS_TOL);
    r.finish(what);
}

/// Stream the fixture's input through encode and decode in chunks of `frames` frames, in the
/// layout `graphs` implies, returning every stage concatenated over time.
fn stream(mimi: &Mimi, pcm: &Tensor, frames: usize, ref_codes: Option<&Tensor>, graphs: CodecGraphs) -> Vec<(String, Tensor)> {
    let fs = mimi.frame_size() * frames;
    let total = pcm.dim(2).unwrap();
    let (mut es, mut ds) = (EncoderState::new(graphs), DecoderState::new(graphs));
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); 8];
    let mut frame_off = 0;
    for start in (0..total).step_by(fs) {
        let chunk = pcm.narrow(2, start, fs).unwrap();
        let e = mimi.encode_step_stages(&chunk, &mut es).unwrap();
        let n = e.codes.dim(2).unwrap();
        // Decode the reference's codes when given, so that decoder parity is checked even if a
        // code differs.
        let codes = match ref_codes {
            Some(c) => c.narrow(2, frame_off, n).unwrap(),
            None => e.codes.clone(),
        };
        frame_off += n;
        let d = mimi.decode_step_stages(&codes, &mut ds).unwrap();
        for (i, t) in [e.seanet_latent, e.transformer_out, e.downsampled, e.codes, d.quantized, d.upsampled, d.decoder_transformer_out, d.pcm]
            .into_iter()
            .enumerate()
        {
            parts[i].push(t);
        }
    }
    let names = ["seanet_latent", "transformer_out", "downsampled", "codes", "quantized", "upsampled", "decoder_transformer_out", "pcm"];
    names.iter().zip(parts).map(|(n, p)| (n.to_string(), Tensor::cat(&p, 2).unwrap())).collect()
}

fn check_stream(mimi: &Mimi, fx: &Fixture, prefix: &str, frames: usize, what: &str) {
    check_stream_in(mimi, fx, prefix, frames, CodecGraphs::Off, what)
}

fn check_stream_in(mimi: &Mimi, fx: &Fixture, prefix: &str, frames: usize, graphs: CodecGraphs, what: &str) {
    let stages = stream(mimi, fx.get("input.pcm"), frames, Some(fx.get(&format!("{prefix}.codes"))), graphs);
    let mut r = Report::default();
    for (name, t) in &stages {
        let reference = fx.get(&format!("{prefix}.{name}"));
        if name == "codes" {
            r.codes(name, t, reference);
        } else {
            r.float(name, t, reference, F32_ABS_TOL);
        }
    }
    r.finish(what);
}

#[test]
fn batch_matches_reference() {
    check_batch(&tiny_mimi("mimi_tiny/config.json"), &Fixture::load("mimi_tiny/io.safetensors"), "tiny mimi, batch");
}

#[test]
fn streaming_frame_by_frame_matches_reference() {
    let fx = Fixture::load("mimi_tiny/io.safetensors");
    check_stream(&tiny_mimi("mimi_tiny/config.json"), &fx, "stream", 1, "tiny mimi, streaming 1920-sample chunks");
}

/// With a 5-step context the 12-step fixture wraps the ring KV cache: streaming and batch differ
/// (the reference's codes agree only 69% between them), and each must match its own reference.
#[test]
fn short_context_batch_and_streaming_match_reference() {
    let mimi = tiny_mimi("mimi_tiny/ctx5/config.json");
    let fx = Fixture::load("mimi_tiny/ctx5/io.safetensors");
    check_batch(&mimi, &fx, "tiny mimi ctx5, batch");
    check_stream(&mimi, &fx, "stream", 1, "tiny mimi ctx5, streaming");
}

/// Within the context, streaming in chunks of any whole number of frames equals batch.
#[test]
fn streaming_equals_batch_for_chunk_sizes() {
    let mimi = tiny_mimi("mimi_tiny/config.json");
    let fx = Fixture::load("mimi_tiny/io.safetensors");
    for frames in [1, 2, 3, 6] {
        check_stream(&mimi, &fx, "batch", frames, &format!("streaming {frames}-frame chunks vs reference batch"));
    }
}

/// A stream reset mid-way behaves exactly like a fresh stream.
#[test]
fn reset_mid_stream_equals_fresh_state() {
    let mimi = tiny_mimi("mimi_tiny/config.json");
    let fx = Fixture::load("mimi_tiny/io.safetensors");
    let pcm = fx.get("input.pcm");
    let fs = mimi.frame_size();
    let other = (pcm.narrow(0, 1, 1).unwrap().cat_like_batch(pcm.narrow(0, 0, 1).unwrap())).unwrap();
    let (mut es, mut ds) = (EncoderState::default(), DecoderState::default());
    // Run three frames of a different signal, then reset.
    for f in 0..3 {
        let c = mimi.encode_step(&other.narrow(2, f * fs, fs).unwrap(), &mut es).unwrap();
        mimi.decode_step(&c, &mut ds).unwrap();
    }
    es.reset();
    ds.reset();
    let (mut es2, mut ds2) = (EncoderState::default(), DecoderState::default());
    for f in 0..pcm.dim(2).unwrap() / fs {
        let chunk = pcm.narrow(2, f * fs, fs).unwrap();
        let (a, b) = (mimi.encode_step(&chunk, &mut es).unwrap(), mimi.encode_step(&chunk, &mut es2).unwrap());
        assert_eq!(common::codes_vec(&a), common::codes_vec(&b), "codes differ after reset at frame {f}");
        let (pa, pb) = (mimi.decode_step(&a, &mut ds).unwrap(), mimi.decode_step(&b, &mut ds2).unwrap());
        assert_eq!(common::max_abs_diff(&pa, &pb), 0.0, "pcm differs after reset at frame {f}");
    }
}

/// Stream `pcm` through `encode_step` and `decode_step` (the calls a CUDA graph takes) in chunks of
/// `frames` frames with `graphs`, decoding `ref_codes` where given, else the stream's own codes;
/// `reset_at`: (frame, row) where that row starts a new stream. Returns (codes, pcm) over time.
fn stream_io(mimi: &Mimi, pcm: &Tensor, frames: usize, ref_codes: Option<&Tensor>, graphs: CodecGraphs, reset_at: Option<(usize, usize)>) -> (Tensor, Tensor) {
    let (batch, fs) = (pcm.dim(0).unwrap(), mimi.frame_size());
    let (mut es, mut ds) = (EncoderState::new(graphs), DecoderState::new(graphs));
    let (mut codes, mut out) = (Vec::new(), Vec::new());
    let mut f = 0;
    while f * fs < pcm.dim(2).unwrap() {
        if let Some((at, row)) = reset_at {
            if (f..f + frames).contains(&at) {
                es.reset_row(row, batch);
                ds.reset_row(row, batch);
            }
        }
        let c = mimi.encode_step(&pcm.narrow(2, f * fs, frames * fs).unwrap(), &mut es).unwrap();
        let to_decode = ref_codes.map_or_else(|| c.clone(), |r| r.narrow(2, f, frames).unwrap());
        out.push(mimi.decode_step(&to_decode, &mut ds).unwrap());
        codes.push(c);
        f += frames;
    }
    (Tensor::cat(&codes, 2).unwrap(), Tensor::cat(&out, 2).unwrap())
}

/// The graph path (`CodecGraphs::Emulate`: the buffers a CUDA graph reads and writes, and the
/// transformer's fixed layout of whole-ring attention under a mask with keys scattered at slots),
/// run eagerly on the CPU, against the reference: codes exactly, every stage and the pcm within
/// `F32_ABS_TOL`, the bound eager streaming meets (the fixed layout changes only the order of the
/// attention's sums: masked keys add exact zeros). Covers whole-frame and multi-frame calls, and
/// with the 5-step context, a ring that wraps and calls of more steps than it holds (eager).
#[test]
fn graph_path_streaming_matches_reference() {
    let cases = [("mimi_tiny", "stream", 1), ("mimi_tiny", "batch", 2), ("mimi_tiny", "batch", 3), ("mimi_tiny", "batch", 6), ("mimi_tiny/ctx5", "stream", 1)];
    for (dir, prefix, frames) in cases {
        let mimi = tiny_mimi(&format!("{dir}/config.json"));
        let fx = Fixture::load(&format!("{dir}/io.safetensors"));
        let what = format!("{dir}, graph path, {frames}-frame calls vs reference {prefix}");
        check_stream_in(&mimi, &fx, prefix, frames, CodecGraphs::Emulate, &format!("{what} (stages)"));
        let (codes, pcm) = stream_io(&mimi, fx.get("input.pcm"), frames, Some(fx.get(&format!("{prefix}.codes"))), CodecGraphs::Emulate, None);
        let mut r = Report::default();
        r.codes("codes", &codes, fx.get(&format!("{prefix}.codes")));
        r.float("pcm", &pcm, fx.get(&format!("{prefix}.pcm")), F32_ABS_TOL);
        r.finish(&what);
    }
}

/// A row that starts a new stream mid-way (a conversation joining a batch) goes the same on the
/// graph path as eagerly: the call with the fresh row runs eagerly, the graph is remade after it.
/// Codes exactly; pcm within `F32_ABS_TOL` (summation order only, as above).
#[test]
fn graph_path_row_reset_matches_eager() {
    let mimi = tiny_mimi("mimi_tiny/ctx5/config.json");
    let pcm = Fixture::load("mimi_tiny/ctx5/io.safetensors").get("input.pcm").clone();
    let frames_total = pcm.dim(2).unwrap() / mimi.frame_size();
    // 3-frame calls take 6 steps: more than the 5-step ring, so they run eagerly in the usual layout.
    for frames in [1, 2, 3] {
        for (at, row) in [(2, 1), (frames_total - 2, 0)] {
            let (ce, pe) = stream_io(&mimi, &pcm, frames, None, CodecGraphs::Off, Some((at, row)));
            let (cg, pg) = stream_io(&mimi, &pcm, frames, None, CodecGraphs::Emulate, Some((at, row)));
            assert_eq!(common::codes_vec(&ce), common::codes_vec(&cg), "codes differ ({frames}-frame calls, row {row} reset at frame {at})");
            let nan = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().position(|v| v.is_nan());
            assert_eq!((nan(&pe), nan(&pg)), (None, None), "NaN in pcm (eager, graph path): {frames}-frame calls, row {row} reset at frame {at}");
            let d = common::max_abs_diff(&pe, &pg);
            assert!(d <= F32_ABS_TOL, "pcm differs by {d:e} ({frames}-frame calls, row {row} reset at frame {at})");
        }
    }
}

/// Asking for CUDA graphs where none can be made (the CPU) runs the usual eager path: the same
/// values bit for bit, and the graph state says Off.
#[test]
fn graphs_on_without_cuda_is_eager() {
    let mimi = tiny_mimi("mimi_tiny/config.json");
    let pcm = Fixture::load("mimi_tiny/io.safetensors").get("input.pcm").clone();
    let (ce, pe) = stream_io(&mimi, &pcm, 1, None, CodecGraphs::Off, None);
    let (cg, pg) = stream_io(&mimi, &pcm, 1, None, CodecGraphs::On, None);
    assert_eq!(common::codes_vec(&ce), common::codes_vec(&cg));
    assert_eq!(common::max_abs_diff(&pe, &pg), 0.0);
    let (mut es, mut ds) = (EncoderState::new(CodecGraphs::On), DecoderState::new(CodecGraphs::On));
    let c = mimi.encode_step(&pcm.narrow(2, 0, mimi.frame_size()).unwrap(), &mut es).unwrap();
    mimi.decode_step(&c, &mut ds).unwrap();
    assert_eq!(format!("{:?} {:?}", es.graph_state(), ds.graph_state()), "Off Off");
}

trait CatBatch {
    fn cat_like_batch(self, other: Tensor) -> candle_core::Result<Tensor>;
}

impl CatBatch for Tensor {
    fn cat_like_batch(self, other: Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(&[&self, &other], 0)
    }
}


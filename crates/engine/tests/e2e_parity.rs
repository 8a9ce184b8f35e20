//! The whole pipeline against the reference's own offline pipeline (golden/moshi_tiny, see
//! golden/README.md): a tiny Moshi (tiny Mimi + a tiny LM with the 7B's stream layout), greedy,
//! the input's 12 frames then 6 frames of silence, the first frame given to the LM twice as
//! `run_inference.py` does. Codes and tokens exactly; PCM within Mimi's f32 tolerance; the
//! transcript as the reference prints it. Also: the embedded tiny Moshi is this one, and two runs
//! are identical.

mod common;

use candle_core::{DType, Device};
use common::{Fixture, Report, F32_ABS_TOL};
use moshi_engine::conversation::Moshi;
use moshi_engine::exec::RunOptions;
use moshi_engine::lm::GenConfig;
use moshi_engine::model_files::MoshiFiles;
use moshi_engine::text::TextStream;

const SILENCE_FRAMES: usize = 6;

struct Run {
    user_codes: Vec<Vec<i64>>,
    tokens: Vec<Option<Vec<i64>>>,
    pcm: Vec<f32>,
    transcript: String,
}

fn run(moshi: &Moshi, input: &[f32], cfg: GenConfig, seed: u64) -> Run {
    let n = moshi.frame_size();
    let mut conv = moshi.conversation(cfg, seed, true, &RunOptions::default()).unwrap();
    let mut text = TextStream::moshi(&moshi.tokenizer);
    let mut r = Run { user_codes: vec![], tokens: vec![], pcm: vec![], transcript: String::new() };
    let silence = vec![0f32; n];
    for frame in input.chunks(n).chain(std::iter::repeat_n(silence.as_slice(), SILENCE_FRAMES)) {
        let out = moshi.step(&mut conv, frame).unwrap();
        r.user_codes.push(out.user_codes);
        if let Some(p) = out.pcm {
            r.pcm.extend(p);
        }
        if let Some(piece) = out.text.and_then(|t| text.push(t[0])) {
            r.transcript.push_str(&piece);
        }
        r.tokens.push(out.tokens);
    }
    r
}

fn folder_moshi() -> Moshi {
    MoshiFiles::from_dir(&common::golden_dir().join("moshi_tiny")).unwrap().load(DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn greedy_pipeline_matches_the_reference_offline_pipeline() {
    let moshi = folder_moshi();
    let fx = Fixture::load("moshi_tiny/io.safetensors");
    let input: Vec<f32> = fx.get("input.pcm").flatten_all().unwrap().to_vec1().unwrap();
    let r = run(&moshi, &input, GenConfig::greedy(), 0);
    let frames = r.user_codes.len();
    assert_eq!(frames, 12 + SILENCE_FRAMES);

    // Step 0 got frame 0's codes, step f + 1 frame f's: compare steps 1.. with our frames.
    let ref_codes = fx.get("pipeline.user_codes").squeeze(0).unwrap(); // [8, 19]
    let ours_codes = candle_core::Tensor::from_vec(r.user_codes.concat(), (frames, 8), &Device::Cpu).unwrap().t().unwrap();
    let ref_out = fx.get("pipeline.out_tokens").squeeze(0).unwrap(); // [9, 19], −2 where None
    let ours_out: Vec<i64> = r.tokens.iter().flat_map(|t| t.clone().unwrap_or(vec![-2; 9])).collect();
    let ours_out = candle_core::Tensor::from_vec(ours_out, (frames, 9), &Device::Cpu).unwrap().t().unwrap();
    let mut rep = Report::default();
    rep.codes("user codes (Mimi encode, frames 0..17)", &ours_codes, &ref_codes.narrow(1, 1, frames).unwrap());
    rep.codes("user codes of the repeated first step", &ours_codes.narrow(1, 0, 1).unwrap(), &ref_codes.narrow(1, 0, 1).unwrap());
    rep.codes("returned tokens (text + 8 audio)", &ours_out, &ref_out.narrow(1, 1, frames).unwrap());
    let ref_pcm = fx.get("pipeline.pcm");
    let ours_pcm = candle_core::Tensor::from_vec(r.pcm.clone(), (1, 1, r.pcm.len()), &Device::Cpu).unwrap();
    rep.float("reply pcm (Mimi decode)", &ours_pcm, ref_pcm, F32_ABS_TOL);
    rep.finish("tiny Moshi, the whole offline pipeline, greedy");

    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::golden_dir().join("moshi_tiny/transcript.json")).unwrap()).unwrap();
    assert_eq!(r.transcript, expected["transcript"].as_str().unwrap());
}

#[test]
fn embedded_tiny_moshi_is_the_golden_one_and_runs_are_deterministic() {
    let fx = Fixture::load("moshi_tiny/io.safetensors");
    let input: Vec<f32> = fx.get("input.pcm").flatten_all().unwrap().to_vec1().unwrap();
    let embedded = moshi_engine::tiny::load_moshi(DType::F32, &Device::Cpu).unwrap();
    let folder = folder_moshi();
    let a = run(&embedded, &input, GenConfig::greedy(), 0);
    let b = run(&folder, &input, GenConfig::greedy(), 0);
    assert_eq!((a.tokens, a.pcm), (b.tokens, b.pcm), "embedded and golden folder differ");
    // Sampled: same seed, same everything; another seed, other tokens.
    let s1 = run(&embedded, &input, GenConfig::default(), 7);
    let s2 = run(&embedded, &input, GenConfig::default(), 7);
    let s3 = run(&embedded, &input, GenConfig::default(), 8);
    assert_eq!((&s1.tokens, &s1.pcm), (&s2.tokens, &s2.pcm));
    assert_ne!(s1.tokens, s3.tokens);
}

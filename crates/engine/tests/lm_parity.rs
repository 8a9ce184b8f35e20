//! The Moshi LM against the reference on the tiny reference-built LM (golden/lm_tiny, see
//! golden/README.md): the teacher-forced forward (temporal model and depformer), and the streaming
//! step (`LMGen`) greedy, sampled with the reference's recorded noise, and with other delays.
//! Tokens must match exactly; floats within `F32_REL_TOL` of each tensor's peak (4e-6: the same
//! relative bound as Mimi's 2e-6 at a 0.5 peak; the LM's values peak at 4–10, so about 1e-5 to
//! 4e-5 absolute, and the measured errors are printed by `--nocapture`).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{Fixture, Report, F32_REL_TOL};
use moshi_engine::exec::RunOptions;
use moshi_engine::lm::{GenConfig, LmConfig, LmModel, ReplayNoise, SamplingConfig};
use moshi_engine::nn::transformer::TransformerState;

fn tiny_lm(config_dir: &str) -> LmModel {
    let dir = common::golden_dir().join(config_dir);
    let cfg = LmConfig::from_json_file(&dir.join("config.json")).unwrap();
    let weights = common::golden_dir().join("lm_tiny/model.safetensors");
    LmModel::load(&[weights], &cfg, DType::F32, &Device::Cpu).unwrap()
}

fn i64s(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn teacher_forced_forward_matches_reference() {
    let model = tiny_lm("lm_tiny");
    let fx = Fixture::load("lm_tiny/io.safetensors");
    let tf = model.forward_teacher(fx.get("tf.codes")).unwrap();
    let mut r = Report::default();
    r.codes("delayed_input", &tf.delayed_input, fx.get("tf.delayed_input"));
    r.float_rel("transformer_hidden", &tf.temporal.hidden, fx.get("tf.transformer_hidden"), F32_REL_TOL);
    r.float_rel("transformer_out", &tf.temporal.out, fx.get("tf.transformer_out"), F32_REL_TOL);
    let text = fx.get("tf.text_logits_raw").squeeze(1).unwrap();
    r.float_rel("text_logits", &tf.temporal.text_logits, &text, F32_REL_TOL);
    r.codes("depformer_tokens", &tf.depformer_tokens, fx.get("tf.depformer_tokens"));
    r.float_rel("depformer_logits", &tf.depformer_logits, fx.get("tf.depformer_logits_raw"), F32_REL_TOL);
    r.finish("tiny LM, teacher-forced forward");
}

/// Streaming equals batch: the temporal model one step at a time against the whole sequence,
/// and the depformer step by step (fresh cache per position) against all steps at once.
#[test]
fn streaming_temporal_and_depformer_equal_batch() {
    let model = tiny_lm("lm_tiny");
    let fx = Fixture::load("lm_tiny/io.safetensors");
    let tf = model.forward_teacher(fx.get("tf.codes")).unwrap();
    let input = &tf.delayed_input;
    let t = input.dim(2).unwrap();
    let mut state = TransformerState::default();
    let mut outs = Vec::new();
    for p in 0..t {
        outs.push(model.temporal().step(&input.narrow(2, p, 1).unwrap(), &mut state, &mut |_, _| Ok(())).unwrap().out);
    }
    let streamed = Tensor::cat(&outs, 1).unwrap();
    let mut per_pos = Vec::new();
    for p in 0..t {
        let out = tf.temporal.out.narrow(1, p, 1).unwrap();
        let mut ds = TransformerState::default();
        let steps = (0..model.config().dep_q)
            .map(|k| {
                let tok = tf.depformer_tokens.narrow(1, k, 1).unwrap().narrow(2, p, 1).unwrap().squeeze(1).unwrap();
                model.depformer().step(k, &out, &tok, &mut ds).unwrap()
            })
            .collect::<Vec<_>>();
        per_pos.push(Tensor::stack(&steps, 1).unwrap()); // [B, K, 1, card]
    }
    let dep_streamed = Tensor::cat(&per_pos, 2).unwrap();
    let mut r = Report::default();
    r.float_rel("temporal stream vs batch", &streamed, &tf.temporal.out, F32_REL_TOL);
    r.float_rel("depformer stream vs batch", &dep_streamed, &tf.depformer_logits, F32_REL_TOL);
    r.finish("tiny LM, streaming vs batch");
}

/// Run `LmGen` over the fixture's user codes, collecting what the reference recorded.
fn run_stream(model: &LmModel, fx: &Fixture, prefix: &str, gen: GenConfig, noise: Option<ReplayNoise>) -> Report {
    let user = fx.get(&format!("{prefix}.user_codes"));
    let (b, u, steps) = user.dims3().unwrap();
    let user = i64s(&user.permute((2, 0, 1)).unwrap().contiguous().unwrap()); // [T, B, U]
    let mut st = match noise {
        Some(n) => model.new_state_with_noise(b, gen, Box::new(n), &RunOptions::default()).unwrap(),
        None => model.new_state(b, gen, 0, &RunOptions::default()).unwrap(),
    };
    let (kk, dq) = (model.config().num_streams(), model.config().dep_q);
    let (mut input, mut text, mut audio, mut out_tok, mut returned) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut t_out, mut t_logits, mut d_logits) = (vec![], vec![], vec![]);
    for n in 0..steps {
        let o = model.step(&mut st, &user[n * b * u..(n + 1) * b * u]).unwrap();
        input.push(Tensor::from_vec(o.input.clone(), (b, kk, 1), &Device::Cpu).unwrap());
        text.push(Tensor::from_vec(o.text.iter().map(|&x| x as i64).collect::<Vec<_>>(), (b, 1), &Device::Cpu).unwrap());
        audio.push(Tensor::from_vec(o.audio.iter().map(|&x| x as i64).collect::<Vec<_>>(), (b, dq, 1), &Device::Cpu).unwrap());
        returned.push(o.tokens.is_some() as u8);
        let toks = o.tokens.clone().unwrap_or_else(|| vec![-2; b * (1 + dq)]);
        out_tok.push(Tensor::from_vec(toks, (b, 1 + dq, 1), &Device::Cpu).unwrap());
        t_out.push(o.transformer_out.clone());
        t_logits.push(o.text_logits.clone());
        d_logits.push(Tensor::stack(&o.depformer_logits, 1).unwrap()); // [B, K, 1, card]
    }
    let cat = |v: &[Tensor], d: usize| Tensor::cat(v, d).unwrap();
    let mut r = Report::default();
    r.codes("model_input", &cat(&input, 2), fx.get(&format!("{prefix}.model_input")));
    r.float_rel("transformer_out", &cat(&t_out, 1), fx.get(&format!("{prefix}.transformer_out")), F32_REL_TOL);
    let tl = fx.get(&format!("{prefix}.text_logits")).squeeze(1).unwrap();
    r.float_rel("text_logits", &cat(&t_logits, 1), &tl, F32_REL_TOL);
    r.codes("text_tokens", &cat(&text, 1), fx.get(&format!("{prefix}.text_tokens")));
    r.float_rel("depformer_logits", &cat(&d_logits, 2), fx.get(&format!("{prefix}.depformer_logits")), F32_REL_TOL);
    r.codes("audio_tokens", &cat(&audio, 2), fx.get(&format!("{prefix}.audio_tokens")));
    r.codes("out_tokens", &cat(&out_tok, 2), fx.get(&format!("{prefix}.out_tokens")));
    let ret = Tensor::from_vec(returned, steps, &Device::Cpu).unwrap();
    r.codes("out_returned", &ret, fx.get(&format!("{prefix}.out_returned")));
    r
}

#[test]
fn greedy_streaming_matches_reference() {
    let model = tiny_lm("lm_tiny");
    let fx = Fixture::load("lm_tiny/io.safetensors");
    run_stream(&model, &fx, "greedy", GenConfig::greedy(), None).finish("tiny LM, LMGen greedy, B=2, 24 steps");
}

#[test]
fn greedy_streaming_matches_reference_with_other_delays() {
    let model = tiny_lm("lm_tiny_delays");
    assert_eq!(model.max_delay(), 2);
    let fx = Fixture::load("lm_tiny_delays/io.safetensors");
    run_stream(&model, &fx, "greedy", GenConfig::greedy(), None).finish("tiny LM, delays [0,1,2..], LMGen greedy");
}

/// The reference's noise, queued in its call order: per step the text call, then depformer
/// steps 0..7.
fn recorded_noise(fx: &Fixture) -> ReplayNoise {
    let text = fx.get("sampled.noise_text");
    let audio = fx.get("sampled.noise_audio");
    let mut noise = ReplayNoise::new();
    for n in 0..text.dim(0).unwrap() {
        noise.push(text.get(n).unwrap().flatten_all().unwrap().to_vec1().unwrap());
        for k in 0..audio.dim(1).unwrap() {
            noise.push(audio.get(n).unwrap().get(k).unwrap().flatten_all().unwrap().to_vec1().unwrap());
        }
    }
    noise
}

#[test]
fn sampled_streaming_replays_reference_noise() {
    let model = tiny_lm("lm_tiny");
    let fx = Fixture::load("lm_tiny/io.safetensors");
    let gen = GenConfig { text: SamplingConfig::sampled(0.7, 25), audio: SamplingConfig::sampled(0.8, 250) };
    assert_eq!(gen, GenConfig::default(), "the fixture used the reference's defaults");
    run_stream(&model, &fx, "sampled", gen, Some(recorded_noise(&fx)))
        .finish("tiny LM, LMGen sampled (text 0.7/25, audio 0.8/250) with replayed noise");
}

/// The sampled run must differ from greedy (else the replay test proves nothing about sampling).
#[test]
fn sampled_run_differs_from_greedy() {
    let fx = Fixture::load("lm_tiny/io.safetensors");
    let diff = i64s(fx.get("sampled.audio_tokens")).iter().zip(i64s(fx.get("greedy.audio_tokens"))).filter(|(a, b)| **a != *b).count();
    assert!(diff > 100, "only {diff} audio tokens differ between the sampled and greedy runs");
}

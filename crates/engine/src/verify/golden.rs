//! `verify golden`: every committed reference trace (golden/, made by tools/golden/ with the PyPI
//! `moshi` package, and golden/personaplex_tiny with NVIDIA's fork: `golden_personaplex`) recomputed on the CPU in f32 and compared stage by stage. Tolerances as in
//! docs/parity.md: Mimi floats 2e-6 absolute (stages peak at 0.07–0.45), LM floats 4e-6 × the
//! tensor's peak (they peak at 4–12), codes and tokens exact.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::Check;
use crate::conversation::Moshi;
use crate::error::{EngineError, Result};
use crate::exec::RunOptions;
use crate::lm::{GenConfig, LmConfig, LmModel, ReplayNoise};
use crate::mimi::{DecoderState, EncoderState, Mimi, MimiConfig};
use crate::model_files::MoshiFiles;
use crate::text::TextStream;

pub const MIMI_ABS_TOL: f64 = 2e-6;
pub const LM_REL_TOL: f64 = 4e-6;

struct Fixture(HashMap<String, Tensor>);

impl Fixture {
    fn load(path: &Path) -> Result<Self> {
        let t = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| EngineError::ModelFiles { path: path.to_path_buf(), msg: format!("reference trace: {e}") })?;
        Ok(Self(t))
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.0.get(name).ok_or_else(|| EngineError::InvalidInput(format!("reference trace lacks `{name}`")))
    }
}

/// Run every trace under `dir` (the repository's golden/ folder).
pub fn run(dir: &Path) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    mimi(dir, "mimi_tiny/config.json", "mimi_tiny/io.safetensors", "mimi", &mut checks)?;
    mimi(dir, "mimi_tiny/ctx5/config.json", "mimi_tiny/ctx5/io.safetensors", "mimi ctx5", &mut checks)?;
    lm(dir, &mut checks)?;
    pipeline(dir, &mut checks)?;
    super::golden_personaplex::run(dir, &mut checks)?;
    Ok(checks)
}

fn mimi(dir: &Path, cfg: &str, io: &str, group: &str, out: &mut Vec<Check>) -> Result<()> {
    let cfg = MimiConfig::from_json_file(&dir.join(cfg))?;
    let m = Mimi::load(&dir.join("mimi_tiny/model.safetensors"), &cfg, DType::F32, &Device::Cpu)?;
    let fx = Fixture::load(&dir.join(io))?;
    let g = format!("{group} batch");
    let e = m.encode_stages(fx.get("input.pcm")?)?;
    let d = m.decode_stages(fx.get("batch.codes")?)?;
    for (name, t) in [("seanet_latent", &e.seanet_latent), ("transformer_out", &e.transformer_out), ("downsampled", &e.downsampled)] {
        out.push(Check::float(&g, name, t, fx.get(&format!("batch.{name}"))?, MIMI_ABS_TOL)?);
    }
    out.push(Check::codes(&g, "codes", &e.codes, fx.get("batch.codes")?)?);
    for (name, t) in [("quantized", &d.quantized), ("upsampled", &d.upsampled), ("decoder_transformer_out", &d.decoder_transformer_out), ("pcm", &d.pcm)] {
        out.push(Check::float(&g, name, t, fx.get(&format!("batch.{name}"))?, MIMI_ABS_TOL)?);
    }
    // Streaming, one frame at a time, decoding the reference's codes.
    let g = format!("{group} streaming");
    let pcm = fx.get("input.pcm")?;
    let codes = fx.get("stream.codes")?;
    let (mut es, mut ds) = (EncoderState::default(), DecoderState::default());
    let (mut enc_codes, mut dec_pcm, mut dec_tr) = (vec![], vec![], vec![]);
    for f in 0..codes.dim(2)? {
        let chunk = pcm.narrow(2, f * m.frame_size(), m.frame_size())?;
        enc_codes.push(m.encode_step(&chunk, &mut es)?);
        let st = m.decode_step_stages(&codes.narrow(2, f, 1)?, &mut ds)?;
        dec_pcm.push(st.pcm);
        dec_tr.push(st.decoder_transformer_out);
    }
    out.push(Check::codes(&g, "codes", &Tensor::cat(&enc_codes, 2)?, codes)?);
    out.push(Check::float(&g, "decoder_transformer_out", &Tensor::cat(&dec_tr, 2)?, fx.get("stream.decoder_transformer_out")?, MIMI_ABS_TOL)?);
    out.push(Check::float(&g, "pcm", &Tensor::cat(&dec_pcm, 2)?, fx.get("stream.pcm")?, MIMI_ABS_TOL)?);
    Ok(())
}

fn tiny_lm(dir: &Path, cfg: &str) -> Result<LmModel> {
    let cfg = LmConfig::from_json_file(&dir.join(cfg))?;
    LmModel::load(&[dir.join("lm_tiny/model.safetensors")], &cfg, DType::F32, &Device::Cpu)
}

fn lm(dir: &Path, out: &mut Vec<Check>) -> Result<()> {
    let model = tiny_lm(dir, "lm_tiny/config.json")?;
    let fx = Fixture::load(&dir.join("lm_tiny/io.safetensors"))?;
    let g = "lm teacher-forced";
    let tf = model.forward_teacher(fx.get("tf.codes")?)?;
    out.push(Check::codes(g, "delayed_input", &tf.delayed_input, fx.get("tf.delayed_input")?)?);
    out.push(Check::float_rel(g, "transformer_out", &tf.temporal.out, fx.get("tf.transformer_out")?, LM_REL_TOL)?);
    out.push(Check::float_rel(g, "text_logits", &tf.temporal.text_logits, &fx.get("tf.text_logits_raw")?.squeeze(1)?, LM_REL_TOL)?);
    out.push(Check::float_rel(g, "depformer_logits", &tf.depformer_logits, fx.get("tf.depformer_logits_raw")?, LM_REL_TOL)?);

    stream(&model, &fx, "greedy", "lm greedy", GenConfig::greedy(), None, out)?;
    let (text, audio) = (fx.get("sampled.noise_text")?, fx.get("sampled.noise_audio")?);
    let mut noise = ReplayNoise::new();
    for n in 0..text.dim(0)? {
        noise.push(text.get(n)?.flatten_all()?.to_vec1()?);
        for k in 0..audio.dim(1)? {
            noise.push(audio.get(n)?.get(k)?.flatten_all()?.to_vec1()?);
        }
    }
    stream(&model, &fx, "sampled", "lm sampled (replayed noise)", GenConfig::default(), Some(noise), out)?;
    let other = tiny_lm(dir, "lm_tiny_delays/config.json")?;
    let fx2 = Fixture::load(&dir.join("lm_tiny_delays/io.safetensors"))?;
    stream(&other, &fx2, "greedy", "lm greedy, other delays", GenConfig::greedy(), None, out)
}

fn stream(model: &LmModel, fx: &Fixture, prefix: &str, g: &str, gen: GenConfig, noise: Option<ReplayNoise>, out: &mut Vec<Check>) -> Result<()> {
    let user = fx.get(&format!("{prefix}.user_codes"))?;
    let (b, u, steps) = user.dims3()?;
    let user: Vec<i64> = user.permute((2, 0, 1))?.contiguous()?.flatten_all()?.to_vec1()?;
    let mut st = match noise {
        Some(n) => model.new_state_with_noise(b, gen, Box::new(n), &RunOptions::default())?,
        None => model.new_state(b, gen, 0, &RunOptions::default())?,
    };
    let (kk, dq) = (model.config().num_streams(), model.config().dep_q);
    let (mut input, mut outs, mut tl, mut dl) = (vec![], vec![], vec![], vec![]);
    for n in 0..steps {
        let o = model.step(&mut st, &user[n * b * u..(n + 1) * b * u])?;
        input.push(Tensor::from_vec(o.input, (b, kk, 1), &Device::Cpu)?);
        outs.push(Tensor::from_vec(o.tokens.unwrap_or_else(|| vec![-2; b * (1 + dq)]), (b, 1 + dq, 1), &Device::Cpu)?);
        tl.push(o.text_logits);
        dl.push(Tensor::stack(&o.depformer_logits, 1)?);
    }
    out.push(Check::codes(g, "model_input", &Tensor::cat(&input, 2)?, fx.get(&format!("{prefix}.model_input"))?)?);
    let text_ref = fx.get(&format!("{prefix}.text_logits"))?.squeeze(1)?;
    out.push(Check::float_rel(g, "text_logits", &Tensor::cat(&tl, 1)?, &text_ref, LM_REL_TOL)?);
    out.push(Check::float_rel(g, "depformer_logits", &Tensor::cat(&dl, 2)?, fx.get(&format!("{prefix}.depformer_logits"))?, LM_REL_TOL)?);
    out.push(Check::codes(g, "returned tokens", &Tensor::cat(&outs, 2)?, fx.get(&format!("{prefix}.out_tokens"))?)?);
    Ok(())
}

/// The whole offline pipeline (golden/moshi_tiny): greedy, input then 6 silent frames, the first
/// frame given twice, as the fixture script ran the reference.
fn pipeline(dir: &Path, out: &mut Vec<Check>) -> Result<()> {
    let moshi: Moshi = MoshiFiles::from_dir(&dir.join("moshi_tiny"))?.load(DType::F32, &Device::Cpu)?;
    let fx = Fixture::load(&dir.join("moshi_tiny/io.safetensors"))?;
    let input: Vec<f32> = fx.get("input.pcm")?.flatten_all()?.to_vec1()?;
    let n = moshi.frame_size();
    let mut conv = moshi.conversation(GenConfig::greedy(), 0, true, &RunOptions::default())?;
    let silence = vec![0f32; n];
    let (mut codes, mut toks, mut pcm) = (vec![], vec![], vec![]);
    let mut text = TextStream::moshi(&moshi.tokenizer);
    let mut transcript = String::new();
    for frame in input.chunks(n).chain(std::iter::repeat_n(silence.as_slice(), 6)) {
        let o = moshi.step(&mut conv, frame)?;
        codes.extend(o.user_codes);
        toks.extend(o.tokens.unwrap_or_else(|| vec![-2; 9]));
        pcm.extend(o.pcm.unwrap_or_default());
        if let Some(p) = o.text.and_then(|t| text.push(t[0])) {
            transcript.push_str(&p);
        }
    }
    let frames = codes.len() / 8;
    let g = "pipeline (mimi + lm)";
    let ref_codes = fx.get("pipeline.user_codes")?.squeeze(0)?.narrow(1, 1, frames)?;
    let ref_toks = fx.get("pipeline.out_tokens")?.squeeze(0)?.narrow(1, 1, frames)?;
    out.push(Check::codes(g, "user codes", &Tensor::from_vec(codes, (frames, 8), &Device::Cpu)?.t()?, &ref_codes)?);
    out.push(Check::codes(g, "returned tokens", &Tensor::from_vec(toks, (frames, 9), &Device::Cpu)?.t()?, &ref_toks)?);
    let len = pcm.len();
    out.push(Check::float(g, "reply pcm", &Tensor::from_vec(pcm, (1, 1, len), &Device::Cpu)?, fx.get("pipeline.pcm")?, MIMI_ABS_TOL)?);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("moshi_tiny/transcript.json")).map_err(|e| EngineError::Io { path: dir.join("moshi_tiny/transcript.json"), source: e })?,
    )
    .map_err(|e| EngineError::InvalidInput(format!("transcript.json: {e}")))?;
    let same = expected["transcript"].as_str() == Some(transcript.as_str());
    out.push(Check { group: g.into(), name: "transcript".into(), max_abs: if same { 0.0 } else { 1.0 }, max_rel: 0.0, tol: 0.0, ok: same });
    Ok(())
}

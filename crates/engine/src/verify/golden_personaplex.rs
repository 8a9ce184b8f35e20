//! `verify golden`'s PersonaPlex rows: golden/personaplex_tiny (NVIDIA's fork, see golden/README.md)
//! recomputed on the CPU in f32. Our step s is the reference's LMGen call s + 1 (lm/prompt.rs);
//! the conversation's calls P.. return what our steps P − 1.. return. Tokens and codes exact, the
//! LM's floats within `LM_REL_TOL` of their peak, PCM within `MIMI_ABS_TOL`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::golden::{LM_REL_TOL, MIMI_ABS_TOL};
use super::Check;
use crate::conversation::Moshi;
use crate::error::{EngineError, Result};
use crate::exec::RunOptions;
use crate::lm::{GenConfig, LmPrompt, ReplayNoise, SamplingConfig, StepOut};
use crate::model_files::MoshiFiles;
use crate::persona::{PromptSpec, VoiceSource};

const TEXT: &str = "You are a helpful assistant named Ada.";

fn load(path: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| EngineError::ModelFiles { path: path.to_path_buf(), msg: format!("reference trace: {e}") })
}

/// Every step of a batch-1 LM run: the prompt (stepped), then `user` frames.
fn run_lm(moshi: &Moshi, prompt: &LmPrompt, user: &[Vec<i64>], gen: GenConfig, noise: Option<ReplayNoise>) -> Result<Vec<StepOut>> {
    let opts = RunOptions::default();
    let mut st = match noise {
        Some(n) => moshi.lm.new_state_with_noise(1, gen, Box::new(n), &opts)?,
        None => moshi.lm.new_state(1, gen, 0, &opts)?,
    };
    moshi.lm.start_prompt(&mut st, 0, prompt)?;
    let mut out = Vec::new();
    while st.prompting(0) {
        out.push(moshi.lm.step(&mut st, &vec![0; user[0].len()])?);
    }
    for u in user {
        out.push(moshi.lm.step(&mut st, u)?);
    }
    Ok(out)
}

/// The returned tokens of the conversation calls `p..` (text + the agent's 8) against ours.
fn returned(g: &str, ours: &[StepOut], reference: &Tensor, p: usize) -> Result<Check> {
    let calls = reference.dim(0)? - p;
    let got: Vec<i64> = ours[p - 1..p - 1 + calls].iter().flat_map(|o| o.tokens.clone().unwrap_or_else(|| vec![-2; 9])).collect();
    let want = reference.narrow(0, p, calls)?.narrow(1, 0, 9)?;
    Check::codes(g, "returned tokens", &Tensor::from_vec(got, (calls, 9), &Device::Cpu)?, &want)
}

pub fn run(dir: &Path, out: &mut Vec<Check>) -> Result<()> {
    let d = dir.join("personaplex_tiny");
    let moshi = MoshiFiles::from_dir(&d)?.load(DType::F32, &Device::Cpu)?;
    let fx = load(&d.join("io.safetensors"))?;
    let get = |k: &str| fx.get(k).ok_or_else(|| EngineError::InvalidInput(format!("reference trace lacks `{k}`")));
    let prompt = |text: &str, voice: &str| moshi.prepare_prompt(&PromptSpec { text: text.into(), voice: VoiceSource::File(d.join(voice)) });
    let user = |run: &str| -> Result<Vec<Vec<i64>>> { Ok(get(&format!("{run}.user_codes"))?.t()?.contiguous()?.to_vec2()?) };
    let pt = prompt(TEXT, "voice.pt")?;
    let p = pt.frame_count(moshi.lm.config())?;

    // Greedy, preset voice: every forward's text logits, the conversation's tokens, the PCM.
    let g = "personaplex greedy (voice.pt)";
    let u = user("greedy")?;
    let steps = run_lm(&moshi, &pt, &u[..u.len() - 1], GenConfig::greedy(), None)?;
    let logits: Vec<Tensor> = steps.iter().map(|o| o.text_logits.flatten_all()).collect::<candle_core::Result<_>>()?;
    let ref_logits = get("greedy.text_logits")?;
    out.push(Check::float_rel(g, "text_logits", &Tensor::stack(&logits, 0)?, &ref_logits.narrow(0, 1, steps.len())?, LM_REL_TOL)?);
    out.push(returned(g, &steps, get("greedy.out_tokens")?, p)?);
    let n = moshi.frame_size();
    let input = crate::audio::load_mono_24k(&d.join("user.wav"))?;
    let mut conv = moshi.conversation(GenConfig::greedy(), 0, false, &RunOptions::default())?;
    moshi.start_prompt(&mut conv, 0, &pt)?;
    moshi.prefill_prompt(&mut conv)?;
    let (mut codes, mut pcm) = (Vec::new(), Vec::new());
    while conv.prompting(0) {
        pcm.extend(moshi.step(&mut conv, &vec![0.0; n])?.pcm.unwrap_or_default());
    }
    for f in crate::audio::frames(&input, n) {
        let o = moshi.step(&mut conv, &f)?;
        codes.extend(o.user_codes);
        pcm.extend(o.pcm.unwrap_or_default());
    }
    let frames = codes.len() / 8;
    let gp = "personaplex pipeline (prefilled)";
    out.push(Check::codes(gp, "user codes", &Tensor::from_vec(codes, (frames, 8), &Device::Cpu)?.t()?, get("greedy.user_codes")?)?);
    let ref_pcm = get("greedy.decoded_pcm")?;
    pcm.truncate(ref_pcm.dim(0)?);
    out.push(Check::float(gp, "reply pcm", &Tensor::from_vec(pcm.clone(), pcm.len(), &Device::Cpu)?, ref_pcm, MIMI_ABS_TOL)?);

    // Sampled with the reference's noise: at the last prompt step only the text and codebook 0
    // are sampled (1..7 are forced), then text and 8 codebooks per step.
    let (text_noise, audio_noise) = (get("sampled.noise_text")?, get("sampled.noise_audio")?);
    let mut noise = ReplayNoise::new();
    for j in 0..text_noise.dim(0)? {
        noise.push(text_noise.get(j)?.to_vec1()?);
        for k in 0..if j == 0 { 1 } else { 8 } {
            noise.push(audio_noise.get(j)?.get(k)?.to_vec1()?);
        }
    }
    let gen = GenConfig { text: SamplingConfig::sampled(0.7, 25), audio: SamplingConfig::sampled(0.8, 40) };
    let u = user("sampled")?;
    let steps = run_lm(&moshi, &pt, &u[..u.len() - 1], gen, Some(noise))?;
    out.push(returned("personaplex sampled (replayed noise)", &steps, get("sampled.out_tokens")?, p)?);

    // A wav voice: normalized, Mimi-encoded, then the same run as the preset's.
    let g = "personaplex wav voice";
    let wav = prompt(TEXT, "voice.wav")?;
    if let crate::lm::VoicePrompt::Codes(c) = &wav.voice {
        let t = Tensor::from_vec(c.concat(), (c.len(), 8), &Device::Cpu)?.t()?;
        out.push(Check::codes(g, "voice codes", &t, get("wav.voice_codes")?)?);
    }
    let u = user("greedy")?;
    let steps = run_lm(&moshi, &wav, &u[..u.len() - 1], GenConfig::greedy(), None)?;
    out.push(returned(g, &steps, get("greedy.out_tokens")?, p)?);

    // The empty text prompt (the reference needs a one-line fix to run it).
    let empty = prompt("", "voice.pt")?;
    let u = user("empty")?;
    let steps = run_lm(&moshi, &empty, &u[..u.len() - 1], GenConfig::greedy(), None)?;
    out.push(returned("personaplex empty text prompt", &steps, get("empty.out_tokens")?, empty.frame_count(moshi.lm.config())?)?);
    Ok(())
}

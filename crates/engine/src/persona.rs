//! PersonaPlex's persona and voice: from what a user gives (a text, a voice file or preset name,
//! audio) to the LM's [`LmPrompt`], as NVIDIA's reference prepares them (`offline.py` /
//! `server.py` and `moshi/models/lm.py` of NVIDIA/personaplex):
//!
//! - the text is wrapped as `<system> {text} <system>` (unless it already starts and ends with
//!   `<system>`; `<system>` is ordinary text, not a special token) and SentencePiece-encoded with
//!   default options; an empty text gives no text phase (the reference crashes on it);
//! - a `.pt` voice (the presets, `voices/NATF0.pt` …) is read with Candle's PyTorch pickle
//!   reader: `embeddings` [T, 1, 1, dim] (the summed input embeddings of the voice's first T
//!   positions) and `cache` [1, streams, 4] (the token ring after them);
//! - any other voice file is audio: decoded, resampled to 24 kHz mono, normalized to −24 LUFS
//!   (`audio::loudness`, as pyloudnorm) and Mimi-encoded frame by frame from a fresh state, the
//!   last frame zero-padded. (The reference reads channel 0 and resamples with sphn; moshi-rs
//!   averages the channels and resamples with its own resampler: identical for 24 kHz mono files.)

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::conversation::Moshi;
use crate::error::{EngineError, Result};
use crate::lm::{LmConfig, LmPrompt, VoiceEmbeddings, VoicePrompt};
use crate::mimi::{EncoderState, Mimi};

/// The loudness the reference brings a voice recording to (`normalize_audio(…, −24.0)`).
pub const VOICE_LUFS: f64 = -24.0;

/// What a conversation is told to be and sound like.
#[derive(Debug, Clone)]
pub struct PromptSpec {
    /// The persona ("You are a wise and friendly teacher. …"); empty for none.
    pub text: String,
    pub voice: VoiceSource,
}

/// Where the voice comes from.
#[derive(Debug, Clone)]
pub enum VoiceSource {
    /// No voice prompt.
    None,
    /// A `.pt` preset, or an audio file (any other extension).
    File(PathBuf),
    /// A recording: 24 kHz mono samples.
    Audio(Vec<f32>),
    /// A preset already loaded (`load_voice_pt`).
    Embeddings(VoiceEmbeddings),
}

fn err(msg: String) -> EngineError {
    EngineError::Prompt(msg)
}

/// The reference's `wrap_with_system_tags`: strip, then `<system> {text} <system>` unless the
/// text already starts and ends with `<system>`.
pub fn wrap_with_system_tags(text: &str) -> String {
    let cleaned = text.trim();
    if cleaned.starts_with("<system>") && cleaned.ends_with("<system>") {
        cleaned.to_string()
    } else {
        format!("<system> {cleaned} <system>")
    }
}

/// A voice given by file name or path: as is when it exists; else in `dir` (the reference's
/// `--voice-prompt-dir`), with `.pt` added when the name has no extension (`NATF0` →
/// `NATF0.pt`). The error names every place looked at.
pub fn resolve_voice(name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let direct = PathBuf::from(name);
    if dir.is_none() || direct.is_absolute() {
        if direct.is_file() {
            return Ok(direct);
        }
        tried.push(direct);
    }
    if let Some(dir) = dir {
        let joined = dir.join(name);
        if joined.is_file() {
            return Ok(joined);
        }
        tried.push(joined.clone());
        if joined.extension().is_none() {
            let pt = joined.with_extension("pt");
            if pt.is_file() {
                return Ok(pt);
            }
            tried.push(pt);
        }
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(err(format!("voice prompt {name:?} not found (looked for {})", list.join(", "))))
}

/// Read a PersonaPlex voice preset (`torch.save` of `{"embeddings", "cache"}`), checked against
/// the model's width and stream count; errors name the file and both shapes.
pub fn load_voice_pt(path: &Path, cfg: &LmConfig) -> Result<VoiceEmbeddings> {
    let name = path.display();
    if !path.is_file() {
        return Err(err(format!("voice prompt {name}: no such file")));
    }
    let tensors = candle_core::pickle::read_all(path)
        .map_err(|e| err(format!("voice prompt {name}: not a PyTorch voice file ({e})")))?;
    let get = |key: &str| {
        tensors.iter().find(|(n, _)| n == key).map(|(_, t)| t.clone()).ok_or_else(|| {
            let keys: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
            err(format!("voice prompt {name}: no `{key}` tensor (it holds {keys:?}); expected a PersonaPlex voice (.pt with `embeddings` and `cache`)"))
        })
    };
    let emb = get("embeddings")?;
    let dims = emb.dims().to_vec();
    let t = dims.first().copied().unwrap_or(0);
    if dims.len() < 2 || dims[dims.len() - 1] != cfg.dim || dims[1..dims.len() - 1].iter().any(|&d| d != 1) || t == 0 {
        return Err(err(format!(
            "voice prompt {name}: `embeddings` has shape {dims:?}, expected [T, 1, 1, {}] (T ≥ 1; this model's width is {})",
            cfg.dim, cfg.dim
        )));
    }
    let embeddings = emb.to_dtype(DType::F32)?.reshape((t, cfg.dim))?;
    let cache = get("cache")?;
    let cd = cache.dims().to_vec();
    let kk = cfg.num_streams();
    if cd.len() != 3 || cd[0] != 1 || cd[1] != kk || cd[2] < 2 {
        return Err(err(format!("voice prompt {name}: `cache` has shape {cd:?}, expected [1, {kk}, ring ≥ 2]")));
    }
    let ring = cd[2];
    let ring_tokens: Vec<i64> = cache.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    Ok(VoiceEmbeddings { embeddings, ring_tokens, ring })
}

/// Mimi codes of a voice recording (24 kHz mono) as the reference makes them: normalized to
/// −24 LUFS, 1920-sample frames (the last zero-padded), encoded one frame at a time from a
/// fresh streaming state. One `Vec` of codebooks per frame.
pub fn voice_codes(mimi: &Mimi, samples: &[f32]) -> Result<Vec<Vec<i64>>> {
    let rate = crate::audio::MIMI_SAMPLE_RATE;
    let (gain, _) = crate::audio::loudness::loudness_gain(samples, rate, VOICE_LUFS).ok_or_else(|| {
        err(format!("the voice recording ({} samples) is silent or shorter than 0.4 s: its loudness cannot be measured", samples.len()))
    })?;
    let n = mimi.frame_size();
    let mut state = EncoderState::default();
    let mut out = Vec::new();
    for chunk in samples.chunks(n) {
        // pyloudnorm scales in f64; Mimi reads f32.
        let mut frame: Vec<f32> = chunk.iter().map(|&x| (x as f64 * gain) as f32).collect();
        frame.resize(n, 0.0);
        let x = Tensor::from_vec(frame, (1, 1, n), &Device::Cpu)?.to_device(mimi.device())?.to_dtype(mimi.dtype())?;
        let codes = mimi.encode_step(&x, &mut state)?;
        out.push(codes.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?);
    }
    Ok(out)
}

impl Moshi {
    /// The LM prompt for `spec` (refused for models without prompt training).
    pub fn prepare_prompt(&self, spec: &PromptSpec) -> Result<LmPrompt> {
        let cfg = self.lm.config();
        if !cfg.takes_prompts() {
            return Err(err("this model has no prompt training (it is not PersonaPlex): a text or voice prompt would be ignored by it, so it is refused".into()));
        }
        let text = if spec.text.is_empty() { Vec::new() } else { self.tokenizer.encode(&wrap_with_system_tags(&spec.text))? };
        let voice = match &spec.voice {
            VoiceSource::None => VoicePrompt::None,
            VoiceSource::Embeddings(v) => VoicePrompt::Embeddings(v.clone()),
            VoiceSource::Audio(samples) => VoicePrompt::Codes(voice_codes(&self.mimi, samples)?),
            VoiceSource::File(path) => {
                if !path.is_file() {
                    return Err(err(format!("voice prompt {}: no such file", path.display())));
                }
                if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pt")) {
                    VoicePrompt::Embeddings(load_voice_pt(path, cfg)?)
                } else {
                    let samples = crate::audio::load_mono_24k(path)?;
                    VoicePrompt::Codes(voice_codes(&self.mimi, &samples)?)
                }
            }
        };
        let prompt = LmPrompt { voice, text };
        prompt.frame_count(cfg)?; // every check, before a conversation is touched
        Ok(prompt)
    }
}

//! Whole-signal helpers over the streaming API, as a live conversation would run Mimi: frame by
//! frame, one state per stream. Also the codes file format of `moshi-rs codec`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::{DecoderState, EncoderState, Mimi};
use crate::error::{EngineError, Result};

/// Encode mono `samples` frame by frame (the last frame zero-padded) → codes [1, K, F] (u32).
/// `on_frame(i, n)` is called after each frame (for progress bars).
pub fn encode_samples(mimi: &Mimi, samples: &[f32], mut on_frame: impl FnMut(usize, usize)) -> Result<Tensor> {
    if samples.is_empty() {
        return Err(EngineError::InvalidInput("no samples to encode".into()));
    }
    let fs = mimi.frame_size();
    let n = samples.len().div_ceil(fs);
    let mut state = EncoderState::default();
    let mut codes = Vec::with_capacity(n);
    for (i, chunk) in samples.chunks(fs).enumerate() {
        let mut frame = chunk.to_vec();
        frame.resize(fs, 0.0);
        let pcm = Tensor::from_vec(frame, (1, 1, fs), mimi.device())?;
        codes.push(mimi.encode_step(&pcm, &mut state)?);
        on_frame(i, n);
    }
    Ok(Tensor::cat(&codes, 2)?)
}

/// Decode codes [1, K, F] frame by frame → F·1920 mono samples.
pub fn decode_codes(mimi: &Mimi, codes: &Tensor, mut on_frame: impl FnMut(usize, usize)) -> Result<Vec<f32>> {
    let (b, _k, f) = codes.dims3()?;
    if b != 1 || f == 0 {
        return Err(EngineError::InvalidInput(format!("codes must be [1, K, F ≥ 1], got {:?}", codes.dims())));
    }
    let mut state = DecoderState::default();
    let mut out = Vec::with_capacity(f * mimi.frame_size());
    for i in 0..f {
        let pcm = mimi.decode_step(&codes.narrow(2, i, 1)?, &mut state)?;
        out.extend(pcm.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        on_frame(i, f);
    }
    Ok(out)
}

/// A codes file: safetensors with `codes` [1, K, F] (int64, as the reference's tensors) and
/// metadata `num_samples` (the signal's length before padding), `sample_rate`, `frame_rate`.
#[derive(Debug, Clone)]
pub struct CodesFile {
    pub codes: Tensor,
    pub num_samples: usize,
    pub sample_rate: usize,
    pub frame_rate: f64,
}

impl CodesFile {
    pub fn save(&self, path: &Path) -> Result<()> {
        let codes = self.codes.to_dtype(DType::I64)?.to_device(&candle_core::Device::Cpu)?;
        let meta: HashMap<String, String> = [
            ("num_samples".to_string(), self.num_samples.to_string()),
            ("sample_rate".to_string(), self.sample_rate.to_string()),
            ("frame_rate".to_string(), self.frame_rate.to_string()),
        ]
        .into();
        safetensors::serialize_to_file([("codes", &codes)], Some(meta), path)
            .map_err(|e| EngineError::ModelFiles { path: path.to_path_buf(), msg: format!("cannot write codes: {e}") })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bad = |msg: String| EngineError::InvalidInput(format!("codes file {}: {msg}", path.display()));
        let bytes = std::fs::read(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).cloned().ok_or_else(|| bad(format!("metadata lacks `{k}`")));
        let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)?;
        let codes = tensors.get("codes").ok_or_else(|| bad("no `codes` tensor".into()))?.clone();
        if codes.dims().len() != 3 || codes.dim(0)? != 1 {
            return Err(bad(format!("`codes` must be [1, K, F], got {:?}", codes.dims())));
        }
        Ok(Self {
            codes,
            num_samples: field("num_samples")?.parse().map_err(|e| bad(format!("num_samples: {e}")))?,
            sample_rate: field("sample_rate")?.parse().map_err(|e| bad(format!("sample_rate: {e}")))?,
            frame_rate: field("frame_rate")?.parse().map_err(|e| bad(format!("frame_rate: {e}")))?,
        })
    }
}

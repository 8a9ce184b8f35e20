//! The tiny Moshi built by the reference with random weights (golden/moshi_tiny: the tiny Mimi of
//! golden/mimi_tiny, a tiny LM with the 7B's stream layout and delays, the 48-piece tokenizer of
//! golden/lm_tiny), embedded so that `moshi-rs run` works on a fresh, offline machine. Its output
//! is not speech: it is a correctness anchor (tests/e2e_parity.rs compares it with the reference's
//! own offline pipeline).

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::conversation::Moshi;
use crate::error::{EngineError, Result};
use crate::lm::{LmConfig, LmModel};
use crate::text::Tokenizer;
use crate::weights::{LoadOptions, Weights};

const LM_WEIGHTS: &[u8] = include_bytes!("../../../golden/moshi_tiny/model.safetensors");
/// The embedded tiny LM's safetensors bytes (PyTorch layout), e.g. for writing it as a GGUF.
pub const LM_SAFETENSORS: &[u8] = LM_WEIGHTS;
const LM_CONFIG: &str = include_str!("../../../golden/moshi_tiny/config.json");
const TOKENIZER: &[u8] = include_bytes!("../../../golden/lm_tiny/tokenizer.model");

/// The tiny LM's configuration.
pub fn lm_config() -> LmConfig {
    LmConfig::from_json_str(LM_CONFIG, "<embedded tiny>/config.json").expect("the embedded tiny LM config is valid (checked by tests)")
}

/// Load the embedded tiny Moshi (Mimi always in f32; the LM in `dtype`).
pub fn load_moshi(dtype: DType, device: &Device) -> Result<Moshi> {
    load_moshi_with(&LoadOptions::dtype(dtype), device)
}

/// As `load_moshi`, the LM's weights stored as `options.weights` says.
pub fn load_moshi_with(options: &LoadOptions, device: &Device) -> Result<Moshi> {
    let embedded = |e: candle_core::Error| EngineError::ModelFiles { path: "<embedded tiny>".into(), msg: e.to_string() };
    let mimi = crate::mimi::tiny::load(DType::F32, device)?;
    let vb = VarBuilder::from_slice_safetensors(LM_WEIGHTS, options.dtype, device).map_err(embedded)?;
    let lm = LmModel::new(&lm_config(), &Weights::new(vb, options.weights))?;
    Moshi::new(mimi, lm, Tokenizer::from_bytes(TOKENIZER)?)
}

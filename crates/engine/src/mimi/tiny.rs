//! The tiny Mimi built by the reference with random weights (golden/mimi_tiny, see its README),
//! embedded so that `--model tiny` works on a fresh, offline machine. Same architecture and
//! tensor names as the real Mimi, 32-wide latents, 16 codebooks of 64 entries.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::{Mimi, MimiConfig};
use crate::error::{EngineError, Result};

const WEIGHTS: &[u8] = include_bytes!("../../../../golden/mimi_tiny/model.safetensors");
const CONFIG: &str = include_str!("../../../../golden/mimi_tiny/config.json");

/// The tiny model's configuration.
pub fn config() -> MimiConfig {
    serde_json::from_str(CONFIG).expect("the embedded tiny config is valid JSON (checked by tests)")
}

/// Load the embedded tiny Mimi.
pub fn load(dtype: DType, device: &Device) -> Result<Mimi> {
    let vb = VarBuilder::from_slice_safetensors(WEIGHTS, dtype, device)
        .map_err(|e| EngineError::ModelFiles { path: "<embedded tiny>".into(), msg: e.to_string() })?;
    Mimi::new(&config(), vb)
}

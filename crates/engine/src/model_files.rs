//! Where a whole Moshi's files are: the LM weights and config, the Mimi weights and config, the
//! SentencePiece model. From a folder (a Hugging Face snapshot of `kyutai/moshiko-pytorch-bf16`,
//! `moshika-…`, `moshiko-candle-bf16`, or any folder with Kyutai's `config.json`), or given one by
//! one. No network here: downloading is the CLI's business.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::conversation::Moshi;
use crate::error::{EngineError, Result};
use crate::lm::{LmConfig, LmModel};
use crate::mimi::{Mimi, MimiConfig};
use crate::text::Tokenizer;

/// File names in Kyutai's released repositories.
pub const RELEASED_LM: &str = "model.safetensors";
pub const RELEASED_MIMI: &str = "tokenizer-e351c8d8-checkpoint125.safetensors";
pub const RELEASED_TOKENIZER: &str = "tokenizer_spm_32k_3.model";

/// Every file a Moshi needs, with the configurations.
#[derive(Debug, Clone)]
pub struct MoshiFiles {
    pub lm_weights: PathBuf,
    pub lm_config: LmConfig,
    pub mimi_weights: PathBuf,
    pub mimi_config: MimiConfig,
    pub tokenizer: PathBuf,
}

fn existing(path: PathBuf, what: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(EngineError::ModelFiles { path, msg: format!("the {what} file is not there") })
    }
}

impl MoshiFiles {
    /// The files of a folder. With a `config.json` (Kyutai's layout, as `CheckpointInfo` reads it:
    /// the LM fields at top level; `moshi_name`, `mimi_name`, `tokenizer_name` and the optional
    /// `mimi_config_name` (a Mimi config file; the real Mimi's when absent), relative to the
    /// folder), those; without one, the released file names and the 7B / real-Mimi configs.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let (lm_config, lm, mimi, tok, mimi_config) = if cfg_path.is_file() {
            let lm_config = LmConfig::from_json_file(&cfg_path)?;
            let err = |msg: String| EngineError::Config { path: cfg_path.display().to_string(), msg };
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| err(e.to_string()))?;
            let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
            let name = |key: &str, default: &str| raw.get(key).and_then(|v| v.as_str()).unwrap_or(default).to_string();
            let mimi_config = match raw.get("mimi_config_name").and_then(|v| v.as_str()) {
                Some(rel) => MimiConfig::from_json_file(&dir.join(rel))?,
                None => MimiConfig::default(),
            };
            (lm_config, name("moshi_name", RELEASED_LM), name("mimi_name", RELEASED_MIMI), name("tokenizer_name", RELEASED_TOKENIZER), mimi_config)
        } else {
            (LmConfig::default(), RELEASED_LM.into(), RELEASED_MIMI.into(), RELEASED_TOKENIZER.into(), MimiConfig::default())
        };
        Ok(Self {
            lm_weights: existing(dir.join(lm), "LM weights")?,
            lm_config,
            mimi_weights: existing(dir.join(mimi), "Mimi weights")?,
            mimi_config,
            tokenizer: existing(dir.join(tok), "SentencePiece tokenizer")?,
        })
    }

    /// Load everything, checking names and shapes before reading tensors.
    pub fn load(&self, dtype: DType, device: &Device) -> Result<Moshi> {
        // Mimi runs in f32 whatever the LM's dtype: every reference anchor is f32, and it is small.
        let mimi = Mimi::load(&self.mimi_weights, &self.mimi_config, DType::F32, device)?;
        let lm = LmModel::load(std::slice::from_ref(&self.lm_weights), &self.lm_config, dtype, device)?;
        let tokenizer = Tokenizer::from_file(&self.tokenizer)?;
        Moshi::new(mimi, lm, tokenizer)
    }
}

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
use crate::weights::LoadOptions;

/// File names in Kyutai's released repositories.
pub const RELEASED_LM: &str = "model.safetensors";
pub const RELEASED_MIMI: &str = "tokenizer-e351c8d8-checkpoint125.safetensors";
pub const RELEASED_TOKENIZER: &str = "tokenizer_spm_32k_3.model";
/// The LM file of Kyutai's 8-bit Candle repositories (`kyutai/moshiko-candle-q8`).
pub const RELEASED_LM_Q8: &str = "model.q8.gguf";

/// The file names a Moshi folder or repository holds, as Kyutai's `config.json` gives them
/// (`CheckpointInfo.from_hf_repo` in the reference: `moshi_name`, `mimi_name`, `tokenizer_name`,
/// the optional `mimi_config_name`), or the released names when there is no `config.json` (the
/// legacy moshiko/moshika repositories).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub lm: String,
    pub mimi: String,
    pub tokenizer: String,
    /// A Mimi config file; the real Mimi's config when absent.
    pub mimi_config: Option<String>,
    /// Whether the names came from a `config.json` (which then also holds the LM config).
    pub from_config: bool,
}

impl Manifest {
    /// The released repositories' names (no `config.json`).
    pub fn released() -> Self {
        Self { lm: RELEASED_LM.into(), mimi: RELEASED_MIMI.into(), tokenizer: RELEASED_TOKENIZER.into(), mimi_config: None, from_config: false }
    }

    /// The names in a Kyutai `config.json`.
    pub fn from_config_json(path: &Path) -> Result<Self> {
        let err = |msg: String| EngineError::Config { path: path.display().to_string(), msg };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let name = |key: &str, default: &str| -> Result<String> {
            match raw.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default.to_string()),
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(v) => Err(err(format!("`{key}` must be a file name, got {v}"))),
            }
        };
        let mimi_config = match raw.get("mimi_config_name") {
            None | Some(serde_json::Value::Null) => None,
            Some(_) => Some(name("mimi_config_name", "")?),
        };
        let m = Self { lm: name("moshi_name", RELEASED_LM)?, mimi: name("mimi_name", RELEASED_MIMI)?, tokenizer: name("tokenizer_name", RELEASED_TOKENIZER)?, mimi_config, from_config: true };
        m.check_supported().map_err(err)?;
        Ok(m)
    }

    /// `config.json` in `dir` when there is one, else the released names (the 8-bit
    /// repositories' when the folder holds `model.q8.gguf` and no `model.safetensors`).
    pub fn of_dir(dir: &Path) -> Result<Self> {
        let cfg = dir.join("config.json");
        if cfg.is_file() {
            Self::from_config_json(&cfg)
        } else if !dir.join(RELEASED_LM).is_file() && dir.join(RELEASED_LM_Q8).is_file() {
            Ok(Self::released_q8())
        } else {
            Ok(Self::released())
        }
    }

    /// The released 8-bit repositories' names (`kyutai/moshiko-candle-q8`, `moshika-candle-q8`:
    /// Kyutai's q8 GGUF LM, the released Mimi and tokenizer).
    pub fn released_q8() -> Self {
        Self { lm: RELEASED_LM_Q8.into(), ..Self::released() }
    }

    /// Layouts moshi-rs does not read (MLX `.npz`/`.safetensors` of Kyutai's MLX repos are named
    /// by the repository; a GGUF Mimi), refused by name before anything is loaded. A GGUF LM is
    /// read (Kyutai's q8 layout, `gguf`).
    fn check_supported(&self) -> std::result::Result<(), String> {
        if self.mimi.to_ascii_lowercase().ends_with(".gguf") {
            return Err(format!("`{}` is a GGUF Mimi; moshi-rs reads Mimi from safetensors (the LM may be GGUF)", self.mimi));
        }
        for f in [&self.lm, &self.mimi] {
            let lower = f.to_ascii_lowercase();
            if lower.ends_with(".npz") || lower.ends_with(".pt") || lower.ends_with(".bin") {
                return Err(format!("`{f}` is not a safetensors checkpoint; moshi-rs reads Kyutai's PyTorch and Candle safetensors layouts"));
            }
        }
        Ok(())
    }

    /// The Mimi config this manifest names, read from `dir` (the real Mimi's when none).
    pub fn mimi_config_in(&self, dir: &Path) -> Result<MimiConfig> {
        match &self.mimi_config {
            Some(rel) => MimiConfig::from_json_file(&dir.join(rel)),
            None => Ok(MimiConfig::default()),
        }
    }
}

fn existing(path: PathBuf, what: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(EngineError::ModelFiles { path, msg: format!("the {what} file is not there") })
    }
}

/// Whether an LM checkpoint's depformer has PersonaPlex's 16 steps (`linears.15`, from the header).
fn personaplex_steps(lm_weights: &Path) -> Result<bool> {
    let header = crate::weights::checkpoint_header(lm_weights)?;
    let has = |name: &str| header.iter().any(|(n, _)| n == name);
    Ok((has("linears.15.weight") && has("depformer_in.15.weight")) || has("depformer.15.linear_in.weight"))
}

/// A config without `personaplex` for a checkpoint whose depformer predicts the user's codebooks
/// too (16 steps for 16 audio streams: PersonaPlex, as `get_moshi_lm` forces `dep_q = 16`)
/// becomes PersonaPlex's: `dep_q` 16 and the real prompt constants (which need the real Mimi's
/// 2048-entry codebooks; another model must say its own in config.json's `personaplex`).
fn with_personaplex_if_needed(mut cfg: LmConfig, lm_weights: &Path) -> Result<LmConfig> {
    if cfg.personaplex.is_some() || cfg.dep_q >= cfg.n_q || cfg.n_q != 16 || !personaplex_steps(lm_weights)? {
        return Ok(cfg);
    }
    if cfg.card != 2048 {
        return Err(EngineError::Config {
            path: lm_weights.display().to_string(),
            msg: "a 16-step depformer (PersonaPlex) with codebooks of other than 2048 entries: give config.json a `personaplex` object with its silence and sine tokens".into(),
        });
    }
    tracing::info!(file = %lm_weights.display(), "the depformer has 16 steps: PersonaPlex (dep_q 16, the real prompt constants)");
    cfg.dep_q = cfg.n_q;
    cfg.personaplex = Some(crate::lm::PersonaPlexConfig::real());
    Ok(cfg)
}

/// Every file a Moshi needs, with the configurations.
#[derive(Debug, Clone)]
pub struct MoshiFiles {
    pub lm_weights: PathBuf,
    pub lm_config: LmConfig,
    pub mimi_weights: PathBuf,
    pub mimi_config: MimiConfig,
    pub tokenizer: PathBuf,
}

impl MoshiFiles {
    /// The files of a folder: those its `config.json` names (Kyutai's layout, see [`Manifest`]:
    /// the LM fields at top level, file names relative to the folder), or without one the
    /// released file names and the 7B / real-Mimi configs. A folder with neither says so.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(EngineError::ModelFiles { path: dir.to_path_buf(), msg: "not a folder".into() });
        }
        let manifest = Manifest::of_dir(dir)?;
        if !manifest.from_config && !dir.join(&manifest.lm).is_file() {
            return Err(EngineError::ModelFiles {
                path: dir.to_path_buf(),
                msg: format!("the folder has no config.json (Kyutai's, naming the model files) and no {RELEASED_LM} (or {RELEASED_LM_Q8}) of the released layout"),
            });
        }
        let lm_weights = existing(dir.join(&manifest.lm), "LM weights")?;
        let lm_config = if manifest.from_config {
            match LmConfig::from_json_file(&dir.join("config.json")) {
                Ok(c) => c,
                // NVIDIA's own code never reads PersonaPlex's config.json (its content is not
                // known here): a PersonaPlex checkpoint gets PersonaPlex 7B's config instead.
                Err(e) => match personaplex_steps(&lm_weights)? {
                    true => LmConfig::personaplex_7b(),
                    false => return Err(e),
                },
            }
        } else {
            LmConfig::default()
        };
        let lm_config = with_personaplex_if_needed(lm_config, &lm_weights)?;
        Ok(Self {
            lm_weights,
            lm_config,
            mimi_weights: existing(dir.join(&manifest.mimi), "Mimi weights")?,
            mimi_config: manifest.mimi_config_in(dir)?,
            tokenizer: existing(dir.join(&manifest.tokenizer), "SentencePiece tokenizer")?,
        })
    }

    /// Load everything, checking names and shapes before reading tensors. A Mimi config without
    /// `num_codebooks` gets the LM's (`LmConfig::mimi_codebooks`), as the reference derives it.
    pub fn load(&self, dtype: DType, device: &Device) -> Result<Moshi> {
        self.load_with(&LoadOptions::dtype(dtype), device)
    }

    /// As `load`, the LM as `options` say (its dtype; 8-bit weights at load or from a GGUF).
    pub fn load_with(&self, options: &LoadOptions, device: &Device) -> Result<Moshi> {
        let dtype = options.dtype;
        // Mimi runs in f32 whatever the LM's dtype: every reference anchor is f32, and it is small.
        let t0 = std::time::Instant::now();
        tracing::info!(file = %self.mimi_weights.display(), ?device, "loading Mimi (f32)");
        let mimi_config = self.mimi_config.clone().with_lm_codebooks(self.lm_config.mimi_codebooks()).map_err(|msg| {
            EngineError::Config { path: self.mimi_weights.display().to_string(), msg: format!("the Mimi config with the LM's codebooks: {msg}") }
        })?;
        let mimi = Mimi::load(&self.mimi_weights, &mimi_config, DType::F32, device)?;
        tracing::info!(file = %self.lm_weights.display(), ?dtype, weights = options.weights.name(), ?device, "loading the LM");
        let lm = LmModel::load_with(std::slice::from_ref(&self.lm_weights), &self.lm_config, options, device)?;
        tracing::info!(file = %self.tokenizer.display(), "loading the tokenizer");
        let tokenizer = Tokenizer::from_file(&self.tokenizer)?;
        tracing::info!(seconds = t0.elapsed().as_secs_f64(), "model loaded");
        Moshi::new(mimi, lm, tokenizer)
    }
}

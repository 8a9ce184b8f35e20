//! Where a whole Moshi comes from: `--model tiny` (embedded), a local folder, a Hugging Face repo
//! (crate::hub: the files its config.json names, through the standard cache), `random`, or files
//! given one by one. Kyutai's `run_inference.py` spellings are accepted as aliases (`--hf-repo`,
//! `--moshi-weight`, `--mimi-weight`, `--lm-config`), with its meaning: a file flag replaces that
//! one file of the model source. Without `--model`: Kyutai's moshiko if it is already in the local
//! cache, else the embedded tiny model (so that the README's first command works offline).

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use clap::Args;
use moshi_engine::conversation::Moshi;
use moshi_engine::lm::LmConfig;
use moshi_engine::mimi::MimiConfig;
use moshi_engine::model_files::MoshiFiles;
use moshi_engine::weights::LoadOptions;

use crate::hub::{self, Need};

/// The repo used when `--model` is not given and it is in the cache.
pub const DEFAULT_REPO: &str = "kyutai/moshiko-pytorch-bf16";

#[derive(Debug, Clone, Args)]
pub struct MoshiSource {
    /// `tiny` (embedded, random weights: a correctness anchor, not speech), a folder, or a Hugging
    /// Face repo id such as kyutai/moshiko-pytorch-bf16, kyutai/moshiko-candle-bf16 or
    /// kyutai/moshiko-candle-q8 (8-bit GGUF). Default:
    /// kyutai/moshiko-pytorch-bf16 when already cached, else tiny. `random` (or `random:LAYERS`):
    /// the full-size architecture with random weights made on the device, for benchmarks;
    /// `random-personaplex[:LAYERS]` the same for PersonaPlex (16-step depformer).
    #[arg(long, visible_alias = "hf-repo")]
    pub model: Option<String>,
    /// LM weights (safetensors, Kyutai's PyTorch or Candle layout, or Kyutai's q8 GGUF): replaces the model's, or with
    /// --mimi-weights and --tokenizer stands alone.
    #[arg(long, visible_alias = "moshi-weight")]
    pub lm_weights: Option<PathBuf>,
    /// Mimi weights (safetensors): replaces the model's.
    #[arg(long, visible_alias = "mimi-weight")]
    pub mimi_weights: Option<PathBuf>,
    /// SentencePiece model (tokenizer_spm_32k_3.model): replaces the model's.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// LM config JSON (Kyutai's field names): replaces the model's (the 7B's for bare files).
    #[arg(long, visible_alias = "lm-config")]
    pub config: Option<PathBuf>,
    /// Mimi config JSON: replaces the model's (the released Mimi's for bare files).
    #[arg(long)]
    pub mimi_config: Option<PathBuf>,
}

pub struct Loaded {
    pub moshi: Moshi,
    /// What was loaded, for logs and summaries.
    pub identity: String,
}

/// `--model random-personaplex` or `random-personaplex:LAYERS`: a full-size PersonaPlex (16-step
/// depformer) with random weights; the layers as `random_layers` gives them.
pub fn random_personaplex_layers(model: &str, default: usize) -> Option<anyhow::Result<usize>> {
    let rest = model.strip_prefix("random-personaplex")?;
    random_layers(&format!("random{rest}"), default)
}

/// `--model random` or `random:LAYERS` (the full-size architecture with random weights): Some(the
/// temporal layers, `default` for plain `random`); None for any other model.
pub fn random_layers(model: &str, default: usize) -> Option<anyhow::Result<usize>> {
    let rest = model.strip_prefix("random")?;
    Some(match rest.strip_prefix(':') {
        Some(n) => n.parse().map_err(|_| anyhow::anyhow!("--model random:LAYERS, got `{model}`")),
        None if rest.is_empty() => Ok(default),
        None => Err(anyhow::anyhow!("--model random or random:LAYERS, got `{model}`")),
    })
}

/// Where the files come from before the per-file flags apply.
enum Base {
    Tiny,
    /// Temporal layers; PersonaPlex's architecture.
    Random(usize, bool),
    Files(Box<MoshiFiles>, String),
    /// Nothing: the file flags must name every file.
    None,
}

impl MoshiSource {
    fn overrides_any(&self) -> bool {
        self.lm_weights.is_some() || self.mimi_weights.is_some() || self.tokenizer.is_some() || self.config.is_some() || self.mimi_config.is_some()
    }

    /// Check what can be checked without loading anything: the named files exist, the flags fit
    /// together, a repo's layout is one moshi-rs reads.
    pub fn precheck(&self) -> anyhow::Result<()> {
        for (flag, p) in [
            ("--lm-weights", &self.lm_weights),
            ("--mimi-weights", &self.mimi_weights),
            ("--tokenizer", &self.tokenizer),
            ("--config", &self.config),
            ("--mimi-config", &self.mimi_config),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    bail!("{flag} {}: no such file", p.display());
                }
            }
        }
        match self.model.as_deref() {
            Some(m) if m == "tiny" || m.starts_with("random") => {
                if self.overrides_any() {
                    bail!("--model {m} brings its own files; --lm-weights, --mimi-weights, --tokenizer and the configs go with a folder, a repo or alone");
                }
                match random_personaplex_layers(m, 32) {
                    Some(r) => drop(r?),
                    None => drop(random_layers(m, 32).transpose()?),
                }
            }
            Some(m) => {
                let p = PathBuf::from(m);
                if p.is_file() {
                    bail!("--model {m}: a file; give a folder, a repo id, or --lm-weights/--mimi-weights/--tokenizer");
                }
                if !p.is_dir() {
                    if hub::is_repo_id(m) {
                        hub::refuse_unsupported(m)?;
                    } else {
                        bail!("--model {m}: not `tiny`, `random`, an existing folder, or a Hugging Face repo id (owner/name)");
                    }
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Load the model; the device is synchronized before returning (the model may then be used
    /// from another thread's stream: see `moshi_engine::prepare_device`).
    pub fn load(&self, dtype: DType, device: &Device) -> anyhow::Result<Loaded> {
        self.load_with(&LoadOptions::dtype(dtype), device)
    }

    /// As `load`, the LM as `options` say (its dtype, 8-bit weights or not).
    pub fn load_with(&self, options: &LoadOptions, device: &Device) -> anyhow::Result<Loaded> {
        self.precheck()?;
        let loaded = self.load_unsynced(options, device)?;
        device.synchronize().context("synchronizing the device after loading")?;
        Ok(loaded)
    }

    fn base(&self) -> anyhow::Result<Base> {
        let all_files = self.lm_weights.is_some() && self.mimi_weights.is_some() && self.tokenizer.is_some();
        Ok(match self.model.as_deref() {
            Some("tiny") => Base::Tiny,
            Some(m) if m.starts_with("random-personaplex") => Base::Random(random_personaplex_layers(m, 32).expect("the prefix")?, true),
            Some(m) if m.starts_with("random") => Base::Random(random_layers(m, 32).expect("starts with `random`")?, false),
            Some(m) if PathBuf::from(m).is_dir() => Base::Files(Box::new(MoshiFiles::from_dir(&PathBuf::from(m))?), format!("folder {m}")),
            Some(m) => {
                let r = hub::resolve(m, Need::Moshi)?;
                Base::Files(Box::new(MoshiFiles::from_dir(&r.dir)?), format!("{m} (Hugging Face)"))
            }
            None if all_files => Base::None,
            None => match hub::cached(DEFAULT_REPO, Need::Moshi) {
                Some(r) => Base::Files(Box::new(MoshiFiles::from_dir(&r.dir)?), format!("{DEFAULT_REPO} (cached)")),
                None if self.overrides_any() => bail!(
                    "{DEFAULT_REPO} is not in the local cache: with no --model, --lm-weights, --mimi-weights and --tokenizer must all be given"
                ),
                None => {
                    eprintln!("{DEFAULT_REPO} is not in the local Hugging Face cache: using the embedded tiny model (random weights, not speech); pass --model {DEFAULT_REPO} to download it");
                    Base::Tiny
                }
            },
        })
    }

    fn load_unsynced(&self, options: &LoadOptions, device: &Device) -> anyhow::Result<Loaded> {
        let dtype = options.dtype;
        let (mut files, mut identity) = match self.base()? {
            Base::Tiny => {
                tracing::info!(?dtype, ?device, "loading the embedded tiny model");
                return Ok(Loaded { moshi: moshi_engine::tiny::load_moshi_with(options, device)?, identity: "tiny (embedded)".into() });
            }
            Base::Random(layers, personaplex) => {
                tracing::info!(layers, personaplex, ?dtype, ?device, "drawing a random full-size model");
                let bar = crate::progress::WeightsBar::new("drawing random weights");
                let cfg = moshi_engine::random_model::random_lm_config(layers, personaplex);
                let moshi = moshi_engine::random_model::build_config_on_with(cfg, options, device, &mut |d, t| bar.update(d, t))?;
                let what = if personaplex { " PersonaPlex" } else { "" };
                return Ok(Loaded { moshi, identity: format!("random full-size{what} ({layers} temporal layers), made on the device") });
            }
            Base::Files(files, identity) => (*files, identity),
            Base::None => {
                let lm = self.lm_weights.clone().expect("all files given");
                let mimi = self.mimi_weights.clone().expect("all files given");
                let tok = self.tokenizer.clone().expect("all files given");
                let identity = format!("files: {}, {}, {}", lm.display(), mimi.display(), tok.display());
                let files = MoshiFiles { lm_weights: lm, lm_config: LmConfig::default(), mimi_weights: mimi, mimi_config: MimiConfig::default(), tokenizer: tok };
                (files, identity)
            }
        };
        let mut replaced = Vec::new();
        if let Some(p) = &self.lm_weights {
            files.lm_weights = p.clone();
            replaced.push(format!("LM {}", p.display()));
        }
        if let Some(p) = &self.mimi_weights {
            files.mimi_weights = p.clone();
            replaced.push(format!("Mimi {}", p.display()));
        }
        if let Some(p) = &self.tokenizer {
            files.tokenizer = p.clone();
            replaced.push(format!("tokenizer {}", p.display()));
        }
        if let Some(p) = &self.config {
            files.lm_config = LmConfig::from_json_file(p)?;
            replaced.push(format!("LM config {}", p.display()));
        }
        if let Some(p) = &self.mimi_config {
            files.mimi_config = MimiConfig::from_json_file(p)?;
            replaced.push(format!("Mimi config {}", p.display()));
        }
        if !replaced.is_empty() && !identity.starts_with("files:") {
            identity = format!("{identity} with {}", replaced.join(", "));
        }
        Ok(Loaded { moshi: files.load_with(options, device)?, identity })
    }
}

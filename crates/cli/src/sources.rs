//! Where a whole Moshi comes from: `--model tiny` (embedded), a local folder, a Hugging Face repo
//! (downloaded through the standard cache: HF_HOME and HF_HUB_OFFLINE are honoured), or files given
//! one by one. Without `--model`: Kyutai's moshiko if it is already in the local cache, else the
//! embedded tiny model (so that the README's first command works offline on a fresh machine).

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use clap::Args;
use moshi_engine::conversation::Moshi;
use moshi_engine::lm::LmConfig;
use moshi_engine::mimi::MimiConfig;
use moshi_engine::model_files::{MoshiFiles, RELEASED_LM, RELEASED_MIMI, RELEASED_TOKENIZER};

/// The repo used when `--model` is not given and it is in the cache.
pub const DEFAULT_REPO: &str = "kyutai/moshiko-pytorch-bf16";

#[derive(Debug, Clone, Args)]
pub struct MoshiSource {
    /// `tiny` (embedded, random weights: a correctness anchor, not speech), a folder, or a Hugging
    /// Face repo id such as kyutai/moshiko-pytorch-bf16 or kyutai/moshiko-candle-bf16. Default:
    /// kyutai/moshiko-pytorch-bf16 when already cached, else tiny. `random` (or `random:LAYERS`):
    /// the full-size architecture with random weights made on the device, for benchmarks.
    #[arg(long)]
    pub model: Option<String>,
    /// LM weights (safetensors, Kyutai's PyTorch or Candle layout), instead of --model.
    #[arg(long, requires_all = ["mimi_weights", "tokenizer"])]
    pub lm_weights: Option<PathBuf>,
    /// Mimi weights (safetensors).
    #[arg(long)]
    pub mimi_weights: Option<PathBuf>,
    /// SentencePiece model (tokenizer_spm_32k_3.model).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// LM config JSON (Kyutai's field names); the 7B's when absent.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Mimi config JSON; the released Mimi's when absent.
    #[arg(long)]
    pub mimi_config: Option<PathBuf>,
}

pub struct Loaded {
    pub moshi: Moshi,
    /// What was loaded, for logs and summaries.
    pub identity: String,
}

fn hf_cached(repo: &str) -> Option<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    let r = cache.model(repo.to_string());
    let lm = r.get(RELEASED_LM)?;
    r.get(RELEASED_MIMI)?;
    r.get(RELEASED_TOKENIZER)?;
    lm.parent().map(|p| p.to_path_buf())
}

fn hf_download(repo: &str) -> anyhow::Result<PathBuf> {
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
        return hf_cached(repo).with_context(|| format!("HF_HUB_OFFLINE=1 and {repo} is not (completely) in the local cache"));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true).build().context("Hugging Face API")?;
    let r = api.model(repo.to_string());
    // config.json is optional (the moshiko repos have none): a failure to fetch it is not an error.
    let _ = r.get("config.json");
    let lm = r.get(RELEASED_LM).with_context(|| format!("downloading {RELEASED_LM} from {repo}"))?;
    r.get(RELEASED_MIMI).with_context(|| format!("downloading {RELEASED_MIMI} from {repo}"))?;
    r.get(RELEASED_TOKENIZER).with_context(|| format!("downloading {RELEASED_TOKENIZER} from {repo}"))?;
    Ok(lm.parent().context("snapshot folder")?.to_path_buf())
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

impl MoshiSource {
    /// Load the model; the device is synchronized before returning (the model may then be used
    /// from another thread's stream: see `moshi_engine::prepare_device`).
    pub fn load(&self, dtype: DType, device: &Device) -> anyhow::Result<Loaded> {
        let loaded = self.load_unsynced(dtype, device)?;
        device.synchronize().context("synchronizing the device after loading")?;
        Ok(loaded)
    }

    fn load_unsynced(&self, dtype: DType, device: &Device) -> anyhow::Result<Loaded> {
        if let Some(lm) = &self.lm_weights {
            if self.model.is_some() {
                bail!("--model and --lm-weights exclude each other");
            }
            let files = MoshiFiles {
                lm_weights: lm.clone(),
                lm_config: match &self.config {
                    Some(p) => LmConfig::from_json_file(p)?,
                    None => LmConfig::default(),
                },
                mimi_weights: self.mimi_weights.clone().context("--mimi-weights")?,
                mimi_config: match &self.mimi_config {
                    Some(p) => MimiConfig::from_json_file(p)?,
                    None => MimiConfig::default(),
                },
                tokenizer: self.tokenizer.clone().context("--tokenizer")?,
            };
            let identity = format!("files: {}, {}, {}", lm.display(), files.mimi_weights.display(), files.tokenizer.display());
            return Ok(Loaded { moshi: files.load(dtype, device)?, identity });
        }
        if self.config.is_some() || self.mimi_config.is_some() {
            bail!("--config / --mimi-config go with --lm-weights; a folder or repo brings its own config.json");
        }
        let (dir, identity) = match self.model.as_deref() {
            Some("tiny") => return Ok(Loaded { moshi: moshi_engine::tiny::load_moshi(dtype, device)?, identity: "tiny (embedded)".into() }),
            Some(m) if m == "random" || m.starts_with("random:") => {
                let layers = random_layers(m, 32).expect("starts with `random`")?;
                let moshi = moshi_engine::random_model::build_on(layers, dtype, device)?;
                return Ok(Loaded { moshi, identity: format!("random full-size ({layers} temporal layers), made on the device") });
            }
            None => match hf_cached(DEFAULT_REPO) {
                Some(dir) => (dir, format!("{DEFAULT_REPO} (cached)")),
                None => {
                    eprintln!("{DEFAULT_REPO} is not in the local Hugging Face cache: using the embedded tiny model (random weights, not speech); pass --model {DEFAULT_REPO} to download it");
                    return Ok(Loaded { moshi: moshi_engine::tiny::load_moshi(dtype, device)?, identity: "tiny (embedded)".into() });
                }
            },
            Some(m) => {
                let p = PathBuf::from(m);
                if p.is_dir() {
                    (p, format!("folder {m}"))
                } else if p.exists() {
                    bail!("--model {m}: a file; give a folder, a repo id, or --lm-weights/--mimi-weights/--tokenizer");
                } else if m.split('/').count() == 2 && !m.starts_with('.') && !m.starts_with('/') {
                    (hf_download(m)?, format!("{m} (Hugging Face)"))
                } else {
                    bail!("--model {m}: not `tiny`, an existing folder, or a Hugging Face repo id (owner/name)");
                }
            }
        };
        let files = MoshiFiles::from_dir(&dir)?;
        Ok(Loaded { moshi: files.load(dtype, device)?, identity })
    }
}

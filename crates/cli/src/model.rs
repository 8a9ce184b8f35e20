//! Where the model comes from (`--model tiny | DIR | FILE`), on which device, in which dtype.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use moshi_engine::mimi::{self, Mimi, MimiConfig};
use moshi_engine::model_files::Manifest;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Metal,
}

/// How the LM's streaming KV cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvCacheArg {
    /// The model's dtype (bf16 with `--dtype bf16`), as the reference.
    Model,
    /// 8-bit values with a scale per row, head and position: half of bf16's memory.
    Int8,
}

impl KvCacheArg {
    pub fn kind(self) -> moshi_engine::exec::KvCacheKind {
        use moshi_engine::exec::KvCacheKind;
        match self {
            KvCacheArg::Model => KvCacheKind::Model,
            KvCacheArg::Int8 => KvCacheKind::Int8,
        }
    }

    /// The run's options with this KV cache (the one per-run choice the CLI offers today; the
    /// device and dtype go to the loader).
    pub fn run_options(self) -> moshi_engine::exec::RunOptions {
        moshi_engine::exec::RunOptions::default().with_kv_cache(self.kind())
    }
}

/// Where and how a model runs: the flags `run`, `serve`, `bench` and `lm bench` share. The device
/// and dtype go to the loader, the KV cache to each conversation's [`RunOptions`](moshi_engine::exec::RunOptions).
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Where the model runs (cuda and metal need a build with that feature).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// The LM's dtype; Mimi always runs in f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// How the LM's KV cache stores keys and values: the model's dtype, or 8-bit (half the
    /// memory of bf16; its accuracy is in docs/benchmarks.md).
    #[arg(long, value_enum, default_value = "model")]
    pub kv_cache: KvCacheArg,
    /// Where tokens are sampled: on the GPU where the model runs on one (CUDA), or on the host.
    /// Both give the same tokens for the same seed (`verify model` checks it).
    #[arg(long, value_enum, default_value = "device")]
    pub sampler: SamplerArg,
    /// On CUDA with the device sampler: replay the depformer's steps and their sampling as a
    /// CUDA graph recorded once per conversation and shape (`off`: launch every op, as before;
    /// the tokens are the same). No effect elsewhere.
    #[arg(long, value_enum, default_value = "on")]
    pub cuda_graphs: OnOff,
    /// How the LM's linear layers are stored: as the checkpoint has them (in --dtype; a GGUF's
    /// 8-bit layers stay 8-bit), or q8: quantized to 8 bits (Q8_0, Kyutai's model.q8.gguf
    /// format) at load, half of bf16's memory. Activations stay in --dtype.
    #[arg(long, value_enum, default_value = "model")]
    pub weights: WeightsArg,
}

/// `--weights`: how the LM's weights are stored once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightsArg {
    /// As the checkpoint has them, in the LM's dtype.
    Model,
    /// 8-bit (Q8_0) linear layers, quantized at load.
    Q8,
}

impl WeightsArg {
    pub fn format(self) -> moshi_engine::weights::WeightFormat {
        match self {
            WeightsArg::Model => moshi_engine::weights::WeightFormat::Model,
            WeightsArg::Q8 => moshi_engine::weights::WeightFormat::Q8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SamplerArg {
    /// On the model's device where it can (CUDA); on the host elsewhere.
    Device,
    /// Always on the host (one download of the logits per sampling call).
    Host,
}

impl RuntimeArgs {
    /// What the loader is asked for: the LM's dtype and how its weights are stored.
    pub fn load_options(&self) -> moshi_engine::weights::LoadOptions {
        moshi_engine::weights::LoadOptions::dtype(dtype(self.dtype)).with_weights(self.weights.format())
    }

    /// The run's options: the KV cache and the sampler (the device and dtype go to the loader).
    pub fn run_options(&self) -> moshi_engine::exec::RunOptions {
        let sampler = match self.sampler {
            SamplerArg::Device => moshi_engine::exec::Sampler::Device,
            SamplerArg::Host => moshi_engine::exec::Sampler::Host,
        };
        moshi_engine::exec::RunOptions { sampler, cuda_graphs: self.cuda_graphs == OnOff::On, ..self.kv_cache.run_options() }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// `tiny` (the small reference-built model embedded in the binary), a Moshi folder or Hugging
    /// Face repo id (as `run --model` takes them: their Mimi), a folder holding a Mimi config.json
    /// and one safetensors file, or a Mimi safetensors file (the released
    /// tokenizer-e351c8d8-checkpoint125.safetensors; real Mimi config unless --config).
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// A Mimi config JSON (Kyutai's field names) overriding the one implied by --model.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where Mimi runs (cuda and metal need a build with that feature).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Mimi runs in f32 in every reference anchor; bf16 is offered for experiments.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
}

/// Sampling flags shared by `run` and `serve` (the reference's defaults). A temperature of 0 is
/// greedy for that stream.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Greedy decoding (argmax) for text and audio; the sampling flags are then ignored.
    #[arg(long)]
    pub greedy: bool,
    /// Audio sampling temperature (≥ 0; 0 is greedy). Default: the checkpoint's `lm_gen_config`,
    /// else 0.8.
    #[arg(long, value_parser = crate::values::temperature, allow_negative_numbers = true)]
    pub temperature: Option<f64>,
    /// Text sampling temperature (≥ 0; 0 is greedy). Default: `lm_gen_config`, else 0.7.
    #[arg(long, value_parser = crate::values::temperature, allow_negative_numbers = true)]
    pub text_temperature: Option<f64>,
    /// Audio tokens sampled among the k most likely (≥ 1). Default: `lm_gen_config`, else 250.
    #[arg(long, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub top_k: Option<usize>,
    /// Text tokens sampled among the k most likely (≥ 1). Default: `lm_gen_config`, else 25.
    #[arg(long, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub text_top_k: Option<usize>,
}

impl SamplingArgs {
    /// The settings these flags give over `defaults` (the checkpoint's `lm_gen_config`, see
    /// `LmConfig::default_sampling`): each flag given replaces that one value.
    pub fn gen_config(&self, defaults: moshi_engine::lm::GenConfig) -> moshi_engine::lm::GenConfig {
        use moshi_engine::lm::{GenConfig, SamplingConfig};
        if self.greedy {
            return GenConfig::greedy();
        }
        // A greedy default has no top-k of its own: a temperature given alone samples among the
        // reference's default k.
        let merge = |d: SamplingConfig, reference: SamplingConfig, t: Option<f64>, k: Option<usize>| {
            if t.is_none() && k.is_none() {
                return d;
            }
            let (dt, dk) = if d.is_greedy() { (0.0, reference.top_k) } else { (d.temperature.unwrap_or(0.0), d.top_k) };
            SamplingConfig::from_user(t.unwrap_or(dt), k.unwrap_or(dk)).expect("checked by the value parsers")
        };
        GenConfig {
            text: merge(defaults.text, SamplingConfig::text_default(), self.text_temperature, self.text_top_k),
            audio: merge(defaults.audio, SamplingConfig::audio_default(), self.temperature, self.top_k),
        }
    }
}

/// The name a value enum has on the command line (`cpu`, `bf16`, `int8`): what JSON output uses.
pub fn cli_name(v: &impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// The device `--device` names.
pub fn device(arg: DeviceArg) -> anyhow::Result<Device> {
    let device = match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => {
            let d = Device::new_cuda(0).context("--device cuda (was moshi-rs built with --features cuda?)")?;
            moshi_engine::prepare_device(&d);
            d
        }
        DeviceArg::Metal => Device::new_metal(0).context("--device metal (was moshi-rs built with --features metal?)")?,
    };
    tracing::info!(device = ?device, threads = candle_core::utils::get_num_threads(), "device ready");
    Ok(device)
}

/// The dtype `--dtype` names.
pub fn dtype(arg: DtypeArg) -> DType {
    match arg {
        DtypeArg::F32 => DType::F32,
        DtypeArg::Bf16 => DType::BF16,
    }
}

impl ModelArgs {
    pub fn device(&self) -> anyhow::Result<Device> {
        device(self.device)
    }

    pub fn dtype(&self) -> DType {
        dtype(self.dtype)
    }

    /// The Mimi `--model` names: `tiny`; a Moshi folder (its config.json naming `mimi_name`, as
    /// `run` reads it); a Mimi folder (config.json with Mimi's fields and one safetensors file); a
    /// Mimi safetensors file; or a Hugging Face repo (only its Mimi file and config downloaded).
    pub fn load_mimi(&self) -> anyhow::Result<Mimi> {
        let (device, dtype) = (self.device()?, self.dtype());
        let cfg_override = match &self.config {
            Some(p) => Some(MimiConfig::from_json_file(p)?),
            None => None,
        };
        let path = PathBuf::from(&self.model);
        let from_manifest = |dir: &Path, manifest: &Manifest| -> anyhow::Result<Mimi> {
            let cfg = match &cfg_override {
                Some(c) => c.clone(),
                None => manifest.mimi_config_in(dir)?,
            };
            Ok(Mimi::load(&dir.join(&manifest.mimi), &cfg, dtype, &device)?)
        };
        let mimi = if self.model == "tiny" {
            match cfg_override {
                Some(_) => bail!("--config cannot be combined with --model tiny"),
                None => mimi::tiny::load(dtype, &device)?,
            }
        } else if path.is_dir() {
            match moshi_folder(&path)? {
                Some(manifest) => from_manifest(&path, &manifest)?,
                None => match &cfg_override {
                    Some(cfg) => Mimi::load(&first_safetensors(&path)?, cfg, dtype, &device)?,
                    None => Mimi::load_dir(&path, dtype, &device)?,
                },
            }
        } else if path.is_file() {
            Mimi::load(&path, &cfg_override.clone().unwrap_or_default(), dtype, &device)?
        } else if crate::hub::is_repo_id(&self.model) {
            let r = crate::hub::resolve(&self.model, crate::hub::Need::Mimi)?;
            from_manifest(&r.dir, &r.manifest)?
        } else {
            bail!("--model {:?}: not `tiny`, an existing folder or file, or a Hugging Face repo id (owner/name)", self.model)
        };
        Ok(mimi)
    }
}

/// A Moshi folder's manifest when `dir`'s config.json is Kyutai's Moshi config (it names the
/// Mimi file or holds the LM's fields), None for a Mimi folder.
fn moshi_folder(dir: &Path) -> anyhow::Result<Option<Manifest>> {
    let cfg = dir.join("config.json");
    if !cfg.is_file() {
        return Ok(dir.join(moshi_engine::model_files::RELEASED_MIMI).is_file().then(Manifest::released));
    }
    let text = std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
    let raw: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", cfg.display()))?;
    if raw.get("mimi_name").is_some() || raw.get("moshi_name").is_some() || raw.get("text_card").is_some() {
        Ok(Some(Manifest::from_config_json(&cfg)?))
    } else {
        Ok(None)
    }
}

fn first_safetensors(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => bail!("{}: no .safetensors file", dir.display()),
        n => bail!("{}: {n} .safetensors files; pass the Mimi one with --model FILE", dir.display()),
    }
}

//! Where the model comes from (`--model tiny | DIR | FILE`), on which device, in which dtype.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use moshi_engine::mimi::{self, Mimi, MimiConfig};

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
    pub fn kind(self) -> moshi_engine::nn::attention::KvCacheKind {
        use moshi_engine::nn::attention::KvCacheKind;
        match self {
            KvCacheArg::Model => KvCacheKind::Model,
            KvCacheArg::Int8 => KvCacheKind::Int8,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// `tiny` (the small reference-built model embedded in the binary), a folder holding
    /// config.json and a Mimi safetensors file, or a Mimi safetensors file (the released
    /// tokenizer-e351c8d8-checkpoint125.safetensors; real Mimi config unless --config).
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// A Mimi config JSON (Kyutai's field names) overriding the one implied by --model.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Mimi runs in f32 in every reference anchor; bf16 is offered for experiments.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
}

/// The device `--device` names.
/// Sampling flags shared by `run` and `serve` (the reference's defaults).
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Greedy decoding (argmax) for text and audio; the sampling flags are then ignored.
    #[arg(long)]
    pub greedy: bool,
    /// Audio sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.7)]
    pub text_temperature: f64,
    #[arg(long, default_value_t = 250)]
    pub top_k: usize,
    #[arg(long, default_value_t = 25)]
    pub text_top_k: usize,
}

impl SamplingArgs {
    pub fn gen_config(&self) -> moshi_engine::lm::GenConfig {
        use moshi_engine::lm::{GenConfig, SamplingConfig};
        if self.greedy {
            GenConfig::greedy()
        } else {
            GenConfig {
                text: SamplingConfig::sampled(self.text_temperature, self.text_top_k),
                audio: SamplingConfig::sampled(self.temperature, self.top_k),
            }
        }
    }
}

pub fn device(arg: DeviceArg) -> anyhow::Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => {
            let d = Device::new_cuda(0).context("--device cuda (was moshi-rs built with --features cuda?)")?;
            moshi_engine::prepare_device(&d);
            d
        }
        DeviceArg::Metal => Device::new_metal(0).context("--device metal (was moshi-rs built with --features metal?)")?,
    })
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

    pub fn load_mimi(&self) -> anyhow::Result<Mimi> {
        let (device, dtype) = (self.device()?, self.dtype());
        let cfg_override = match &self.config {
            Some(p) => Some(MimiConfig::from_json_file(p)?),
            None => None,
        };
        let mimi = if self.model == "tiny" {
            match cfg_override {
                Some(_) => bail!("--config cannot be combined with --model tiny"),
                None => mimi::tiny::load(dtype, &device)?,
            }
        } else {
            let path = PathBuf::from(&self.model);
            if path.is_dir() {
                match cfg_override {
                    Some(cfg) => Mimi::load(&first_safetensors(&path)?, &cfg, dtype, &device)?,
                    None => Mimi::load_dir(&path, dtype, &device)?,
                }
            } else if path.is_file() {
                Mimi::load(&path, &cfg_override.unwrap_or_default(), dtype, &device)?
            } else {
                bail!("--model {:?}: not `tiny`, an existing folder or an existing file", self.model)
            }
        };
        Ok(mimi)
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

//! A full-size Moshi with random weights (the real Mimi's 318 tensors, a full-width LM with fewer
//! temporal layers, a stand-in vocabulary), for `verify model` and benchmarks where the real
//! checkpoints are not at hand. The tensors are made once, on the CPU in f32, so that the same
//! weights can be built on several devices and dtypes.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::conversation::Moshi;
use crate::error::Result;
use crate::lm::{LmConfig, LmModel};
use crate::mimi::{Mimi, MimiConfig};
use crate::text::Tokenizer;
use crate::weights::LoadOptions;

/// The released Mimi's tensor names and shapes (`name<TAB>[d0, d1, …]<TAB>dtype`).
const MIMI_NAMES: &str = include_str!("../../../golden/mimi_checkpoint_names.txt");

/// Random weights with the released Mimi's names and shapes: convolutions and linears N(0, 1/fan_in),
/// norms 1, LayerScales 0.01, codebook usage 1 (so every entry is its random sum).
pub fn mimi_tensors() -> Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let mut out = HashMap::new();
    for line in MIMI_NAMES.lines().filter(|l| !l.trim().is_empty()) {
        let mut cols = line.split('\t');
        let (name, shape) = (cols.next().unwrap_or_default(), cols.next().unwrap_or("[]"));
        let shape: Vec<usize> =
            shape.trim_matches(|c| c == '[' || c == ']').split(',').filter_map(|d| d.trim().parse().ok()).collect();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let t = if name.ends_with("cluster_usage") || name.ends_with("_initialized") {
            Tensor::ones(shape.as_slice(), DType::F32, &dev)?
        } else if name.ends_with("scale") {
            Tensor::full(0.01f32, shape.as_slice(), &dev)?
        } else if name.contains("norm") && name.ends_with("weight") {
            Tensor::ones(shape.as_slice(), DType::F32, &dev)?
        } else if name.contains("norm") && name.ends_with("bias") {
            Tensor::zeros(shape.as_slice(), DType::F32, &dev)?
        } else {
            Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, shape.as_slice(), &dev)?
        };
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

/// The LM config of a full-size random model: Moshi 7B's, or PersonaPlex 7B's (16-step depformer,
/// prompt constants), with `layers` temporal layers.
pub fn random_lm_config(layers: usize, personaplex: bool) -> LmConfig {
    let base = if personaplex { LmConfig::personaplex_7b() } else { LmConfig::default() };
    LmConfig { num_layers: layers, ..base }
}

/// The random weights of a full-size Moshi with `layers` temporal layers.
pub struct RandomMoshi {
    pub lm_config: LmConfig,
    lm: HashMap<String, Tensor>,
    mimi: HashMap<String, Tensor>,
}

impl RandomMoshi {
    pub fn new(layers: usize) -> Result<Self> {
        Self::new_on(layers, &Device::Cpu)
    }

    /// As `new`, the LM's f32 weights drawn on `device` (a GPU draws the 7B's 7.7 G values in
    /// a second; the CPU takes minutes), built from there on every device.
    pub fn new_on(layers: usize, device: &Device) -> Result<Self> {
        Self::new_on_with(layers, device, &mut |_, _| {})
    }

    /// As `new_on`, reporting `progress(values drawn, values in all)` as it goes.
    pub fn new_on_with(layers: usize, device: &Device, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        Self::with_config_on(random_lm_config(layers, false), device, progress)
    }

    /// As `new_on_with`, for any LM config (`random_lm_config`: Moshi's or PersonaPlex's).
    pub fn with_config_on(lm_config: LmConfig, device: &Device, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        let lm = crate::lm::random::random_weights_with(&lm_config, DType::F32, device, progress)?;
        Ok(Self { lm_config, lm, mimi: mimi_tensors()? })
    }

    /// The model on `device`, the LM in `dtype` (Mimi in f32).
    pub fn build(&self, dtype: DType, device: &Device) -> Result<Moshi> {
        self.build_with(&LoadOptions::dtype(dtype), device)
    }

    /// The model on `device` as `options` say (the LM's dtype, 8-bit weights or not; Mimi in f32).
    pub fn build_with(&self, options: &LoadOptions, device: &Device) -> Result<Moshi> {
        let mimi = Mimi::new(&MimiConfig::default(), VarBuilder::from_tensors(self.mimi.clone(), DType::F32, device))?;
        let lm = LmModel::from_tensors_with(&self.lm_config, self.lm.clone(), options, device)?;
        Moshi::new(mimi, lm, Tokenizer::synthetic(self.lm_config.text_card)?)
    }
}

/// A full-size Moshi with random weights made directly on `device` (the LM in `dtype`, drawn
/// there: 15 GB of bf16 for the 7B in seconds on a GPU; Mimi in f32), for benchmarks, where the
/// values do not matter but the shapes do. Not reproducible across devices.
/// `progress(values drawn, values in all)` is called as the LM's weights are drawn.
pub fn build_on(layers: usize, dtype: DType, device: &Device, progress: &mut dyn FnMut(u64, u64)) -> Result<Moshi> {
    build_config_on(random_lm_config(layers, false), dtype, device, progress)
}

/// As `build_on`, for any LM config (`random_lm_config(layers, true)`: a full-size PersonaPlex).
pub fn build_config_on(lm_config: LmConfig, dtype: DType, device: &Device, progress: &mut dyn FnMut(u64, u64)) -> Result<Moshi> {
    build_config_on_with(lm_config, &LoadOptions::dtype(dtype), device, progress)
}

/// As `build_config_on`, the weights stored as `options.weights` says (`q8`: drawn in the
/// model's dtype, then quantized from those values).
pub fn build_config_on_with(lm_config: LmConfig, options: &LoadOptions, device: &Device, progress: &mut dyn FnMut(u64, u64)) -> Result<Moshi> {
    let mimi = Mimi::new(&MimiConfig::default(), VarBuilder::from_tensors(mimi_tensors()?, DType::F32, device))?;
    let weights = crate::lm::random::random_weights_with(&lm_config, options.dtype, device, progress)?;
    let lm = LmModel::from_tensors_with(&lm_config, weights, options, device)?;
    Moshi::new(mimi, lm, Tokenizer::synthetic(lm_config.text_card)?)
}

/// Writes a full-size Moshi with random weights (the 7B LM with `layers` temporal layers in
/// `dtype`, drawn on `device`; the released Mimi's names in f32; a stand-in SentencePiece model)
/// into `dir` under the released repositories' file names, so that it loads as a folder exactly
/// as a downloaded checkpoint does: for timing start-up from a local disk (`lm write-random`).
/// A `config.json` is written only when `layers` differs from the 7B's 32. Returns the bytes written.
pub fn write_random_checkpoint(dir: &std::path::Path, layers: usize, dtype: DType, device: &Device, progress: &mut dyn FnMut(u64, u64)) -> Result<u64> {
    use crate::error::EngineError;
    use crate::model_files::{RELEASED_LM, RELEASED_MIMI, RELEASED_TOKENIZER};
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let lm_config = LmConfig { num_layers: layers, ..LmConfig::default() };
    let lm = crate::lm::random::random_weights_with(&lm_config, dtype, device, progress)?;
    let mut written = 0u64;
    let lm_path = dir.join(RELEASED_LM);
    candle_core::safetensors::save(&lm, &lm_path)?;
    drop(lm);
    let mimi_path = dir.join(RELEASED_MIMI);
    candle_core::safetensors::save(&mimi_tensors()?, &mimi_path)?;
    let tok_path = dir.join(RELEASED_TOKENIZER);
    std::fs::write(&tok_path, Tokenizer::synthetic_model_bytes(lm_config.text_card)).map_err(io(&tok_path))?;
    let mut files = vec![lm_path, mimi_path, tok_path];
    if layers != LmConfig::default().num_layers {
        let cfg_path = dir.join("config.json");
        let json = serde_json::to_string_pretty(&lm_config).map_err(|e| EngineError::Config { path: cfg_path.display().to_string(), msg: e.to_string() })?;
        std::fs::write(&cfg_path, json).map_err(io(&cfg_path))?;
        files.push(cfg_path);
    }
    for f in &files {
        written += std::fs::metadata(f).map_err(io(f))?.len();
    }
    Ok(written)
}

//! Random LM weights with the real architecture and names (Kyutai's PyTorch layout), for
//! benchmarks and smoke tests where the real checkpoint is not available. Linear weights are
//! N(0, 1/in), embeddings N(0, 1/streams), norm scales 1, so activations stay of order one.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::config::LmConfig;
use crate::error::Result;

/// Every tensor of `cfg`'s PyTorch layout, random, in `dtype` on `device`.
pub fn random_weights(cfg: &LmConfig, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    random_weights_with(cfg, dtype, device, &mut |_, _| {})
}

/// As [`random_weights`], calling `progress(values drawn, values in all)` after each tensor
/// (the 7B's 7.7 G values take minutes on a CPU).
pub fn random_weights_with(cfg: &LmConfig, dtype: DType, device: &Device, progress: &mut dyn FnMut(u64, u64)) -> Result<HashMap<String, Tensor>> {
    let streams = cfg.num_streams() as f64;
    let layout = cfg.pytorch_layout_tensors();
    let total: u64 = layout.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum();
    let mut done = 0u64;
    let mut out = HashMap::new();
    for (name, shape) in layout {
        let t = if name.ends_with(".alpha") {
            Tensor::ones(shape.as_slice(), DType::F32, device)?
        } else {
            let std = if name.contains("emb") { 1.0 / streams.sqrt() } else { 1.0 / (shape[1] as f64).sqrt() };
            Tensor::randn(0f32, std as f32, shape.as_slice(), device)?
        };
        done += shape.iter().product::<usize>() as u64;
        out.insert(name, t.to_dtype(dtype)?);
        progress(done, total);
    }
    Ok(out)
}

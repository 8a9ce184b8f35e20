//! Random LM weights with the real architecture and names (Kyutai's PyTorch layout), for
//! benchmarks and smoke tests where the real checkpoint is not available. Linear weights are
//! N(0, 1/in), embeddings N(0, 1/streams), norm scales 1, so activations stay of order one.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::config::LmConfig;
use crate::error::Result;

/// Every tensor of `cfg`'s PyTorch layout, random, in `dtype` on `device`.
pub fn random_weights(cfg: &LmConfig, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    let streams = cfg.num_streams() as f64;
    let mut out = HashMap::new();
    for (name, shape) in cfg.pytorch_layout_tensors() {
        let t = if name.ends_with(".alpha") {
            Tensor::ones(shape.as_slice(), DType::F32, device)?
        } else {
            let std = if name.contains("emb") { 1.0 / streams.sqrt() } else { 1.0 / (shape[1] as f64).sqrt() };
            Tensor::randn(0f32, std as f32, shape.as_slice(), device)?
        };
        out.insert(name, t.to_dtype(dtype)?);
    }
    Ok(out)
}

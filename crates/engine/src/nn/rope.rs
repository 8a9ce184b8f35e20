//! Interleaved rotary embeddings as `moshi.modules.rope.apply_rope(interleave=True)`: pairs
//! (x[2i], x[2i+1]) rotate by t·ω_i with ω_i = exp(−2i·ln(max_period)/D), all in f32.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Rope {
    /// ω_i, i < D/2, computed in f32 as the reference does.
    freqs: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, max_period: f64) -> Self {
        let step = (-max_period.ln() * 2.0 / head_dim as f64) as f32;
        let freqs = (0..head_dim / 2).map(|i| (i as f32 * step).exp()).collect();
        Self { freqs }
    }

    /// cos and sin tables [T, D/2] for positions `offset .. offset + t`.
    pub fn tables(&self, offset: usize, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.freqs.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            let pos = (offset + p) as f32;
            for &f in &self.freqs {
                let a = f * pos;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((Tensor::from_vec(cos, (t, half), device)?, Tensor::from_vec(sin, (t, half), device)?))
    }

    /// Rotate `x` [B, H, T, D] (any float dtype; rotation computed in f32) at positions from `offset`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_b, _h, t, _d) = x.dims4()?;
        let (cos, sin) = self.tables(offset, t, x.device())?;
        rotate(x, &cos, &sin)
    }

    /// As `apply`, each batch row b at its own positions from `offsets[b]` (rows of a batch
    /// that joined at different steps: tables [B, T, D/2]).
    pub fn apply_rows(&self, x: &Tensor, offsets: &[usize]) -> Result<Tensor> {
        let (b, _h, t, _d) = x.dims4()?;
        let (cos, sin) = self.row_tables(&offsets[..b.min(offsets.len())], t, x.device())?;
        rotate(x, &cos, &sin)
    }

    /// cos and sin tables [B, T, D/2], row b at positions from `offsets[b]`.
    pub fn row_tables(&self, offsets: &[usize], t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let mut cos = Vec::with_capacity(offsets.len());
        let mut sin = Vec::with_capacity(offsets.len());
        for &o in offsets {
            let (c, s) = self.tables(o, t, &Device::Cpu)?;
            cos.push(c);
            sin.push(s);
        }
        let (cos, sin) = (Tensor::stack(&cos, 0)?, Tensor::stack(&sin, 0)?);
        Ok((cos.to_device(device)?, sin.to_device(device)?))
    }
}

/// Rotate `x` [B, H, T, D] with tables from `Rope::tables` ([T, D/2]) or `Rope::row_tables`
/// ([B, T, D/2]); the rotation is computed in f32.
pub fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?.contiguous()?;
    Ok(candle_nn::rotary_emb::rope_i(&xf, cos, sin)?.to_dtype(dtype)?)
}

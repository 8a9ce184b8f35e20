//! Normalisations, Kyutai's four `norm` kinds (`create_norm_fn` in the reference): LayerNorm
//! (Mimi, eps 1e-5, with bias), LayerNorm in f32 (eps 1e-8), RMSNorm computed in f32 (the LM,
//! eps 1e-8, weight `alpha` of shape [1, 1, dim]) and plain RMSNorm (eps 1e-5).

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::weights::get_checked;

/// Which normalisation a transformer uses (Kyutai's `norm` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum NormKind {
    /// `layer_norm`: weight and bias, eps 1e-5.
    #[serde(rename = "layer_norm")]
    LayerNorm,
    /// `rms_norm_f32`: `alpha`, eps 1e-8, computed in f32 whatever the model dtype.
    #[serde(rename = "rms_norm_f32")]
    RmsNormF32,
    /// `layer_norm_f32`: weight and bias, eps 1e-8, computed in f32 whatever the model dtype.
    #[serde(rename = "layer_norm_f32")]
    LayerNormF32,
    /// `rms_norm`: `alpha`, eps 1e-5. The reference computes it in the model's dtype; here it is
    /// computed in f32 and rounded once (the same in f32; in bf16 within bf16's rounding).
    #[serde(rename = "rms_norm")]
    RmsNorm,
}

impl NormKind {
    /// The kind of a Kyutai `norm` name, None for names the reference does not know.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "layer_norm" => Self::LayerNorm,
            "layer_norm_f32" => Self::LayerNormF32,
            "rms_norm" => Self::RmsNorm,
            "rms_norm_f32" => Self::RmsNormF32,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub enum Norm {
    Layer(candle_nn::LayerNorm),
    /// LayerNorm on the input widened to f32 (weights in f32), rounded back.
    LayerF32(candle_nn::LayerNorm),
    /// `alpha` in f32 and in the model's dtype: `exec::rms_norm` picks the form per device.
    RmsF32 { alpha: Tensor, alpha_model: Tensor, eps: f64 },
}

impl Norm {
    pub fn new(kind: NormKind, dim: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(match kind {
            NormKind::LayerNorm => {
                let w = get_checked(vb, &[dim], "weight")?;
                let b = get_checked(vb, &[dim], "bias")?;
                Norm::Layer(candle_nn::LayerNorm::new(w, b, 1e-5))
            }
            NormKind::LayerNormF32 => {
                let w = get_checked(vb, &[dim], "weight")?.to_dtype(DType::F32)?;
                let b = get_checked(vb, &[dim], "bias")?.to_dtype(DType::F32)?;
                Norm::LayerF32(candle_nn::LayerNorm::new(w, b, 1e-8))
            }
            NormKind::RmsNormF32 | NormKind::RmsNorm => {
                let alpha_model = get_checked(vb, &[1, 1, dim], "alpha")?.flatten_all()?;
                let eps = if kind == NormKind::RmsNorm { 1e-5 } else { 1e-8 };
                Norm::RmsF32 { alpha: alpha_model.to_dtype(DType::F32)?, alpha_model, eps }
            }
        })
    }
}

impl Norm {
    /// Bytes of the norm's weights.
    pub fn weight_bytes(&self) -> usize {
        let b = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match self {
            Norm::Layer(ln) | Norm::LayerF32(ln) => b(ln.weight()) + ln.bias().map(b).unwrap_or(0),
            Norm::RmsF32 { alpha_model, .. } => b(alpha_model),
        }
    }
}

impl Norm {
    /// (s, norm(s)) for s = x + r: the residual add and this norm, fused where the seam has a
    /// kernel for both (`exec::add_rms_norm`); otherwise the add, then the norm.
    pub fn add_forward(&self, x: &Tensor, r: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        match self {
            Norm::RmsF32 { alpha, alpha_model, eps } => crate::exec::add_rms_norm(x, r, alpha, alpha_model, *eps),
            _ => {
                let s = (x + r)?;
                let y = self.forward(&s)?;
                Ok((s, y))
            }
        }
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Norm::Layer(ln) => crate::exec::layer_norm(x, ln),
            Norm::LayerF32(ln) => crate::exec::layer_norm(&x.to_dtype(DType::F32)?, ln)?.to_dtype(x.dtype()),
            Norm::RmsF32 { alpha, alpha_model, eps } => crate::exec::rms_norm(x, alpha, alpha_model, *eps),
        }
    }
}

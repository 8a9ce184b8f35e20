//! Bias-free linear layer `y = x · Wᵀ` with W [out, in] as stored in the checkpoint. How the
//! product runs (our CPU weight-streaming kernel for few rows, Candle's matmul otherwise) is the
//! seam's choice: `exec::linear`.

use candle_core::{Module, Tensor};

#[derive(Debug, Clone)]
pub struct Linear {
    /// [out, in], stored as `exec::linear_weight` wants it.
    weight: Tensor,
}

impl Linear {
    pub fn new(weight: Tensor) -> candle_core::Result<Self> {
        Ok(Self { weight: crate::exec::linear_weight(&weight)? })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::exec::linear(x, &self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The fast path and Candle's matmul agree for every row count around the threshold.
    #[test]
    fn small_m_path_matches_candle_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (130, 70), &dev).unwrap();
        let lin = Linear::new(w.clone()).unwrap();
        for m in [1, 2, 3, 8, 9, 17] {
            let x = Tensor::randn(0f32, 1.0, (1, m, 70), &dev).unwrap();
            let ours = lin.forward(&x).unwrap();
            let reference = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            let err = (ours - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(err.to_scalar::<f32>().unwrap() < 1e-4, "m={m}");
        }
    }

    /// bf16 weights: the kernel equals an f32 product of the widened values, rounded to bf16.
    #[test]
    fn small_m_bf16_path_matches_widened_product() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (130, 70), &dev).unwrap().to_dtype(DType::BF16).unwrap();
        let lin = Linear::new(w.clone()).unwrap();
        for m in [1, 2, 8] {
            let x = Tensor::randn(0f32, 1.0, (1, m, 70), &dev).unwrap().to_dtype(DType::BF16).unwrap();
            let ours = lin.forward(&x).unwrap();
            assert_eq!(ours.dtype(), DType::BF16);
            let wf = w.to_dtype(DType::F32).unwrap();
            let reference = x.to_dtype(DType::F32).unwrap().broadcast_matmul(&wf.t().unwrap()).unwrap();
            let err = (ours.to_dtype(DType::F32).unwrap() - &reference).unwrap().abs().unwrap();
            let peak = reference.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            // Only the output rounding to bf16 differs: half an ulp, 2⁻⁹ of the value.
            let e = err.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(e <= peak / 256.0, "m={m}: {e} vs peak {peak}");
        }
    }
}

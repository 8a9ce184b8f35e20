//! Bias-free linear layer `y = x · Wᵀ` with W [out, in] as stored in the checkpoint, in the
//! model's dtype or in 8 bits (Q8_0 blocks: Kyutai's `model.q8.gguf`, or `--weights q8`). How the
//! product runs (our CPU weight-streaming kernel for few rows, Candle's matmul, Candle's 8-bit
//! product) is the seam's choice: `exec::linear`, `exec::linear_q8`.

use candle_core::{DType, Device, Module, Tensor};

use crate::exec::QWeight;

#[derive(Debug, Clone)]
enum Weight {
    /// [out, in], stored as `exec::linear_weight` wants it.
    Float(Tensor),
    Q8(QWeight),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
}

impl Linear {
    pub fn new(weight: Tensor) -> candle_core::Result<Self> {
        Ok(Self { weight: Weight::Float(crate::exec::linear_weight(&weight)?) })
    }

    /// An 8-bit layer.
    pub fn q8(weight: QWeight) -> Self {
        Self { weight: Weight::Q8(weight) }
    }

    /// The float weight; None for an 8-bit layer.
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Float(w) => Some(w),
            Weight::Q8(_) => None,
        }
    }

    /// The 8-bit weight; None for a float layer.
    pub fn q8_weight(&self) -> Option<&QWeight> {
        match &self.weight {
            Weight::Q8(w) => Some(w),
            Weight::Float(_) => None,
        }
    }

    /// [out, in].
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match &self.weight {
            Weight::Float(w) => w.dims2(),
            Weight::Q8(q) => Ok(q.dims()),
        }
    }

    pub fn device(&self) -> Device {
        match &self.weight {
            Weight::Float(w) => w.device().clone(),
            Weight::Q8(q) => q.device(),
        }
    }

    /// Bytes the weight occupies on its device.
    pub fn bytes(&self) -> usize {
        match &self.weight {
            Weight::Float(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Weight::Q8(q) => q.bytes(),
        }
    }

    /// The weight's storage: its float dtype, or None for 8 bits.
    pub fn dtype(&self) -> Option<DType> {
        self.weight().map(Tensor::dtype)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weight {
            Weight::Float(w) => crate::exec::linear(x, w),
            Weight::Q8(q) => crate::exec::linear_q8(x, q),
        }
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

    /// The 8-bit product against the f32 product of the same (dequantized) weights, for 1, 2 and
    /// 17 rows, f32 and bf16 inputs. Candle's CPU kernel quantizes the activations to Q8_0 blocks
    /// too: each activation is off by at most half a step of its block, 1/254 of the block's
    /// peak; over k = 256 terms of random sign the product's error is ≈ √k · that, relative
    /// to a product of size √k · |w||x|: about 1/254 ≈ 4e-3 of the output's scale. 2e-2 of the
    /// output's peak is the bound (a wrong block scale or a transposed weight is off by ≥ 0.3).
    #[test]
    fn q8_product_matches_the_dequantized_weights() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (96, 256), &dev).unwrap();
        let q = QWeight::on(crate::exec::quantize_q8(&w).unwrap(), &dev).unwrap();
        let wd = q.dequantize().unwrap();
        // The weights' own rounding: at most half a step, 1/254 of each block's peak, plus the
        // block scale's own rounding: Candle stores d = peak/127 as f16 (relative error ≤ 2⁻¹¹)
        // while q = round(x / d) used the unrounded d, so |q·d' − x| ≤ d/2 + 127·d·2⁻¹¹ =
        // peak·(1/254 + 1/2048).
        let werr = (&wd - &w).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let wpeak = w.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(werr <= wpeak * (1.0 / 254.0 + 1.0 / 2048.0) * 1.001, "{werr} vs {wpeak}");
        let lin = Linear::q8(q);
        for (m, dtype) in [(1, DType::F32), (2, DType::F32), (17, DType::F32), (1, DType::BF16), (9, DType::BF16)] {
            let x = Tensor::randn(0f32, 1.0, (1, m, 256), &dev).unwrap().to_dtype(dtype).unwrap();
            let ours = lin.forward(&x).unwrap();
            assert_eq!((ours.dtype(), ours.dims()), (dtype, &[1, m, 96][..]));
            let reference = x.to_dtype(DType::F32).unwrap().broadcast_matmul(&wd.t().unwrap()).unwrap();
            let err = (ours.to_dtype(DType::F32).unwrap() - &reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let peak = reference.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let e = err.to_scalar::<f32>().unwrap();
            assert!(e <= 2e-2 * peak, "m={m} {dtype:?}: {e} vs peak {peak}");
        }
    }
}

//! 8-bit weights: a linear layer's weight in GGML's Q8_0 block format (blocks of 32 values along
//! a row, each an f16 scale and 32 signed bytes: 34 bytes for 32 weights, 1.0625 bytes a
//! weight), the format of Kyutai's `model.q8.gguf` and of `--weights q8`. The product runs
//! behind the seam (`exec::linear_q8`); which kernel takes it per device is decided here.
//!
//! | device | kernel |
//! |---|---|
//! | CPU | Candle's Q8_0 product (`QMatMul`): the activations are quantized to Q8_0 blocks too and the dot products run on bytes (ggml's scheme) |
//! | CUDA | Candle's `QMatMul`: its MMVQ kernel (activations quantized to 8 bits per block, one pass over the weight bytes) for ≤ 8 rows, MMQ or dequantize + GEMM above |
//! | Metal | Candle's `QMatMul` (built, not run here) |
//!
//! Our own CUDA kernel (an 8-bit weight × bf16 activation product reading each weight byte once,
//! issue 17 item 3) is to be added as one more arm of [`linear_q8`], if the measurements on the
//! H200 say Candle's is slow on Moshi's shapes.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::{Backend, Policy};

/// GGML's block length for Q8_0: a row's length must be a multiple of it.
pub const Q8_BLOCK: usize = 32;

/// Whether a tensor of this shape is stored as Q8_0 in Kyutai's `model.q8.gguf`: every
/// rank-2 tensor whose rows are a whole number of blocks (the rule of Candle's `tensor-tools
/// quantize`, which wrote the file: linear weights and embedding tables alike); the others (the
/// norms' `alpha` [1, 1, d], narrow rows) stay f32. `--weights q8` applies the same rule, so that
/// both give the same model.
pub fn is_q8_shape(shape: &[usize]) -> bool {
    shape.len() == 2 && shape[1] > 0 && shape[1] % Q8_BLOCK == 0
}

/// A linear layer's weight [out, in] in Q8_0, on its device, ready for the product.
#[derive(Debug, Clone)]
pub struct QWeight {
    qtensor: Arc<QTensor>,
    matmul: QMatMul,
    out_dim: usize,
    in_dim: usize,
}

impl QWeight {
    /// From a Q8_0 tensor [out, in] (read from a GGUF file or made by [`quantize_q8`]).
    pub fn new(qtensor: QTensor) -> candle_core::Result<Self> {
        if qtensor.dtype() != GgmlDType::Q8_0 {
            candle_core::bail!("an 8-bit linear weight must be Q8_0, got {:?}", qtensor.dtype());
        }
        let (out_dim, in_dim) = qtensor.shape().dims2()?;
        let qtensor = Arc::new(qtensor);
        // `from_arc` keeps a Q8_0 tensor quantized unless CANDLE_DEQUANTIZE_ALL is set; we
        // want the 8-bit product whatever the environment says.
        let matmul = QMatMul::QTensor(qtensor.clone());
        Ok(Self { qtensor, matmul, out_dim, in_dim })
    }

    /// [out, in].
    pub fn dims(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    pub fn device(&self) -> Device {
        self.qtensor.device()
    }

    pub fn qtensor(&self) -> &QTensor {
        &self.qtensor
    }

    /// Bytes the weight occupies (its blocks).
    pub fn bytes(&self) -> usize {
        self.qtensor.storage_size_in_bytes()
    }

    /// The weight as f32 values (each block's scale times its bytes): what the 8-bit product
    /// multiplies by, for checks.
    pub fn dequantize(&self) -> candle_core::Result<Tensor> {
        self.qtensor.dequantize(&self.qtensor.device())
    }
}

/// Quantize `w` (any float dtype, any device) to Q8_0 onto `device`. The blocks are computed on
/// the CPU in f32 (Candle's reference quantizer), so the same values give the same bytes
/// whatever the device and the dtype the model runs in.
pub fn quantize_q8(w: &Tensor, device: &Device) -> candle_core::Result<QTensor> {
    let q = QTensor::quantize(&owned_f32(w)?, GgmlDType::Q8_0)?;
    match device {
        Device::Cpu => Ok(q),
        _ => QTensor::new(candle_core::quantized::QStorage::from_data(q.data()?, device, GgmlDType::Q8_0)?, q.shape()),
    }
}

/// `w`'s values in f32 on the CPU, in storage of their own. Candle's quantizer reads a tensor's
/// storage from its start whatever the view (a narrowed step of a stacked projection would be
/// quantized from step 0's rows), so it is only ever given a fresh copy.
pub fn owned_f32(w: &Tensor) -> candle_core::Result<Tensor> {
    let v = w.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Tensor::from_vec(v, w.shape(), &Device::Cpu)
}

/// x [.., k] · wᵀ for an 8-bit weight [n, k]: the output in x's dtype (f32 or bf16; the
/// product accumulates in f32 or int32 inside Candle's kernels).
pub fn linear_q8(x: &Tensor, w: &QWeight) -> candle_core::Result<Tensor> {
    let p = Policy::current(x.device());
    let x = p.input("linear_q8", x)?;
    if x.dims().last() != Some(&w.in_dim) {
        candle_core::bail!("linear_q8: input {:?} for a weight [{}, {}]", x.dims(), w.out_dim, w.in_dim);
    }
    // Candle's quantized kernels read a contiguous input of rank ≥ 2.
    let x = x.contiguous()?;
    let x = if x.rank() == 1 { x.unsqueeze(0)? } else { x };
    let dtype = x.dtype();
    match (p.backend, dtype) {
        // CPU (bf16 widened once inside) and CUDA (MMVQ/MMQ quantize either to 8 bits) take f32
        // and bf16 as they are; our own CUDA kernel, when there is one, goes here.
        (Backend::Cpu | Backend::Cuda, DType::F32 | DType::BF16) => w.matmul.forward(&x),
        (_, DType::F32) => w.matmul.forward(&x),
        // Metal's quantized kernels, and other dtypes: through f32.
        _ => w.matmul.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype),
    }
}

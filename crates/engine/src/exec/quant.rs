//! 8-bit weights: a linear layer's weight in GGML's Q8_0 block format (blocks of 32 values along
//! a row, each an f16 scale and 32 signed bytes: 34 bytes for 32 weights, 1.0625 bytes a
//! weight), the format of Kyutai's `model.q8.gguf` and of `--weights q8`. The product runs
//! behind the seam (`exec::linear_q8`); which kernel takes it per device is decided here.
//!
//! | device | layout | kernel |
//! |---|---|---|
//! | CPU | Candle's Q8_0 blocks | Candle's Q8_0 product (`QMatMul`): the activations are quantized to Q8_0 blocks too and the dot products run on bytes (ggml's scheme) |
//! | CUDA | [`PackedQ8`]: the same values re-packed into int8 [N, K] and f16 scales [N, K/32] (16-byte aligned rows, same 1.0625 bytes a weight) | ≤ 16 rows: our `q8_matvec`, one pass over the weights per 8 rows (bf16 or f32 activations as they are, f32 sums, each weight byte read once); more rows: our dequantization to the activations' dtype, then Candle's GEMM |
//! | Metal | Candle's Q8_0 blocks | Candle's `QMatMul` (built, not run here) |
//!
//! Why our own CUDA kernel: measured on the H200 (docs/benchmarks.md, 2026-12-04), Candle's MMVQ
//! made the 8-bit LM step 0.80× the bf16 one, not the ≤ 0.6× the bytes allow; it also quantizes
//! the activations to 8 bits, a second rounding our kernel does not make. [`QWeight::candle`]
//! keeps Candle's kernel reachable on CUDA, for `verify ops` to compare.

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
    repr: Repr,
    out_dim: usize,
    in_dim: usize,
}

#[derive(Debug, Clone)]
enum Repr {
    /// Candle's Q8_0 blocks and its quantized product.
    Candle { qtensor: Arc<QTensor>, matmul: QMatMul },
    /// Re-packed for our CUDA kernels.
    Packed(Arc<PackedQ8>),
}

/// Q8_0 values re-packed into aligned arrays: `qs` [N, K] u8 (each byte an int8 value, two's
/// complement) and `d` [N, K/32] f16 (the scale of each block of 32 along a row), on one device.
/// Weight (n, k) is `d[n, k / 32] · qs[n, k]`, exactly the value of Candle's block.
#[derive(Debug)]
pub struct PackedQ8 {
    pub qs: Tensor,
    pub d: Tensor,
}

impl PackedQ8 {
    /// Re-packs Candle's Q8_0 blocks (34 bytes each: the f16 scale, then 32 int8) of a [n, k]
    /// weight, read on the host, onto `device`.
    pub fn from_blocks(blocks: &[u8], (n, k): (usize, usize), device: &Device) -> candle_core::Result<Self> {
        const BLOCK_BYTES: usize = 2 + Q8_BLOCK;
        if k % Q8_BLOCK != 0 || blocks.len() < n * k / Q8_BLOCK * BLOCK_BYTES {
            candle_core::bail!("Q8_0 blocks of {} bytes for a weight [{n}, {k}]", blocks.len());
        }
        let mut qs = Vec::with_capacity(n * k);
        let mut d = Vec::with_capacity(n * k / Q8_BLOCK);
        for b in blocks[..n * k / Q8_BLOCK * BLOCK_BYTES].chunks_exact(BLOCK_BYTES) {
            d.push(half::f16::from_le_bytes([b[0], b[1]]));
            qs.extend_from_slice(&b[2..]);
        }
        Ok(Self {
            qs: Tensor::from_vec(qs, (n, k), device)?,
            d: Tensor::from_vec(d, (n, k / Q8_BLOCK), device)?,
        })
    }

    /// [N, K].
    pub fn dims(&self) -> (usize, usize) {
        let (n, k) = self.qs.dims2().expect("qs is [N, K]");
        (n, k)
    }

    /// The weight as f32 values on the CPU (each scale times its bytes), computed on the host.
    pub fn dequantize_host(&self) -> candle_core::Result<Tensor> {
        let (n, k) = self.dims();
        let qs = self.qs.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<u8>()?;
        let d = self.d.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let w: Vec<f32> = qs.iter().enumerate().map(|(i, &q)| d[i / Q8_BLOCK] * (q as i8) as f32).collect();
        Tensor::from_vec(w, (n, k), &Device::Cpu)
    }
}

impl QWeight {
    /// From a Q8_0 tensor [out, in] (read from a GGUF file or made by [`quantize_q8`]), on the
    /// device it is to run on, in that device's layout (the table above). A tensor on the CPU
    /// with `device` a GPU is moved there.
    pub fn on(qtensor: QTensor, device: &Device) -> candle_core::Result<Self> {
        check_q8(&qtensor)?;
        match Backend::of(device) {
            Backend::Cuda => Self::packed(&qtensor, device),
            _ => Self::candle_on(qtensor, device),
        }
    }

    /// Candle's layout and product on `device` (moved there if it is elsewhere).
    pub fn candle_on(qtensor: QTensor, device: &Device) -> candle_core::Result<Self> {
        if qtensor.device().same_device(device) {
            return Self::candle(qtensor);
        }
        let storage = candle_core::quantized::QStorage::from_data(qtensor.data()?, device, qtensor.dtype())?;
        Self::candle(QTensor::new(storage, qtensor.shape())?)
    }

    /// Candle's layout and product whatever the device (`verify ops` compares it with ours).
    pub fn candle(qtensor: QTensor) -> candle_core::Result<Self> {
        check_q8(&qtensor)?;
        let (out_dim, in_dim) = qtensor.shape().dims2()?;
        let qtensor = Arc::new(qtensor);
        // `from_arc` keeps a Q8_0 tensor quantized unless CANDLE_DEQUANTIZE_ALL is set; we
        // want the 8-bit product whatever the environment says.
        let matmul = QMatMul::QTensor(qtensor.clone());
        Ok(Self { repr: Repr::Candle { qtensor, matmul }, out_dim, in_dim })
    }

    /// Our re-packed layout on `device` (any device holds it; only CUDA has kernels for it).
    pub fn packed(qtensor: &QTensor, device: &Device) -> candle_core::Result<Self> {
        check_q8(qtensor)?;
        let (out_dim, in_dim) = qtensor.shape().dims2()?;
        let p = PackedQ8::from_blocks(&qtensor.data()?, (out_dim, in_dim), device)?;
        Ok(Self { repr: Repr::Packed(Arc::new(p)), out_dim, in_dim })
    }

    /// [out, in].
    pub fn dims(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    pub fn device(&self) -> Device {
        match &self.repr {
            Repr::Candle { qtensor, .. } => qtensor.device(),
            Repr::Packed(p) => p.qs.device().clone(),
        }
    }

    /// Bytes the weight occupies on its device.
    pub fn bytes(&self) -> usize {
        match &self.repr {
            Repr::Candle { qtensor, .. } => qtensor.storage_size_in_bytes(),
            Repr::Packed(p) => p.qs.elem_count() + 2 * p.d.elem_count(),
        }
    }

    /// The weight as f32 values (each block's scale times its bytes): what the 8-bit product
    /// multiplies by, for checks.
    pub fn dequantize(&self) -> candle_core::Result<Tensor> {
        match &self.repr {
            Repr::Candle { qtensor, .. } => qtensor.dequantize(&qtensor.device()),
            Repr::Packed(p) => p.dequantize_host()?.to_device(p.qs.device()),
        }
    }
}

fn check_q8(q: &QTensor) -> candle_core::Result<()> {
    if q.dtype() != GgmlDType::Q8_0 {
        candle_core::bail!("an 8-bit linear weight must be Q8_0, got {:?}", q.dtype());
    }
    let (_, k) = q.shape().dims2()?;
    if k % Q8_BLOCK != 0 {
        candle_core::bail!("an 8-bit linear weight's rows must be whole Q8_0 blocks, got {:?}", q.shape().dims());
    }
    Ok(())
}

/// Quantize `w` (any float dtype, any device) to Q8_0 blocks on the CPU, in f32 (Candle's
/// reference quantizer), so the same values give the same bytes whatever the device and the
/// dtype the model runs in; [`QWeight::on`] then lays them out for the device. A block never spans
/// two rows, so the rows are quantized in parallel, in groups of about a million values
/// (quantizing the 7B at load was ≈ 100 s on one core).
pub fn quantize_q8(w: &Tensor) -> candle_core::Result<QTensor> {
    let f = owned_f32(w)?;
    match f.dims() {
        &[n, k] if n > 1 && k > 0 => {
            let v = f.flatten_all()?.to_vec1::<f32>()?;
            let bytes = quantize_rows(&v, k, (1 << 20) / k)?;
            QTensor::new(candle_core::quantized::QStorage::from_data(bytes.into(), &Device::Cpu, GgmlDType::Q8_0)?, (n, k))
        }
        _ => QTensor::quantize(&f, GgmlDType::Q8_0),
    }
}

/// The Q8_0 blocks of rows of length `k` (`v` holds whole rows), quantized `rows_per` rows at a
/// time in parallel: the bytes Candle's quantizer gives for the whole tensor.
fn quantize_rows(v: &[f32], k: usize, rows_per: usize) -> candle_core::Result<Vec<u8>> {
    use rayon::prelude::*;
    let parts: Vec<Vec<u8>> = v
        .par_chunks(rows_per.max(1) * k)
        .map(|c| {
            let t = Tensor::from_slice(c, (c.len() / k, k), &Device::Cpu)?;
            Ok(QTensor::quantize(&t, GgmlDType::Q8_0)?.data()?.into_owned())
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(parts.concat())
}

/// `w`'s values in f32 on the CPU, in storage of their own. Candle's quantizer reads a tensor's
/// storage from its start whatever the view (a narrowed step of a stacked projection would be
/// quantized from step 0's rows), so it is only ever given a fresh copy.
pub fn owned_f32(w: &Tensor) -> candle_core::Result<Tensor> {
    let v = w.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Tensor::from_vec(v, w.shape(), &Device::Cpu)
}

/// x [.., k] · wᵀ for an 8-bit weight [n, k]: the output in x's dtype (f32 or bf16; the
/// product accumulates in f32 or int32 inside the kernels).
pub fn linear_q8(x: &Tensor, w: &QWeight) -> candle_core::Result<Tensor> {
    let p = Policy::current(x.device());
    let x = p.input("linear_q8", x)?;
    if x.dims().last() != Some(&w.in_dim) {
        candle_core::bail!("linear_q8: input {:?} for a weight [{}, {}]", x.dims(), w.out_dim, w.in_dim);
    }
    let dtype = x.dtype();
    match (&w.repr, p.backend, dtype) {
        (Repr::Packed(pw), Backend::Cuda, DType::F32 | DType::BF16) => packed_cuda(&x, pw, w.out_dim),
        (Repr::Packed(_), ..) => candle_core::bail!("linear_q8: the re-packed 8-bit layout runs on CUDA only, not {:?} {dtype:?}", x.device()),
        (Repr::Candle { matmul, .. }, backend, _) => {
            // Candle's quantized kernels read a contiguous input of rank ≥ 2.
            let x = x.contiguous()?;
            let x = if x.rank() == 1 { x.unsqueeze(0)? } else { x };
            match (backend, dtype) {
                // CPU (bf16 widened once inside) and CUDA (MMVQ/MMQ quantize either to 8 bits)
                // take f32 and bf16 as they are.
                (Backend::Cpu | Backend::Cuda, DType::F32 | DType::BF16) => matmul.forward(&x),
                (_, DType::F32) => matmul.forward(&x),
                // Metal's quantized kernels, and other dtypes: through f32.
                _ => matmul.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype),
            }
        }
    }
}

/// Our CUDA path: ≤ 16 rows through `q8_matvec` (per 8 rows), more through the dequantized weight and
/// Candle's GEMM (at that many rows the product is no longer a read of the weight).
#[cfg(feature = "cuda")]
fn packed_cuda(x: &Tensor, w: &PackedQ8, n: usize) -> candle_core::Result<Tensor> {
    use super::cuda::q8;
    let dims = x.dims().to_vec();
    let k = *dims.last().expect("checked by the caller");
    let rows = x.elem_count() / k.max(1);
    let mut out_dims = dims.clone();
    *out_dims.last_mut().expect("rank ≥ 1") = n;
    let x2 = x.contiguous()?.reshape((rows, k))?;
    let y = if rows <= q8::MATVEC_ROWS_UP_TO {
        q8::matvec(&x2, w).map_err(candle_core::Error::wrap)?
    } else {
        let wd = q8::dequantize(w, x.dtype()).map_err(candle_core::Error::wrap)?;
        x2.matmul(&wd.t()?)?
    };
    y.reshape(out_dims)
}

#[cfg(not(feature = "cuda"))]
fn packed_cuda(x: &Tensor, _: &PackedQ8, _: usize) -> candle_core::Result<Tensor> {
    candle_core::bail!("linear_q8: a CUDA tensor in a build without CUDA ({:?})", x.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The re-packed layout holds exactly the values of Candle's blocks, row by row and block by
    /// block (a wrong offset, a swapped scale or a sign lost in the int8 → u8 storage would move
    /// whole blocks).
    #[test]
    fn packed_layout_has_the_blocks_values() {
        let (n, k) = (5, 96);
        let v: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1 + i / k) as f32).collect();
        let w = Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap();
        let q = quantize_q8(&w).unwrap();
        let candle = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        let packed = QWeight::packed(&q, &Device::Cpu).unwrap();
        assert_eq!(packed.dims(), (n, k));
        assert_eq!(packed.bytes(), n * k / Q8_BLOCK * 34);
        let ours = packed.dequantize().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(ours, candle);
        assert!(candle.iter().flatten().any(|&x| x < 0.0), "the case must hold negative weights");
    }

    #[test]
    fn packed_layout_off_cuda_is_refused_by_name() {
        let q = quantize_q8(&Tensor::ones((4, 32), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let packed = QWeight::packed(&q, &Device::Cpu).unwrap();
        let err = linear_q8(&Tensor::ones((1, 32), DType::F32, &Device::Cpu).unwrap(), &packed).unwrap_err().to_string();
        assert!(err.contains("CUDA only"), "{err}");
        // On the CPU the seam keeps Candle's layout.
        assert!(matches!(QWeight::on(q, &Device::Cpu).unwrap().repr, Repr::Candle { .. }));
    }

    /// Quantizing rows in parallel groups gives the bytes of one pass over the whole tensor.
    #[test]
    fn rows_quantized_in_groups_give_the_whole_tensors_blocks() {
        let (n, k) = (7, 64);
        let v: Vec<f32> = (0..n * k).map(|i| ((i * 31 % 97) as f32 - 48.0) * 0.01).collect();
        let whole = QTensor::quantize(&Tensor::from_slice(&v, (n, k), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
        for rows_per in [1, 2, 3, 7, 100] {
            assert_eq!(quantize_rows(&v, k, rows_per).unwrap(), whole.data().unwrap().into_owned(), "{rows_per} rows a group");
        }
    }

    #[test]
    fn short_or_ragged_blocks_are_refused() {
        assert!(PackedQ8::from_blocks(&[0u8; 33], (1, 32), &Device::Cpu).is_err());
        assert!(PackedQ8::from_blocks(&[0u8; 68], (1, 48), &Device::Cpu).is_err());
    }
}

//! Launches of `q8.cu`: the 8-bit weight × float activation product for ≤ 8 rows, and the
//! weight's dequantization for more rows (the GEMM after it is Candle's). The weight layout is
//! `exec::quant`'s [`PackedQ8`]: int8 values [N, K] and f16 block scales [N, K/32].

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{DType, Tensor};

use super::{alloc, cuda_dev, launch_cfg, ptr};
use crate::error::{EngineError, Result};
use crate::exec::quant::PackedQ8;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/moshi_q8.ptx"));
const MODULE: &str = "moshi_q8";
/// q8.cu's Q8_THREADS and Q8_R: threads per block, output rows per block.
const THREADS: u32 = 128;
const ROWS: usize = 4;
/// The kernels' largest M: `matvec` launches one per this many rows.
pub const MATVEC_MAX_ROWS: usize = 8;
/// Up to this many rows `linear_q8` runs `matvec` (2 passes over the weights); above, the
/// dequantized weight and a GEMM. Measured on the H200 for the 7B's QKV (`lm bench-linear`,
/// docs/data/h200-2026-12-04b): 1 row 20 µs, 9 rows 68.5, 16 rows (two 8-row passes) 98.2; 17
/// rows (dequantization + GEMM) 91.5, 128 rows 98. Between 9 and 64 rows Candle's MMQ (55 µs on
/// its own Q8_0 layout, which we do not hold on CUDA) is faster than either: left for later.
pub const MATVEC_ROWS_UP_TO: usize = 16;

fn dtype_name(d: DType) -> Result<&'static str> {
    match d {
        DType::BF16 => Ok("bf16"),
        DType::F32 => Ok("f32"),
        d => Err(EngineError::InvalidInput(format!("the 8-bit CUDA product takes bf16 or f32 activations, not {d:?}"))),
    }
}

/// x [M, K] (contiguous, bf16 or f32) · Wᵀ → [M, N] in x's dtype: one kernel launch per 8 rows
/// of x, each reading every weight byte once.
pub fn matvec(x: &Tensor, w: &PackedQ8) -> Result<Tensor> {
    let dev = cuda_dev(x)?;
    let (m, k) = x.dims2()?;
    let (n, wk) = w.dims();
    if wk != k || m == 0 {
        return Err(EngineError::InvalidInput(format!("q8 matvec: x {:?} for a weight [{n}, {wk}]", x.dims())));
    }
    let name = dtype_name(x.dtype())?;
    let size = x.dtype().size_in_bytes();
    // The kernel reads x 16 values at a time: its rows must start 16-byte aligned.
    let x = if x.is_contiguous() && x.layout().start_offset() * size % 16 == 0 { x.clone() } else { x.force_contiguous()? };
    let (qp, dp) = (ptr::<u8>(&w.qs, &dev)?, ptr::<half::f16>(&w.d, &dev)?);
    let (xp, y) = match x.dtype() {
        DType::BF16 => (ptr::<half::bf16>(&x, &dev)?, alloc::<half::bf16>(&dev, &[m, n])?),
        _ => (ptr::<f32>(&x, &dev)?, alloc::<f32>(&dev, &[m, n])?),
    };
    let yp = match y.dtype() {
        DType::BF16 => ptr::<half::bf16>(&y, &dev)?,
        _ => ptr::<f32>(&y, &dev)?,
    };
    let (ni, ki) = (n as i32, k as i32);
    for m0 in (0..m).step_by(MATVEC_MAX_ROWS) {
        let rows = (m - m0).min(MATVEC_MAX_ROWS);
        let (xs, ys) = (xp + (m0 * k * size) as u64, yp + (m0 * n * size) as u64);
        // Two activation rows: 2 output rows per block (H200, 7B QKV: 24.4 µs against 28.0 with
        // 4; at 4 and 8 rows 4 per block is ahead: docs/data/h200-2026-12-04b, call 11).
        let (func, per_block) = if rows == 2 { (format!("q8_matvec_r2_{name}_m2"), 2) } else { (format!("q8_matvec_{name}_m{rows}"), ROWS) };
        let f = dev.get_or_load_custom_func(&func, MODULE, PTX)?;
        let mut l = f.builder();
        l.arg(&qp).arg(&dp).arg(&xs).arg(&ys).arg(&ni).arg(&ki);
        // SAFETY: the arguments match the kernel's signature; qs holds N·K bytes, d N·K/32
        // scales, x from row m0 holds `rows`·K values from a 16-byte aligned start (K % 32 == 0
        // is PackedQ8's invariant) and y from row m0 `rows`·N.
        unsafe { l.launch(launch_cfg((n.div_ceil(per_block) as u32, 1), THREADS)) }.map_err(candle_core::Error::wrap)?;
    }
    Ok(y)
}

/// The weight [N, K] as `dtype` (bf16 or f32) values: scale × int8, rounded once to `dtype`.
pub fn dequantize(w: &PackedQ8, dtype: DType) -> Result<Tensor> {
    let dev = cuda_dev(&w.qs)?;
    let (n, k) = w.dims();
    let name = dtype_name(dtype)?;
    let out = match dtype {
        DType::BF16 => alloc::<half::bf16>(&dev, &[n, k])?,
        _ => alloc::<f32>(&dev, &[n, k])?,
    };
    let op = match dtype {
        DType::BF16 => ptr::<half::bf16>(&out, &dev)?,
        _ => ptr::<f32>(&out, &dev)?,
    };
    let (qp, dp) = (ptr::<u8>(&w.qs, &dev)?, ptr::<half::f16>(&w.d, &dev)?);
    let n16 = (n * k / 16) as i64;
    let f = dev.get_or_load_custom_func(&format!("q8_dequantize_{name}"), MODULE, PTX)?;
    let mut l = f.builder();
    l.arg(&qp).arg(&dp).arg(&op).arg(&n16);
    // SAFETY: as in `matvec`; out holds N·K values.
    unsafe { l.launch(launch_cfg(((n16 as u64).div_ceil(256) as u32, 1), 256)) }.map_err(candle_core::Error::wrap)?;
    Ok(out)
}

//! `verify ops` cases of the 8-bit weight product (`exec::linear_q8`). The weight is quantized to
//! Q8_0 on the CPU, so both sides multiply by the same 8-bit values; the reference is their exact
//! product in f32 (x · dequantized Wᵀ on the CPU), the device side the seam's kernel for that
//! device (on CUDA our `q8_matvec` for ≤ 16 rows, dequantization + GEMM above; on the CPU and
//! Metal Candle's Q8_0 product). The `linear_q8_candle` cases run Candle's product on every
//! device, for comparison on CUDA.
//!
//! Tolerances (`Kind::Q8`): our CUDA kernel keeps the activations as they are and sums in f32, so
//! it is held to the dtype's bound like any product. Candle's product quantizes the activations
//! to 8 bits per block of 32 as well: a second rounding, of up to half a step (max|x|/254) per
//! value, which moves an output by ≈ 2⁻⁸/√3 of a typical value; [`TOL_Q8_ACT`] bounds it.

use candle_core::{DType, Tensor};

use super::cases::{Case, Kind};
use super::Env;
use crate::error::Result;
use crate::exec::{linear_q8, quantize_q8, QWeight};

/// Bound, relative to the peak, for a product whose activations are quantized to 8 bits per
/// block (Candle's Q8_0 product). Measured on the CPU: ≤ 4.6e-3 of the peak on these cases in f32
/// (≤ 6.7e-3 in bf16, where the bound is TOL_BF16 anyway); a wrong block
/// (a lost scale, a wrong row) is off by the size of the values themselves.
pub const TOL_Q8_ACT: f64 = 1e-2;

/// How a case lays out its input.
#[derive(Clone, Copy)]
enum X {
    Contiguous,
    /// Stored [rows, K] transposed ([K, rows] viewed as its transpose).
    Transposed,
    /// Contiguous but starting one element into its buffer (not 16-byte aligned).
    Offset,
}

/// x [1, rows, k] · Wᵀ for a random W [n, k] quantized to Q8_0.
fn product(e: &mut Env<'_>, (n, k): (usize, usize), rows: usize, layout: X, candle: bool) -> Result<Tensor> {
    let w = e.host(&[n, k], 1.0 / (k as f32).sqrt())?;
    let q = quantize_q8(&w)?;
    let x = match layout {
        X::Contiguous => e.rand(&[1, rows, k], 1.0)?,
        X::Transposed => e.rand_t(&[1, rows, k], 1.0, 1, 2)?,
        X::Offset => {
            let h = e.host(&[1 + rows * k], 1.0)?;
            e.put(&h)?.narrow(0, 1, rows * k)?.reshape((1, rows, k))?
        }
    };
    if e.is_reference() {
        let wd = q.dequantize(&candle_core::Device::Cpu)?;
        return Ok(x.to_dtype(DType::F32)?.broadcast_matmul(&wd.t()?)?);
    }
    let qw = if candle { QWeight::candle_on(q, e.device)? } else { QWeight::on(q, e.device)? };
    Ok(linear_q8(&x, &qw)?)
}

fn case(op: &'static str, name: &'static str, run: impl Fn(&mut Env<'_>) -> Result<Tensor> + 'static) -> Case {
    Case { op, name, kind: Kind::Q8 { candle: op == "linear_q8_candle" }, run: Box::new(run) }
}

pub(super) fn cases() -> Vec<Case> {
    use X::*;
    let ours = "linear_q8";
    vec![
        // Shapes: the depformer's [1024 → 3072] and [2816 → 1024] (K not a multiple of the
        // kernel's 2048-value stride), a row count N not a multiple of the kernel's 4 rows.
        case(ours, "1 row, [3072, 1024]", |e| product(e, (3072, 1024), 1, Contiguous, false)),
        case(ours, "1 row, [1024, 2816]", |e| product(e, (1024, 2816), 1, Contiguous, false)),
        case(ours, "1 row, [258, 4096]", |e| product(e, (258, 4096), 1, Contiguous, false)),
        case(ours, "3 rows, [130, 11264]", |e| product(e, (130, 11264), 3, Contiguous, false)),
        case(ours, "8 rows, [96, 2048]", |e| product(e, (96, 2048), 8, Contiguous, false)),
        case(ours, "2 rows, transposed input", |e| product(e, (96, 256), 2, Transposed, false)),
        case(ours, "2 rows, unaligned input", |e| product(e, (96, 256), 2, Offset, false)),
        // 9 to 16 rows: the kernel per 8 rows; above (20, 40), the dequantized weight and a GEMM.
        case(ours, "9 rows, [130, 256]", |e| product(e, (130, 256), 9, Contiguous, false)),
        case(ours, "20 rows, unaligned input", |e| product(e, (96, 512), 20, Offset, false)),
        case(ours, "40 rows, transposed input", |e| product(e, (64, 1024), 40, Transposed, false)),
        case("linear_q8_candle", "1 row, [3072, 1024]", |e| product(e, (3072, 1024), 1, Contiguous, true)),
        case("linear_q8_candle", "3 rows, [130, 11264]", |e| product(e, (130, 11264), 3, Contiguous, true)),
        case("linear_q8_candle", "9 rows, [130, 256]", |e| product(e, (130, 256), 9, Contiguous, true)),
        case("linear_q8_candle", "40 rows, transposed input", |e| product(e, (64, 1024), 40, Transposed, true)),
    ]
}

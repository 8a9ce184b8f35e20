//! Our CPU kernels, called by the seam (`exec`) only: the weight-streaming product for few rows
//! and the unfold that turns a short strided conv into one such product.
//!
//! Streaming runs a handful of rows at a time (2 latent steps per Mimi frame), where a matmul is
//! bound by reading W: Candle's CPU GEMM repacks the transposed weight on every call and reaches
//! about 3.4 GB/s here, a row-parallel dot-product kernel over the contiguous W about 5.4 GB/s
//! (measured on this 2-core machine). So few rows with f32 or bf16 weights take this kernel
//! (Candle's bf16 CPU path widens the whole weight on every call: ~10× slower than f32).

use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// Rows at or below which the CPU takes the weight-streaming kernel.
pub const SMALL_M: usize = 8;

/// Weights of at least this many bytes are copied into memory the kernel is asked to back with
/// huge pages (see `huge_page_copy`).
const HUGE_PAGE_MIN_BYTES: usize = 8 << 20;

/// A CPU weight re-allocated with `madvise(MADV_HUGEPAGE)` before its pages are first touched,
/// so that streaming it costs one TLB entry per 2 MiB instead of per 4 KiB (the machines here run
/// transparent huge pages in `madvise` mode). Other devices, small tensors, non-Linux: unchanged.
/// `MOSHI_NO_HUGE_PAGES=1` turns it off (for A/B measurements).
pub(super) fn huge_page_copy<T: candle_core::WithDType>(w: &Tensor) -> candle_core::Result<Tensor> {
    let bytes = w.elem_count() * std::mem::size_of::<T>();
    if !cfg!(target_os = "linux") || !w.device().is_cpu() || bytes < HUGE_PAGE_MIN_BYTES
        || std::env::var_os("MOSHI_NO_HUGE_PAGES").is_some()
    {
        return Ok(w.clone());
    }
    let src = w.flatten_all()?.to_vec1::<T>()?;
    let mut v: Vec<T> = Vec::with_capacity(src.len());
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let aligned = start.div_ceil(HUGE) * HUGE;
        let end = (start + bytes) / HUGE * HUGE;
        if end > aligned {
            // SAFETY: the range lies inside `v`'s allocation; MADV_HUGEPAGE is only advice and
            // changes no contents.
            unsafe { libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE) };
        }
    }
    v.extend_from_slice(&src);
    Tensor::from_vec(v, w.shape(), w.device())
}

/// A weight element the kernel widens to f32 as it streams (bf16 widening is a 16-bit shift,
/// so bf16 weights halve the bytes read at the same arithmetic).
trait WeightElem: Copy + Send + Sync {
    /// Whether to read four weight rows per pass (`dot4`) when there is one input row: a gain
    /// for f32 (≈ 52 → 39 ms per full-width temporal layer, `lm bench`) but a loss for bf16
    /// (≈ 94 → 135 ms). With two rows (Mimi's streaming frame) it cost f32 too (≈ 93 → 125 ms
    /// per frame, `codec bench`), so it is used for one row only.
    const FOUR_ROWS: bool;
    fn widen(self) -> f32;
}

impl WeightElem for f32 {
    const FOUR_ROWS: bool = true;
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl WeightElem for half::bf16 {
    const FOUR_ROWS: bool = false;
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// Σ a·b over equal-length slices, with 16 independent accumulators so that the compiler
/// vectorises it (with AVX2+FMA when inlined into `rows_avx2`).
#[inline(always)]
fn dot<W: WeightElem>(a: &[f32], b: &[W]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i].widen();
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y.widen();
    }
    s
}

/// Four dot products of `a` with four weight rows at once: each chunk of `a` is loaded once for
/// four rows, and four weight streams are in flight (more memory-level parallelism than one).
#[inline(always)]
fn dot4<W: WeightElem>(a: &[f32], w: [&[W]; 4]) -> [f32; 4] {
    let mut acc = [[0f32; 8]; 4];
    let ca = a.chunks_exact(8);
    let tail = ca.remainder().len();
    let cw = w.map(|r| r.chunks_exact(8));
    let [c0, c1, c2, c3] = cw;
    for ((((x, y0), y1), y2), y3) in ca.zip(c0).zip(c1).zip(c2).zip(c3) {
        for l in 0..8 {
            acc[0][l] += x[l] * y0[l].widen();
            acc[1][l] += x[l] * y1[l].widen();
            acc[2][l] += x[l] * y2[l].widen();
            acc[3][l] += x[l] * y3[l].widen();
        }
    }
    let mut out = [0f32; 4];
    let n = a.len() - tail;
    for j in 0..4 {
        out[j] = acc[j].iter().sum::<f32>() + a[n..].iter().zip(&w[j][n..]).map(|(x, y)| x * y.widen()).sum::<f32>();
    }
    out
}

/// Output rows `row0 ..` of xWᵀ, transposed: `chunk` is [rows, m].
#[inline(always)]
fn rows_generic<W: WeightElem>(x: &[f32], w: &[W], m: usize, k: usize, row0: usize, chunk: &mut [f32]) {
    let rows = chunk.len() / m;
    let wr = |r: usize| &w[(row0 + r) * k..(row0 + r + 1) * k];
    let mut r = 0;
    while W::FOUR_ROWS && m == 1 && r + 4 <= rows {
        let ws = [wr(r), wr(r + 1), wr(r + 2), wr(r + 3)];
        for i in 0..m {
            let d = dot4(&x[i * k..(i + 1) * k], ws);
            for (j, v) in d.into_iter().enumerate() {
                chunk[(r + j) * m + i] = v;
            }
        }
        r += 4;
    }
    for r in r..rows {
        for i in 0..m {
            chunk[r * m + i] = dot(&x[i * k..(i + 1) * k], wr(r));
        }
    }
}

/// `rows_generic` compiled for AVX2 + FMA: at 2 rows the SSE2 build is compute-bound
/// (≈ 6 GB/s of weights), this one is memory-bound.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2<W: WeightElem>(x: &[f32], w: &[W], m: usize, k: usize, row0: usize, chunk: &mut [f32]) {
    rows_generic(x, w, m, k, row0, chunk)
}

fn rows<W: WeightElem>(x: &[f32], w: &[W], m: usize, k: usize, row0: usize, chunk: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { rows_avx2(x, w, m, k, row0, chunk) };
    }
    rows_generic(x, w, m, k, row0, chunk)
}

/// x [m, k] · w[n, k]ᵀ → [m, n], parallel over blocks of W's rows.
fn small_m_matmul<W: WeightElem>(x: &[f32], w: &[W], m: usize, k: usize, n: usize) -> Vec<f32> {
    const BLOCK: usize = 64;
    let mut out_t = vec![0f32; n * m]; // [n, m]
    out_t.par_chunks_mut(BLOCK * m).enumerate().for_each(|(bi, chunk)| rows(x, w, m, k, bi * BLOCK, chunk));
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = out_t[j * m + i];
        }
    }
    out
}

/// Whether the weight-streaming kernel takes x [.., m, k] · wᵀ: few rows, f32 or bf16 throughout.
pub(super) fn small_m_applies(x: &Tensor, w: &Tensor) -> bool {
    let m: usize = x.dims()[..x.rank().saturating_sub(1)].iter().product();
    let k_ok = x.dims().last() == w.dims().get(1);
    let dtypes = matches!((x.dtype(), w.dtype()), (DType::F32, DType::F32) | (DType::BF16, DType::BF16));
    dtypes && k_ok && m <= SMALL_M
}

/// x [.., m, k] · w[n, k]ᵀ with the weight-streaming kernel: f32 accumulation, the output in the
/// input's dtype. Both on the CPU (see `small_m_applies`); w contiguous.
pub(super) fn small_m_linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = w.dims2()?;
    let dims = x.dims().to_vec();
    let m: usize = dims[..dims.len() - 1].iter().product();
    let xv = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let (storage, layout) = w.storage_and_layout();
    let range = layout.start_offset()..layout.start_offset() + n * k;
    let y = match &*storage {
        candle_core::Storage::Cpu(cpu) if w.dtype() == DType::F32 => small_m_matmul(&xv, &cpu.as_slice::<f32>()?[range], m, k, n),
        candle_core::Storage::Cpu(cpu) => small_m_matmul(&xv, &cpu.as_slice::<half::bf16>()?[range], m, k, n),
        _ => candle_core::bail!("the CPU kernel was given a weight that is not on the CPU"),
    };
    drop(storage);
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank ≥ 1") = n;
    Tensor::from_vec(y, out_dims, x.device())?.to_dtype(x.dtype())
}

/// The columns of a valid conv of x [B, C, L] (f32, CPU): [B, L_out, C·K], row (b, t) holding
/// the K taps of every channel that output step t reads, so that the conv is one product with
/// the kernel as [C_out, C·K].
pub(super) fn unfold(x: &Tensor, kernel: usize, stride: usize, dilation: usize) -> candle_core::Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    let span = (kernel - 1) * dilation + 1;
    let l_out = (l - span) / stride + 1;
    let xv = x.flatten_all()?.to_vec1::<f32>()?;
    let mut cols = Vec::with_capacity(b * l_out * c * kernel);
    for bi in 0..b {
        for t in 0..l_out {
            for ci in 0..c {
                let base = (bi * c + ci) * l + t * stride;
                cols.extend((0..kernel).map(|j| xv[base + j * dilation]));
            }
        }
    }
    Tensor::from_vec(cols, (b, l_out, c * kernel), x.device())
}

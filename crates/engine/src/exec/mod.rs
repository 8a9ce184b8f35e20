//! The execution seam: the one place that decides how each op of a model step runs on each
//! device. Model code (`nn`, `mimi`, `lm`) calls the functions below and makes no device choice
//! of its own; our CPU kernels (`cpu`) and CUDA kernels (`cuda`) are called from here only. This
//! is also where a CUDA graph and the 8-bit product are chosen (`graph`, `quant`): per-run
//! choices arrive as [`RunOptions`], kept by the conversation's state.
//!
//! | op | CPU | CUDA | Metal |
//! |---|---|---|---|
//! | `linear` | ≤ 8 rows, f32/bf16: our weight-streaming kernel; else Candle's matmul | Candle | Candle |
//! | `linear_q8` (8-bit weights, `quant`) | Candle's Q8_0 product | ≤ 16 rows: our `q8_matvec`; more: our dequantization + Candle's GEMM | Candle, via f32 |
//! | `conv1d` | f32, ≤ 8 output steps a call: our unfold + `linear`; else Candle's conv1d | Candle | Candle |
//! | `conv_tr_taps` | one `linear` (depthwise: a broadcast product) | same | same |
//! | `rms_norm` | op by op in f32 | Candle's fused kernel | Candle's fused kernel |
//! | `add_rms_norm` (residual add + the next RMSNorm) | the add, then `rms_norm` | bf16: our kernel, one launch | the add, then `rms_norm` |
//! | `silu_gate` | Candle's silu × gate | bf16: our kernel | Candle |
//! | `attention` | Candle's ops, products in f32 | bf16 one-step streaming, Dh 64/128: our kernels | Candle |
//! | `elu`, `gelu_erf`, `layer_norm`, `pointwise_conv`, `embedding` | Candle | Candle | Candle |
//! | token sampling (`sampler`) | host | our kernel, same arithmetic as the host (top-k ≤ 1024) | host |
//!
//! **The contiguous-inputs policy** ([`Policy::contiguous_inputs`], on for Metal): Candle's Metal
//! conv and unary kernels have read strided inputs wrongly (the class of bug that garbled Moshi
//! on Apple GPUs), so under the policy every input of every op above — activations and conv
//! kernels alike — is copied to contiguous memory before the op reads it. The copies are of small
//! activations (a frame's worth). A product's weight (`linear`, `pointwise_conv`) is stored
//! contiguous and handed to the GEMM as its transpose, the form every backend's GEMM takes
//! without a copy. What stays outside the policy: attention's inner products read the KV ring in place
//! (a narrowed view; copying it would cost the whole cache per layer and step), and the plain
//! binary ops and copies between seam ops (adds, concatenations, paddings). The CPU has the
//! policy off (bit-identical to before); `force_contiguous_inputs` switches it on for a test,
//! and [`audit::capture`] records what each op was handed (tests/exec_policy.rs).

mod attention;
pub mod audit;
mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod graph;
pub mod kv_cache;
pub mod options;
pub mod quant;
pub mod sampler;
pub mod step_ctx;

use std::cell::Cell;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
pub use cpu::SMALL_M;
pub use kv_cache::{dequantize_i8, quantize_i8, KvCache, KvCacheKind};
pub use options::RunOptions;
pub use quant::{is_q8_shape, linear_q8, quantize_q8, QWeight};
pub use sampler::{device_sampling, FrameSampler, FrameTokens, SampleCallPlan, Sampler};
pub use step_ctx::{FusedInputs, StepCall, StepCtx};

/// The device families the seam tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Cuda,
    Metal,
}

impl Backend {
    pub fn of(device: &Device) -> Self {
        match device {
            Device::Cpu => Backend::Cpu,
            Device::Cuda(_) => Backend::Cuda,
            Device::Metal(_) => Backend::Metal,
        }
    }
}

/// How the seam runs ops on one device (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub backend: Backend,
    /// Copy every input of a seam op to contiguous memory first: on for Metal.
    pub contiguous_inputs: bool,
}

thread_local! {
    static FORCE_CONTIGUOUS: Cell<Option<bool>> = const { Cell::new(None) };
}

/// While alive, this thread's seam ops use `contiguous_inputs = on` whatever the device (tests;
/// dropping it restores what was before).
pub struct ForceContiguous(Option<bool>);

/// Switch the contiguous-inputs policy on (or off) for this thread until the guard drops.
pub fn force_contiguous_inputs(on: bool) -> ForceContiguous {
    ForceContiguous(FORCE_CONTIGUOUS.with(|f| f.replace(Some(on))))
}

impl Drop for ForceContiguous {
    fn drop(&mut self) {
        FORCE_CONTIGUOUS.with(|f| f.set(self.0));
    }
}

impl Policy {
    /// A backend's own policy.
    pub fn for_backend(backend: Backend) -> Self {
        Self { backend, contiguous_inputs: backend == Backend::Metal }
    }

    /// The policy ops on `device` run under on this thread (`force_contiguous_inputs` applied).
    pub fn current(device: &Device) -> Self {
        let mut p = Self::for_backend(Backend::of(device));
        if let Some(on) = FORCE_CONTIGUOUS.with(Cell::get) {
            p.contiguous_inputs = on;
        }
        p
    }

    /// `x` as `op` will read it: contiguous under the policy; recorded for `audit`.
    fn input(&self, op: &'static str, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = if self.contiguous_inputs { x.contiguous()? } else { x.clone() };
        audit::note(op, &x);
        Ok(x)
    }
}

/// A linear layer's weight [out, in] as the seam wants it stored: contiguous, and on the CPU in
/// memory backed by huge pages when large (the weight-streaming kernel reads it whole).
pub fn linear_weight(w: &Tensor) -> candle_core::Result<Tensor> {
    let w = w.contiguous()?;
    match (Backend::of(w.device()), w.dtype()) {
        (Backend::Cpu, DType::F32) => cpu::huge_page_copy::<f32>(&w),
        (Backend::Cpu, DType::BF16) => cpu::huge_page_copy::<half::bf16>(&w),
        _ => Ok(w),
    }
}

/// x [.., k] · wᵀ for a weight [n, k] from `linear_weight`.
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let p = Policy::current(x.device());
    let x = p.input("linear", x)?;
    audit::note("linear weight", w);
    if p.backend == Backend::Cpu && cpu::small_m_applies(&x, w) {
        return cpu::small_m_linear(&x, w);
    }
    // Candle folds a contiguous [.., m, k] input into one 2-D product; a strided one (e.g. a
    // narrowed position, as `PerStep` feeds the depformer) would make it broadcast and copy the
    // whole weight once per batch row. Activations are small: copy them instead.
    let x = x.contiguous()?;
    let wt = w.t()?;
    match x.rank() {
        2 => x.matmul(&wt),
        _ => x.broadcast_matmul(&wt),
    }
}

/// Valid (unpadded) convolution of x [B, C, L] with `weight` [C_out, C, K]; `flat` is the same
/// kernel as a `linear_weight` [C_out, C·K]. A streaming frame often leaves only a few output
/// steps for the widest layers (2 at 25 Hz), where the work is reading the weight: there the CPU
/// unfolds the input and runs the weight-streaming product.
pub fn conv1d(x: &Tensor, weight: &Tensor, flat: &Tensor, stride: usize, dilation: usize) -> Result<Tensor> {
    let p = Policy::current(x.device());
    let x = p.input("conv1d", x)?;
    let (b, _c, l) = x.dims3()?;
    let k = weight.dim(2)?;
    let l_out = (l - ((k - 1) * dilation + 1)) / stride + 1;
    if p.backend == Backend::Cpu && x.dtype() == DType::F32 && b * l_out <= SMALL_M {
        let cols = cpu::unfold(&x, k, stride, dilation)?;
        return Ok(linear(&cols, flat)?.transpose(1, 2)?.contiguous()?);
    }
    let weight = p.input("conv1d weight", weight)?;
    Ok(x.conv1d(&weight, 0, stride, dilation, 1)?)
}

/// The output taps of a transposed conv, every input step's K' outputs: x [B, C_in, T] →
/// [B, C_out, T, K']. `taps` (groups = 1): the kernel as a `linear_weight` [C_out·K', C_in],
/// one product; None (depthwise): `kernel` [C, 1, K'] broadcast over the input. The caller
/// overlap-adds them (we do not use Candle's `conv_transpose1d`: see `nn::conv`).
pub fn conv_tr_taps(x: &Tensor, kernel: &Tensor, taps: Option<&Tensor>) -> Result<Tensor> {
    let p = Policy::current(x.device());
    let x = p.input("conv_tr", x)?;
    let (b, c_in, t) = x.dims3()?;
    let (c_out, kp) = (kernel.dim(1)?, kernel.dim(2)?);
    Ok(match taps {
        None => {
            let w = p.input("conv_tr weight", kernel)?.reshape((1, c_in, 1, kp))?;
            x.unsqueeze(3)?.broadcast_mul(&w)?
        }
        Some(taps) => {
            let cols = linear(&x.transpose(1, 2)?.contiguous()?, taps)?; // [B, T, C_out·K']
            cols.reshape((b, t, c_out, kp))?.transpose(1, 2)?
        }
    })
}

/// A 1×1 conv of x [B, C, T] with `weight` [O, C]: [B, T, C] · Wᵀ → [B, O, T] (Candle's
/// product on every device: the quantizer's projections, in f32).
pub fn pointwise_conv(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let p = Policy::current(x.device());
    let xt = p.input("pointwise_conv", &x.transpose(1, 2)?)?;
    let w = p.input("pointwise_conv weight", weight)?;
    xt.broadcast_matmul(&w.t()?)?.transpose(1, 2)
}

/// ELU with alpha 1, as `torch.nn.ELU()`.
pub fn elu(x: &Tensor) -> Result<Tensor> {
    let x = Policy::current(x.device()).input("elu", x)?;
    Ok(x.elu(1.0)?)
}

/// Exact (erf) GELU.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    let x = Policy::current(x.device()).input("gelu", x)?;
    Ok(x.gelu_erf()?)
}

/// The gated FFN's silu(h[.., :F]) · h[.., F:] for h [.., 2F], F = `hidden`.
pub fn silu_gate(h: &Tensor, hidden: usize) -> Result<Tensor> {
    let p = Policy::current(h.device());
    #[cfg(feature = "cuda")]
    if p.backend == Backend::Cuda && h.dtype() == DType::BF16 {
        return cuda::silu_gate(&p.input("silu_gate", h)?);
    }
    let a = p.input("silu", &h.narrow(candle_core::D::Minus1, 0, hidden)?)?;
    let b = p.input("silu gate", &h.narrow(candle_core::D::Minus1, hidden, hidden)?)?;
    Ok((candle_nn::ops::silu(&a)? * b)?)
}

/// RMSNorm computed in f32 whatever the model dtype: x / sqrt(mean(x²) + eps) · alpha, with
/// `alpha` in f32 (the CPU's op-by-op form) and `alpha_model` in the model's dtype (Candle's
/// fused kernel on GPUs, which computes in f32 too: one launch instead of nine).
pub fn rms_norm(x: &Tensor, alpha: &Tensor, alpha_model: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let p = Policy::current(x.device());
    let x = p.input("rms_norm", x)?;
    if p.backend != Backend::Cpu && x.dtype() == alpha_model.dtype() {
        return candle_nn::ops::rms_norm(&x.contiguous()?, alpha_model, eps as f32);
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = (xf.sqr()?.mean_keepdim(candle_core::D::Minus1)? + eps)?;
    xf.broadcast_mul(&var.sqrt()?.recip()?)?.broadcast_mul(alpha)?.to_dtype(dtype)
}

/// The residual add and the RMSNorm after it: (s, rms_norm(s)) for s = x + r. On CUDA in bf16
/// one launch of our kernel (`cuda::add_rms_norm`: s as Candle's add gives it, the norm as its
/// kernel computes it, to within the order of the sum of squares); elsewhere the add, then
/// `rms_norm`, exactly as before.
pub fn add_rms_norm(x: &Tensor, r: &Tensor, alpha: &Tensor, alpha_model: &Tensor, eps: f64) -> candle_core::Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if let p @ Policy { backend: Backend::Cuda, .. } = Policy::current(x.device()) {
        if fused_add_norm(&p, x, r, alpha_model) {
            let (x, r) = (p.input("add_rms_norm", x)?, p.input("add_rms_norm residual", r)?);
            return cuda::add_rms_norm(&x, &r, alpha_model, eps as f32).map_err(candle_core::Error::wrap);
        }
    }
    let s = (x + r)?;
    let y = rms_norm(&s, alpha, alpha_model, eps)?;
    Ok((s, y))
}

/// Whether `add_rms_norm` runs our fused kernel: CUDA, bf16 throughout, equal shapes, a width
/// that is a multiple of 8, unless the process started with `MOSHI_FUSED_ADD_NORM=0` (for A/B
/// benchmarks; `verify ops` compares the kernel with the unfused ops directly).
#[cfg(feature = "cuda")]
fn fused_add_norm(p: &Policy, x: &Tensor, r: &Tensor, alpha_model: &Tensor) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MOSHI_FUSED_ADD_NORM").is_none_or(|v| v != "0"))
        && p.backend == Backend::Cuda
        && [x.dtype(), r.dtype(), alpha_model.dtype()] == [DType::BF16; 3]
        && x.dims() == r.dims()
        && x.dims().last().is_some_and(|&d| d % 8 == 0 && alpha_model.elem_count() == d)
}

/// LayerNorm (Candle's, fused for contiguous inputs).
pub fn layer_norm(x: &Tensor, ln: &candle_nn::LayerNorm) -> candle_core::Result<Tensor> {
    use candle_core::Module;
    let x = Policy::current(x.device()).input("layer_norm", x)?;
    ln.forward(&x)
}

/// Rows `ids` (u32, 1-D) of `table` [rows, dim].
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let p = Policy::current(table.device());
    let (table, ids) = (p.input("embedding", table)?, p.input("embedding ids", ids)?);
    Ok(table.index_select(&ids, 0)?)
}

/// The attention of one transformer call, from its fused QKV projection qkv [B, T, 3·H·Dh] to
/// the heads' outputs [B, T, H·Dh] (before the output projection), through `cache` when
/// `ctx.capacity` is set (a streaming call) and over the call's own keys otherwise.
pub fn attention(qkv: &Tensor, heads: usize, rope: bool, ctx: &StepCtx, cache: &mut KvCache) -> Result<Tensor> {
    let p = Policy::current(qkv.device());
    let qkv = p.input("attention", qkv)?;
    #[cfg(feature = "cuda")]
    if let (Some(cap), Some(fused)) = (ctx.capacity, &ctx.fused) {
        return attention::cuda_decode(&qkv, heads, rope, ctx, cache, cap, fused);
    }
    // Candle's CPU bf16 matmul allocates and widens on every call (≈ 20% of a bf16 LM step in
    // `perf`): on the CPU the attention products run in f32 instead.
    attention::generic(&qkv, heads, rope, ctx, cache, p.backend == Backend::Cpu)
}

/// Whether a transformer call's attention runs our fused decode kernels (`cuda_decode`): a
/// one-step streaming call in bf16 on CUDA with heads 64 or 128 wide. Its `StepCtx` then
/// carries the rows' starts and the position on the device, and no mask.
pub(crate) fn fused_decode(device: &Device, call: &StepCall) -> bool {
    cfg!(feature = "cuda")
        && Backend::of(device) == Backend::Cuda
        && call.capacity.is_some()
        && call.steps == 1
        && call.dtype == DType::BF16
        && matches!(call.head_dim, 64 | 128)
}

/// `tokens` as i64 values when they are on the host already (their range can then be checked
/// for free); None on a device, where reading them back would cost a synchronisation (callers
/// check tokens where they make them).
pub fn tokens_on_host(tokens: &Tensor) -> Result<Option<Vec<i64>>> {
    match Backend::of(tokens.device()) {
        Backend::Cpu => Ok(Some(tokens.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?)),
        _ => Ok(None),
    }
}

/// Make `device` ready for moshi-rs's use, once, right after creating it. CUDA: turn off
/// cudarc's per-buffer event tracking (two events made per allocation, recorded and waited on at
/// every launch: a large part of Candle's per-op host cost at batch 1). That tracking only
/// matters when buffers move between streams; moshi-rs steps a model on one thread's stream and
/// synchronizes after loading it (`MOSHI_CUDA_EVENT_TRACKING=1` keeps it, for A/B runs).
pub fn prepare_device(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        if std::env::var_os("MOSHI_CUDA_EVENT_TRACKING").is_none() {
            // SAFETY: see above: one stream per model, and a synchronize after loading, so no
            // buffer is used on two streams without an order between them.
            unsafe { d.disable_event_tracking() };
        }
    }
    let _ = device;
}

/// Device memory in use and in total (bytes) as the driver reports it: CUDA only (None elsewhere).
pub fn device_memory(device: &Device) -> Option<(usize, usize)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => cuda::memory(d).ok(),
        _ => None,
    }
}

//! Our CUDA kernels (`kernels.cu`, compiled to PTX by build.rs with the `cuda` feature) and their
//! launches on Candle's stream. They exist for the streaming step, where Candle's generic ops
//! cost one launch each (≈ 10 attention ops per layer at batch 1) and, for the 8-bit cache, would
//! widen the whole cache to bf16 before every product:
//!
//! - `qkv_rope_write`: split the fused QKV projection of one step, rotate q and k (RoPE), write k
//!   and v into their ring slot (bf16, or quantised to 8 bits with one f32 scale per row, head
//!   and slot) and return q: one launch for Candle's eleven.
//! - `decode_attention`: one query per row and head (T = 1) against the ring KV cache, read in
//!   place (16-byte loads, several rows per warp), split over chunks of slots (flash-decoding)
//!   and combined in a second launch; rows see only positions from their stream's start.
//! - `silu_gate`: the gated FFN's silu(a)·b in one launch.
//! - `add_rms_norm_bf16`: a residual add and the RMSNorm after it in one launch.
//! - `q8` (`q8.cu`): the 8-bit weight product (issue 17), see that module.
//! - `sample_tokens_{f32,bf16}`: the host sampler (`lm::sampling::sample`) on the device, one
//!   block per row, operation for operation (see `exec::sampler`).
//!
//! The CPU computes the same with Candle's ops (`exec::attention`; quantise/dequantise in `exec::kv_cache`):
//! `verify ops` compares the attention kernels with it on small cases (the `attention` group);
//! `silu_gate` is covered by `verify model`, which compares every temporal layer.

use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, DType, Storage, Tensor};

use crate::error::{EngineError, Result};

pub mod q8;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/moshi_kernels.ptx"));
const MODULE: &str = "moshi_kernels";
/// Slots per chunk of `decode_attention` (≤ the kernel's CHUNK_MAX): enough chunks to fill the
/// GPU at batch 1 (3000 slots, 32 heads → 384 blocks), few enough that the combine stays small.
const CHUNK: usize = 256;
const WARPS: u32 = 4;

fn cuda_dev(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        d => Err(EngineError::InvalidInput(format!("a CUDA kernel was given a tensor on {d:?}"))),
    }
}

/// The device address of a contiguous CUDA tensor's first element.
fn ptr<T: CudaDType>(t: &Tensor, dev: &CudaDevice) -> Result<u64> {
    if !t.is_contiguous() {
        return Err(EngineError::InvalidInput(format!("a CUDA kernel needs contiguous inputs, got strides {:?}", t.stride())));
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        return Err(EngineError::InvalidInput("a CUDA kernel was given a tensor not on the GPU".into()));
    };
    let slice = s.as_cuda_slice::<T>()?;
    let stream = dev.cuda_stream();
    let (p, _sync) = slice.device_ptr(&stream);
    Ok(p + (layout.start_offset() * std::mem::size_of::<T>()) as u64)
}

fn alloc<T: CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
    dev: &CudaDevice,
    shape: &[usize],
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    // SAFETY: every element is written by the kernel that receives the buffer before it is read.
    let slice = unsafe { dev.cuda_stream().alloc::<T>(n) }.map_err(candle_core::Error::wrap)?;
    let storage = CudaStorage::wrap_cuda_slice(slice, dev.clone());
    Ok(Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false))
}

fn launch_cfg(grid: (u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

fn head_dim_suffix(d: usize) -> Result<&'static str> {
    match d {
        64 => Ok("d64"),
        128 => Ok("d128"),
        _ => Err(EngineError::InvalidInput(format!("the CUDA attention kernels support head dims 64 and 128, not {d}"))),
    }
}

/// The ring cache as the kernels read it: [B, H, cap, D] keys and values (bf16, or u8 holding
/// q + 128 with f32 scales [B, H, cap]).
pub struct RingView<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub scales: Option<(&'a Tensor, &'a Tensor)>,
}

impl RingView<'_> {
    /// The kernels' name part ("bf16" or "i8") and the addresses of keys, values and their
    /// scales (0 for a bf16 ring).
    fn pointers(&self, dev: &CudaDevice) -> Result<(&'static str, u64, u64, u64, u64)> {
        Ok(match self.scales {
            None => ("bf16", ptr::<half::bf16>(self.k, dev)?, ptr::<half::bf16>(self.v, dev)?, 0, 0),
            Some((ks, vs)) => ("i8", ptr::<u8>(self.k, dev)?, ptr::<u8>(self.v, dev)?, ptr::<f32>(ks, dev)?, ptr::<f32>(vs, dev)?),
        })
    }
}

/// softmax(q·kᵀ · scale) · v for one query per row and head: q [B, H, 1, D] bf16, `starts` [B]
/// i64 (the first position each row may see), `pos` [1] i64 (the newest position in the ring).
/// Returns [B, H, 1, D] bf16. The launch depends only on shapes (a chunk per CHUNK slots of the
/// whole ring, those past the filled part empty), so a CUDA graph can replay it at any position.
pub fn decode_attention(q: &Tensor, ring: &RingView, starts: &Tensor, pos: &Tensor, scale: f32) -> Result<Tensor> {
    let dev = cuda_dev(q)?;
    let (b, h, _, d) = q.dims4()?;
    let cap = ring.k.dim(2)?;
    let nsplit = cap.div_ceil(CHUNK).max(1);
    let part = alloc::<f32>(&dev, &[b * h, nsplit, d + 2])?;
    let y = alloc::<half::bf16>(&dev, &[b, h, 1, d])?;
    let suffix = head_dim_suffix(d)?;
    let (kind, kp, vp, ks, vs) = ring.pointers(&dev)?;
    let (qp, sp, pp, yp) = (ptr::<half::bf16>(q, &dev)?, ptr::<i64>(starts, &dev)?, ptr::<f32>(&part, &dev)?, ptr::<half::bf16>(&y, &dev)?);
    let posp = ptr::<i64>(pos, &dev)?;
    let (hh, capi, chunk, ns) = (h as i32, cap as i32, CHUNK as i32, nsplit as i32);
    let f = dev.get_or_load_custom_func(&format!("attn_partial_{kind}_{suffix}"), MODULE, PTX)?;
    let mut l = f.builder();
    l.arg(&qp).arg(&kp).arg(&vp).arg(&ks).arg(&vs).arg(&sp).arg(&posp).arg(&pp);
    l.arg(&hh).arg(&capi).arg(&chunk).arg(&scale);
    // SAFETY: the argument list matches the kernel's signature; every pointer is a live buffer of
    // the size the kernel indexes (checked shapes above).
    unsafe { l.launch(launch_cfg(((b * h) as u32, nsplit as u32), 32 * WARPS)) }.map_err(candle_core::Error::wrap)?;
    let f = dev.get_or_load_custom_func(&format!("attn_combine_{suffix}"), MODULE, PTX)?;
    let mut l = f.builder();
    l.arg(&pp).arg(&yp).arg(&ns);
    // SAFETY: as above.
    unsafe { l.launch(launch_cfg(((b * h) as u32, 1), d as u32)) }.map_err(candle_core::Error::wrap)?;
    Ok(y)
}

/// One streaming step's fused QKV projection output qkv [B, 1, 3·H·D] bf16 → the rotated queries
/// [B, H, 1, D] bf16, with the rotated keys and the values written into slot `pos` mod capacity
/// of the ring, `pos` [1] i64 on the device (one launch for what Candle does in eleven: split
/// copies, RoPE with its dtype conversions, the two cache writes). `rope`: cos, sin [1 or B, 1,
/// D/2] f32 (None: no rotation).
pub fn qkv_rope_write(qkv: &Tensor, heads: usize, rope: Option<&(Tensor, Tensor)>, ring: &RingView, pos: &Tensor) -> Result<Tensor> {
    let dev = cuda_dev(qkv)?;
    let (b, t, three_d) = qkv.dims3()?;
    let d = three_d / (3 * heads);
    if t != 1 || qkv.dtype() != DType::BF16 || three_d != 3 * heads * d {
        return Err(EngineError::InvalidInput(format!("qkv_rope_write: qkv {:?} {:?}, {heads} heads", qkv.dims(), qkv.dtype())));
    }
    let cap = ring.k.dim(2)?;
    let suffix = head_dim_suffix(d)?;
    let q = alloc::<half::bf16>(&dev, &[b, heads, 1, d])?;
    let (cos, sin, rows) = match rope {
        Some((c, s)) => (ptr::<f32>(c, &dev)?, ptr::<f32>(s, &dev)?, (c.elem_count() / (d / 2)) as i32),
        None => (0u64, 0u64, 1i32),
    };
    let (kind, kp, vp, ks, vs) = ring.pointers(&dev)?;
    // Bound, not a temporary: the buffer must outlive the launch below.
    let qkv = qkv.contiguous()?;
    let (xp, qp) = (ptr::<half::bf16>(&qkv, &dev)?, ptr::<half::bf16>(&q, &dev)?);
    let (hh, capi, posp) = (heads as i32, cap as i32, ptr::<i64>(pos, &dev)?);
    let f = dev.get_or_load_custom_func(&format!("qkv_rope_{kind}_{suffix}"), MODULE, PTX)?;
    let mut l = f.builder();
    l.arg(&xp).arg(&cos).arg(&sin).arg(&rows).arg(&qp).arg(&kp).arg(&vp).arg(&ks).arg(&vs).arg(&hh).arg(&capi).arg(&posp);
    // SAFETY: as in `decode_attention`.
    unsafe { l.launch(launch_cfg(((b * heads) as u32, 1), (d / 2) as u32)) }.map_err(candle_core::Error::wrap)?;
    Ok(q)
}

/// silu(h[.., :F]) · h[.., F:] for h [.., 2F] bf16 (the gated FFN), in one launch.
pub fn silu_gate(h: &Tensor) -> Result<Tensor> {
    let dev = cuda_dev(h)?;
    let dims = h.dims().to_vec();
    let two_f = *dims.last().ok_or_else(|| EngineError::InvalidInput("silu_gate of a scalar".into()))?;
    let (f, n) = (two_f / 2, h.elem_count() / two_f);
    let mut out_dims = dims.clone();
    *out_dims.last_mut().expect("non-empty") = f;
    let out = alloc::<half::bf16>(&dev, &out_dims)?;
    let h = h.contiguous()?;
    let (hp, op) = (ptr::<half::bf16>(&h, &dev)?, ptr::<half::bf16>(&out, &dev)?);
    let (ni, fi) = (n as i32, f as i32);
    let total = (n * f) as u32;
    let func = dev.get_or_load_custom_func("silu_gate_bf16", MODULE, PTX)?;
    let mut l = func.builder();
    l.arg(&hp).arg(&op).arg(&ni).arg(&fi);
    // SAFETY: as in `decode_attention`.
    unsafe { l.launch(launch_cfg((total.div_ceil(256), 1), 256)) }.map_err(candle_core::Error::wrap)?;
    Ok(out)
}

/// The residual add and the RMSNorm after it in one launch: x, r [.., d] bf16, alpha [d] bf16 →
/// (s = x + r, rms_norm(s) · alpha), both bf16, s rounded as Candle's add rounds it and the norm
/// computed from that s as Candle's kernel computes it (f32; the sum of squares in another order).
pub fn add_rms_norm(x: &Tensor, r: &Tensor, alpha: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let dev = cuda_dev(x)?;
    let d = *x.dims().last().ok_or_else(|| EngineError::InvalidInput("add_rms_norm of a scalar".into()))?;
    if x.dims() != r.dims() || alpha.elem_count() != d || d % 8 != 0 || [x.dtype(), r.dtype(), alpha.dtype()] != [DType::BF16; 3] {
        return Err(EngineError::InvalidInput(format!(
            "add_rms_norm: x {:?} {:?}, r {:?} {:?}, alpha {:?} {:?} (bf16, widths a multiple of 8)",
            x.dims(),
            x.dtype(),
            r.dims(),
            r.dtype(),
            alpha.dims(),
            alpha.dtype()
        )));
    }
    let rows = x.elem_count() / d;
    let (s, y) = (alloc::<half::bf16>(&dev, x.dims())?, alloc::<half::bf16>(&dev, x.dims())?);
    // Bound, not temporaries: the buffers must outlive the launch.
    let (x, r, alpha) = (x.contiguous()?, r.contiguous()?, alpha.contiguous()?);
    let (xp, rp, ap) = (ptr::<half::bf16>(&x, &dev)?, ptr::<half::bf16>(&r, &dev)?, ptr::<half::bf16>(&alpha, &dev)?);
    let (sp, yp, di) = (ptr::<half::bf16>(&s, &dev)?, ptr::<half::bf16>(&y, &dev)?, d as i32);
    let f = dev.get_or_load_custom_func("add_rms_norm_bf16", MODULE, PTX)?;
    let mut l = f.builder();
    l.arg(&xp).arg(&rp).arg(&ap).arg(&sp).arg(&yp).arg(&di).arg(&eps);
    // SAFETY: as in `decode_attention`: rows × d elements in every buffer, alpha d.
    unsafe { l.launch(launch_cfg((rows as u32, 1), ADD_NORM_THREADS)) }.map_err(candle_core::Error::wrap)?;
    Ok((s, y))
}

/// The add-norm kernel's block size (kernels.cu ADD_NORM_THREADS).
const ADD_NORM_THREADS: u32 = 256;

/// Where one sampling call's inputs and outputs are (see `exec::sampler`): per-row temperatures
/// and top-k (f32, [B] each) and the noise ([B, noise_stride]) inside the frame's parameter
/// buffer, and the column of the frame's token and flag buffers ([B, cols] u32 each) it fills.
pub struct SampleCall<'a> {
    pub params: &'a Tensor,
    pub temps_at: usize,
    pub topks_at: usize,
    pub noise_at: usize,
    pub noise_stride: usize,
    pub tokens: &'a Tensor,
    pub flags: &'a Tensor,
    pub col: usize,
}

/// One token per row of `logits` [B, 1, V] or [B, V] (f32 or bf16) with the host sampler's
/// arithmetic (kernels.cu `sample_row`), written into column `call.col` of the frame's buffers.
/// Returns token + 1 per row as u32 [B, 1]: the next depformer step's shifted input.
pub fn sample_tokens(logits: &Tensor, call: &SampleCall) -> Result<Tensor> {
    let dev = cuda_dev(logits)?;
    let v = *logits.dims().last().ok_or_else(|| EngineError::InvalidInput("sampling a scalar".into()))?;
    let b = logits.elem_count() / v;
    let cols = call.tokens.dim(1)?;
    if v > 1 << 16 || call.tokens.dims() != [b, cols] || call.col >= cols {
        return Err(EngineError::InvalidInput(format!(
            "device sampler: logits {:?}, tokens {:?}, column {} (vocabularies up to 65536)",
            logits.dims(),
            call.tokens.dims(),
            call.col
        )));
    }
    let scratch = alloc::<f32>(&dev, &[b, v])?;
    let next = alloc::<u32>(&dev, &[b, 1])?;
    let logits = logits.contiguous()?;
    let (lp, name) = match logits.dtype() {
        DType::F32 => (ptr::<f32>(&logits, &dev)?, "sample_tokens_f32"),
        DType::BF16 => (ptr::<half::bf16>(&logits, &dev)?, "sample_tokens_bf16"),
        d => return Err(EngineError::InvalidInput(format!("device sampler: {d:?} logits"))),
    };
    let base = ptr::<f32>(call.params, &dev)?;
    let at = |i: usize| base + (i * 4) as u64;
    let (tp, kp, np) = (at(call.temps_at), at(call.topks_at), at(call.noise_at));
    let (sp, op, fp, xp) = (ptr::<f32>(&scratch, &dev)?, ptr::<u32>(call.tokens, &dev)?, ptr::<u32>(call.flags, &dev)?, ptr::<u32>(&next, &dev)?);
    let (vi, stride, colsi, coli) = (v as i32, call.noise_stride as i32, cols as i32, call.col as i32);
    let f = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    let mut l = f.builder();
    l.arg(&lp).arg(&vi).arg(&tp).arg(&kp).arg(&np).arg(&stride).arg(&sp).arg(&op).arg(&fp).arg(&colsi).arg(&coli).arg(&xp);
    // SAFETY: as in `decode_attention`; the parameter offsets were laid out by `exec::sampler`
    // for this batch (B temperatures, B top-k, B × noise_stride noise values).
    unsafe { l.launch(launch_cfg((b as u32, 1), SAMPLE_THREADS)) }.map_err(candle_core::Error::wrap)?;
    Ok(next)
}

/// The sampler kernel's block size and its largest top-k (kernels.cu SAMPLE_THREADS, SAMPLE_KMAX).
const SAMPLE_THREADS: u32 = 512;
pub const SAMPLE_KMAX: usize = 1024;

/// Device memory (used, total) in bytes, as the driver reports it.
pub fn memory(dev: &CudaDevice) -> Result<(usize, usize)> {
    let (free, total) = dev.cuda_stream().context().mem_get_info().map_err(candle_core::Error::wrap)?;
    Ok((total - free, total))
}

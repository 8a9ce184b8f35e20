//! Causal streaming convolutions, matching `moshi.modules.conv` (0.2.13).
//!
//! In the reference a non-streaming call is a streaming call on a fresh state: a causal conv
//! left-pads with `(k-1)·dilation + 1 − stride` samples (zeros, or the first sample repeated in
//! `replicate` mode) and never pads on the right; a transposed conv trims `k − stride` samples on
//! the right. We keep exactly that: `forward` on a fresh state *is* the batch path, so streaming
//! equals batch by construction and the tests check it anyway.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::{EngineError, Result};
use crate::weights::get_checked;

/// How the first chunk of a causal conv is left-padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Zeros (SEANet).
    Constant,
    /// The first input sample repeated (Mimi's downsampling conv).
    Replicate,
}

/// Hyper-parameters of one conv layer (the weights carry the channel counts).
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub bias: bool,
    pub pad_mode: PadMode,
}

/// Causal Conv1d. Checkpoint names: `{prefix}.conv.conv.{weight,bias}`.
#[derive(Debug, Clone)]
pub struct StreamingConv1d {
    weight: Tensor,
    /// The weight as [C_out, C_in·K] (an `exec::linear_weight`) for the seam's few-output-steps
    /// path (see `exec::conv1d`).
    flat: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    dilation: usize,
    /// Samples of left context carried between calls: effective kernel − stride.
    context: usize,
    pad_mode: PadMode,
}

/// Streaming state of a [`StreamingConv1d`]: the last `context` input samples, `None` before
/// the first call (then the padding mode decides what stands there).
#[derive(Debug, Clone, Default)]
pub struct ConvState {
    previous: Option<Tensor>,
    /// Batch rows that start a new stream at the next call.
    fresh: Vec<usize>,
}

impl ConvState {
    /// Batch row `row` starts a new stream at the next call (the others go on).
    pub fn reset_row(&mut self, row: usize) {
        if self.previous.is_some() && !self.fresh.contains(&row) {
            self.fresh.push(row);
        }
    }

    /// The carried input samples (None before the first call, or for a conv with no context):
    /// what a graph of the conv reads and rewrites (`mimi::graph` keeps it in a buffer of its own).
    pub(crate) fn carried_mut(&mut self) -> &mut Option<Tensor> {
        &mut self.previous
    }

    /// Whether a row starts a new stream at the next call (that call makes its padding on the host).
    pub(crate) fn has_fresh_rows(&self) -> bool {
        !self.fresh.is_empty()
    }
}

/// [B, 1, 1] with 1 at `rows`, 0 elsewhere, in `like`'s dtype and device.
fn row_mask(rows: &[usize], like: &Tensor) -> Result<Tensor> {
    let b = like.dim(0)?;
    let mut m = vec![0f32; b];
    for &r in rows {
        if r < b {
            m[r] = 1.0;
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, 1), like.device())?.to_dtype(like.dtype())?)
}

/// `old` with the rows in `rows` replaced by `new`'s (both [B, C, T]).
fn replace_rows(old: &Tensor, new: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let m = row_mask(rows, old)?;
    let keep = m.affine(-1.0, 1.0)?;
    Ok((old.broadcast_mul(&keep)? + new.broadcast_mul(&m)?)?)
}

impl StreamingConv1d {
    pub fn new(spec: ConvSpec, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("conv").pp("conv");
        let weight = get_checked(&vb, &[spec.out_channels, spec.in_channels, spec.kernel], "weight")?;
        let bias = if spec.bias { Some(get_checked(&vb, &[spec.out_channels], "bias")?) } else { None };
        let effective = (spec.kernel - 1) * spec.dilation + 1;
        let flat = crate::exec::linear_weight(&weight.reshape((spec.out_channels, spec.in_channels * spec.kernel))?)?;
        Ok(Self {
            weight,
            flat,
            bias,
            stride: spec.stride,
            dilation: spec.dilation,
            context: effective - spec.stride,
            pad_mode: spec.pad_mode,
        })
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Convolve `x` [B, C, T] (T a positive multiple of the stride), continuing `state`.
    /// Output [B, C_out, T / stride].
    pub fn forward(&self, x: &Tensor, state: &mut ConvState) -> Result<Tensor> {
        let (b, c, t) = x.dims3()?;
        if t == 0 || t % self.stride != 0 {
            return Err(EngineError::Streaming(format!(
                "conv input of {t} steps is not a positive multiple of its stride {}",
                self.stride
            )));
        }
        let x = if self.context == 0 {
            x.clone()
        } else {
            let initial = || -> Result<Tensor> {
                Ok(match self.pad_mode {
                    PadMode::Constant => Tensor::zeros((b, c, self.context), x.dtype(), x.device())?,
                    PadMode::Replicate => x.narrow(2, 0, 1)?.broadcast_as((b, c, self.context))?.contiguous()?,
                })
            };
            let previous = match &state.previous {
                Some(p) => {
                    if p.dim(0)? != b {
                        return Err(EngineError::Streaming(format!(
                            "batch size changed mid-stream ({} then {b}); reset the state first",
                            p.dim(0)?
                        )));
                    }
                    if state.fresh.is_empty() {
                        p.clone()
                    } else {
                        replace_rows(p, &initial()?, &state.fresh)?
                    }
                }
                None => initial()?,
            };
            state.fresh.clear();
            Tensor::cat(&[&previous, x], 2)?
        };
        let y = crate::exec::conv1d(&x, &self.weight, &self.flat, self.stride, self.dilation)?;
        if self.context > 0 {
            let total = x.dim(2)?;
            state.previous = Some(x.narrow(2, total - self.context, self.context)?.contiguous()?);
        }
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, (), 1))?)?,
            None => y,
        })
    }
}

/// Causal ConvTranspose1d. Checkpoint names: `{prefix}.convtr.convtr.{weight,bias}`.
/// `groups` is 1 (SEANet) or the channel count (Mimi's depthwise upsampling).
#[derive(Debug, Clone)]
pub struct StreamingConvTr1d {
    /// [C_in, C_out / groups, K]
    weight: Tensor,
    /// groups = 1: the kernel zero-padded to K' taps as [C_out·K', C_in] (an
    /// `exec::linear_weight`), so that every input step's output taps are one product.
    taps: Option<Tensor>,
    bias: Option<Tensor>,
    stride: usize,
    kernel: usize,
}

/// Streaming state of a [`StreamingConvTr1d`]: the overlap-add tail (K − stride samples, bias
/// removed) still owed to the next call's output.
#[derive(Debug, Clone, Default)]
pub struct ConvTrState {
    partial: Option<Tensor>,
    /// Batch rows that start a new stream at the next call.
    fresh: Vec<usize>,
}

impl ConvTrState {
    /// Batch row `row` starts a new stream at the next call (the others go on).
    pub fn reset_row(&mut self, row: usize) {
        if self.partial.is_some() && !self.fresh.contains(&row) {
            self.fresh.push(row);
        }
    }

    /// The overlap-add tail still owed (None before the first call, or with no tail), as
    /// `ConvState::carried_mut`.
    pub(crate) fn carried_mut(&mut self) -> &mut Option<Tensor> {
        &mut self.partial
    }

    /// Whether a row starts a new stream at the next call.
    pub(crate) fn has_fresh_rows(&self) -> bool {
        !self.fresh.is_empty()
    }
}

impl StreamingConvTr1d {
    /// `groups` must be 1 or equal to `in_channels == out_channels`.
    pub fn new(spec: ConvSpec, groups: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("convtr").pp("convtr");
        let depthwise = groups > 1;
        if depthwise && (groups != spec.in_channels || spec.in_channels != spec.out_channels) {
            return Err(EngineError::InvalidInput(format!(
                "transposed conv with {groups} groups over {}→{} channels: only 1 or depthwise is supported",
                spec.in_channels, spec.out_channels
            )));
        }
        let weight = get_checked(&vb, &[spec.in_channels, spec.out_channels / groups, spec.kernel], "weight")?;
        let bias = if spec.bias { Some(get_checked(&vb, &[spec.out_channels], "bias")?) } else { None };
        let kp = spec.kernel.div_ceil(spec.stride) * spec.stride;
        let taps = if depthwise {
            None
        } else {
            let w = weight.pad_with_zeros(2, 0, kp - spec.kernel)?;
            Some(crate::exec::linear_weight(&w.reshape((spec.in_channels, spec.out_channels * kp))?.t()?)?)
        };
        Ok(Self { weight, taps, bias, stride: spec.stride, kernel: spec.kernel })
    }

    /// Full transposed convolution without bias: [B, C_in, T] → [B, C_out, (T−1)·S + K].
    ///
    /// Computed as one product (or, depthwise, one broadcast multiply: `exec::conv_tr_taps`)
    /// giving every frame's K output taps, then an overlap-add: the kernel, zero-padded to
    /// K' = ⌈K/S⌉·S taps, splits into K'/S blocks of S taps, and block m of frame t lands on output frame t + m. We do not
    /// use Candle's `conv_transpose1d`: on CPU (candle-core 0.11.1) it returns wrong values for
    /// batch sizes above 1 (tests/streaming_modules.rs keeps a check of that).
    fn convtr_full(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _c_in, t) = x.dims3()?;
        let (s, k) = (self.stride, self.kernel);
        let blocks = k.div_ceil(s);
        let kp = blocks * s;
        let w = if kp > k { self.weight.pad_with_zeros(2, 0, kp - k)? } else { self.weight.clone() };
        // taps: [B, C_out, T, K']
        let taps = crate::exec::conv_tr_taps(x, &w, self.taps.as_ref())?;
        let c_out = taps.dim(1)?;
        let mut out: Option<Tensor> = None;
        for m in 0..blocks {
            let part = taps.narrow(3, m * s, s)?.reshape((b, c_out, t * s))?;
            let part = part.pad_with_zeros(2, m * s, (blocks - 1 - m) * s)?;
            out = Some(match out {
                None => part,
                Some(acc) => (acc + part)?,
            });
        }
        let out = out.expect("kernel has at least one block");
        Ok(if kp > k { out.narrow(2, 0, (t - 1) * s + k)? } else { out })
    }

    /// Transposed conv of `x` [B, C, T], continuing `state`. Output [B, C_out, T · stride].
    pub fn forward(&self, x: &Tensor, state: &mut ConvTrState) -> Result<Tensor> {
        let (b, _c, t) = x.dims3()?;
        if t == 0 {
            return Err(EngineError::Streaming("transposed conv input has no steps".into()));
        }
        let y = self.convtr_full(x)?;
        let tail = self.kernel - self.stride;
        let total = y.dim(2)?;
        let (out, new_partial) = if tail == 0 {
            (y, None)
        } else {
            let y = match &state.partial {
                Some(p) => {
                    if p.dim(0)? != b {
                        return Err(EngineError::Streaming(format!(
                            "batch size changed mid-stream ({} then {b}); reset the state first",
                            p.dim(0)?
                        )));
                    }
                    let p = if state.fresh.is_empty() { p.clone() } else { replace_rows(p, &p.zeros_like()?, &state.fresh)? };
                    let head = (y.narrow(2, 0, tail)? + p)?;
                    Tensor::cat(&[&head, &y.narrow(2, tail, total - tail)?], 2)?
                }
                None => y,
            };
            let keep = total - tail;
            (y.narrow(2, 0, keep)?, Some(y.narrow(2, keep, tail)?.contiguous()?))
        };
        state.partial = new_partial;
        state.fresh.clear();
        Ok(match &self.bias {
            Some(bias) => out.broadcast_add(&bias.reshape((1, (), 1))?)?,
            None => out,
        })
    }
}

/// A 1×1 conv stored as `[out, in, 1]`, applied to [B, C, T] as a matmul.
#[derive(Debug, Clone)]
pub struct PointwiseConv {
    /// [out, in]
    weight: Tensor,
}

impl PointwiseConv {
    /// Loaded in f32 whatever the checkpoint dtype (used by the quantizer, which runs in f32).
    pub fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        let w = get_checked(&vb, &[out_channels, in_channels, 1], "weight")?;
        Ok(Self { weight: w.squeeze(2)?.to_dtype(DType::F32)? })
    }
}

impl Module for PointwiseConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::exec::pointwise_conv(x, &self.weight)
    }
}

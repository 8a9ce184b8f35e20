//! What every layer of one transformer call shares, computed once per call (not per layer):
//! positions, RoPE tables, the additive mask, and — where the seam runs the fused decode kernel
//! (`exec::fused_decode`) — the rows' starts and the step's position on the device, which the
//! kernels read there so that a CUDA graph of the step can be replayed at any position
//! (`lm::temporal_graph` writes fresh values into a captured context with [`StepCtx::refill`]).
//!
//! A streaming call can also be made in the *fixed layout* ([`StepCall::fixed`]), which the
//! generic attention (Candle's ops) can be recorded in: it attends over the whole ring (slots not
//! yet written, or of another row's earlier stream, masked), writes the new keys through a scatter
//! at slots held on the device, and always carries its mask. Every tensor the call reads is then
//! of a shape that does not depend on the position, and every position-dependent value is in a
//! tensor `refill` rewrites: Mimi's transformers are graphed that way (`mimi::graph`).

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::nn::rope::Rope;

/// What a transformer call is: its shape, position and attention settings (`StepCtx::new`).
#[derive(Debug, Clone, Copy)]
pub struct StepCall<'a> {
    pub batch: usize,
    /// Steps in the call (T).
    pub steps: usize,
    /// Position of its first step.
    pub offset: usize,
    /// The ring's capacity for a streaming call (None: a whole sequence).
    pub capacity: Option<usize>,
    /// Each row's first position (empty: all 0).
    pub starts: &'a [usize],
    /// The attention span.
    pub context: usize,
    /// The layers' rotary embedding, if any.
    pub rope: Option<&'a Rope>,
    /// The activations' dtype and the heads' width (the seam's choice of kernel depends on them).
    pub dtype: DType,
    pub head_dim: usize,
    /// The number of heads (the fixed layout's write slots are laid out per head).
    pub heads: usize,
    /// A streaming call in the fixed layout (see the module docs): needs `capacity`, at most
    /// `capacity` steps, and a cache in the model's dtype.
    pub fixed: bool,
}

/// The per-call context of a transformer step (see the module docs). The mask is None when
/// nothing is masked, as in a streaming step of a row that began long ago, and whenever the
/// fused decode kernel runs (it masks by `starts_dev` and the context itself).
pub struct StepCtx {
    pub offset: usize,
    /// Ring capacity for a streaming call, None for a whole sequence.
    pub capacity: Option<usize>,
    /// Empty, or one start position per row.
    pub starts: Vec<usize>,
    /// cos, sin: [T, D/2], or [B, T, D/2] with per-row starts.
    pub rope: Option<(Tensor, Tensor)>,
    /// [T, S] or [B, 1, T, S].
    pub mask: Option<Tensor>,
    /// The fused decode kernel's inputs: the rows' starts [B] i64 and the step's position [1]
    /// i64, on the device (None unless `exec::fused_decode` chose it for this call).
    pub fused: Option<FusedInputs>,
    /// The fixed layout's write slots: the ring slot of each of the call's steps, as the indices
    /// of a scatter along the steps, u32 [B, H, T, Dh] (None outside the fixed layout).
    pub slots: Option<Tensor>,
}

/// The device inputs of the fused decode kernels (see [`StepCtx::fused`]).
pub struct FusedInputs {
    pub starts: Tensor,
    pub pos: Tensor,
}

/// The position held by each slot the layers will read after a call's writes (negative: a slot
/// of the fixed layout's whole ring not yet written).
fn key_positions(call: &StepCall) -> Vec<i64> {
    let (offset, t) = (call.offset, call.steps);
    match call.capacity {
        Some(cap) if call.fixed => {
            let (last, cap) = ((offset + t) as i64 - 1, cap as i64);
            (0..cap).map(|s| last - (last - s).rem_euclid(cap)).collect()
        }
        Some(cap) => {
            let written = offset + t;
            let (filled, last, cap) = (written.min(cap), written as i64 - 1, cap as i64);
            (0..filled as i64).map(|s| last - (last - s).rem_euclid(cap)).collect()
        }
        None => (offset..offset + t).map(|p| p as i64).collect(),
    }
}

impl StepCtx {
    /// The context of `call` on `device` (see the module docs).
    pub fn new(call: &StepCall, device: &Device) -> Result<Self> {
        let (b, t, offset) = (call.batch, call.steps, call.offset);
        let per_row = call.starts.iter().any(|&s| s > 0);
        if per_row && call.starts.len() != b {
            return Err(EngineError::Streaming(format!("{} row starts for a batch of {b}", call.starts.len())));
        }
        let starts: Vec<usize> = if per_row { call.starts.to_vec() } else { Vec::new() };
        let row_starts: Vec<i64> = if per_row { starts.iter().map(|&s| s as i64).collect() } else { vec![0] };
        let fused = super::fused_decode(device, call);
        let fixed = call.fixed && !fused;
        if fixed {
            match call.capacity {
                Some(cap) if t <= cap => {}
                _ => {
                    return Err(EngineError::Streaming(format!(
                        "a fixed-layout call of {t} steps needs a ring of at least that many slots, got {:?}",
                        call.capacity
                    )))
                }
            }
        }
        let mask = if fused { None } else { Self::mask(call, &row_starts, per_row, device)? };
        let rope = match call.rope {
            None => None,
            Some(r) if per_row => {
                let offsets: Vec<usize> = starts.iter().map(|&st| offset.saturating_sub(st)).collect();
                Some(r.row_tables(&offsets, t, device)?)
            }
            Some(r) => Some(r.tables(offset, t, device)?),
        };
        let fused = if fused {
            // Zeros are made on the device (no host copy in the common case).
            let starts = if per_row { Tensor::from_vec(row_starts, b, device)? } else { Tensor::zeros(b, DType::I64, device)? };
            Some(FusedInputs { starts, pos: Tensor::from_vec(vec![(offset + t - 1) as i64], 1, device)? })
        } else {
            None
        };
        let slots = match call.capacity {
            Some(cap) if fixed => {
                let s: Vec<u32> = (0..t).map(|i| ((offset + i) % cap) as u32).collect();
                let s = Tensor::from_vec(s, (1, 1, t, 1), device)?;
                Some(s.broadcast_as((b, call.heads, t, call.head_dim))?.contiguous()?)
            }
            _ => None,
        };
        Ok(Self { offset, capacity: call.capacity, starts, rope, mask, fused, slots })
    }

    /// The additive mask [T, S] (or [B, 1, T, S] with per-row starts); None when nothing is masked.
    fn mask(call: &StepCall, row_starts: &[i64], per_row: bool, device: &Device) -> Result<Option<Tensor>> {
        let (b, t, offset, context) = (call.batch, call.steps, call.offset, call.context);
        let key_pos = key_positions(call);
        let mut mask = Vec::with_capacity(row_starts.len() * t * key_pos.len());
        let mut any = false;
        for &start in row_starts {
            for i in 0..t {
                let qp = (offset + i) as i64;
                for &kp in &key_pos {
                    let delta = qp - kp;
                    let ok = delta >= 0 && delta < context as i64 && kp >= start && kp >= 0;
                    any |= !ok;
                    mask.push(if ok { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let s = key_pos.len();
        // The fixed layout always carries its mask (its shape must not depend on the position).
        Ok(match (any || call.fixed, per_row) {
            (false, _) => None,
            (true, false) => Some(Tensor::from_vec(mask, (t, s), device)?),
            (true, true) => Some(Tensor::from_vec(mask, (b, 1, t, s), device)?),
        })
    }

    /// Whether `other` has tensors of the same shapes and kinds as this context's (a captured
    /// context can then take its values with `refill`): the fused decode kernel's inputs, or the
    /// fixed layout's (mask and write slots).
    pub fn same_layout(&self, other: &StepCtx) -> bool {
        let same = |a: &Tensor, b: &Tensor| a.dims() == b.dims() && a.dtype() == b.dtype();
        let both = |a: Option<&Tensor>, b: Option<&Tensor>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => same(a, b),
            _ => false,
        };
        let rope = match (&self.rope, &other.rope) {
            (None, None) => true,
            (Some((c, s)), Some((c2, s2))) => same(c, c2) && same(s, s2),
            _ => false,
        };
        let inputs = match (&self.fused, &other.fused) {
            (Some(a), Some(b)) => same(&a.starts, &b.starts) && same(&a.pos, &b.pos) && self.mask.is_none() && other.mask.is_none(),
            (None, None) => self.slots.is_some() && both(self.slots.as_ref(), other.slots.as_ref()) && both(self.mask.as_ref(), other.mask.as_ref()),
            _ => false,
        };
        rope && inputs && self.capacity == other.capacity
    }

    /// Take `fresh`'s values (a context of the same layout, `same_layout`) into this context's
    /// tensors in place: their addresses stay what a captured CUDA graph reads.
    pub fn refill(&mut self, fresh: &StepCtx) -> Result<()> {
        if !self.same_layout(fresh) {
            return Err(EngineError::Streaming("refill: a step context of another layout".into()));
        }
        if let (Some((c, s)), Some((c2, s2))) = (&self.rope, &fresh.rope) {
            c.slice_set(&c2.contiguous()?, 0, 0)?;
            s.slice_set(&s2.contiguous()?, 0, 0)?;
        }
        if let (Some(a), Some(b)) = (&self.fused, &fresh.fused) {
            a.starts.slice_set(&b.starts, 0, 0)?;
            a.pos.slice_set(&b.pos, 0, 0)?;
        }
        for (a, b) in [(&self.mask, &fresh.mask), (&self.slots, &fresh.slots)] {
            if let (Some(a), Some(b)) = (a, b) {
                a.slice_set(&b.contiguous()?, 0, 0)?;
            }
        }
        self.offset = fresh.offset;
        self.starts.clone_from(&fresh.starts);
        Ok(())
    }

    /// A context with copies of this one's tensors (fresh buffers a graph can own).
    pub fn deep_copy(&self) -> Result<Self> {
        let c = |t: &Tensor| t.contiguous().and_then(|t| t.copy());
        Ok(Self {
            offset: self.offset,
            capacity: self.capacity,
            starts: self.starts.clone(),
            rope: match &self.rope {
                Some((a, b)) => Some((c(a)?, c(b)?)),
                None => None,
            },
            mask: self.mask.as_ref().map(c).transpose()?,
            slots: self.slots.as_ref().map(c).transpose()?,
            fused: match &self.fused {
                Some(f) => Some(FusedInputs { starts: c(&f.starts)?, pos: c(&f.pos)? }),
                None => None,
            },
        })
    }
}

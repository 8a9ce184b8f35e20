//! What every layer of one transformer call shares, computed once per call (not per layer):
//! positions, RoPE tables, the additive mask, and the rows' starts on the device when the fused
//! decode kernel will want them.

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::nn::rope::Rope;

/// The per-call context of a transformer step (see the module docs). The mask is None when
/// nothing is masked, as in a streaming step of a row that began long ago.
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
    /// [B] i64, only where the seam runs the fused decode kernel (`exec::wants_device_starts`).
    pub starts_dev: Option<Tensor>,
}

impl StepCtx {
    /// A call of `t` steps for `b` rows from position `offset`. `capacity`: the ring's for a
    /// streaming call (None: a whole sequence); `starts`: each row's first position (empty: all
    /// 0); `context`: the attention span; `rope`: the layers' rotary embedding, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: usize,
        t: usize,
        offset: usize,
        capacity: Option<usize>,
        starts: &[usize],
        context: usize,
        rope: Option<&Rope>,
        device: &Device,
    ) -> Result<Self> {
        let per_row = starts.iter().any(|&s| s > 0);
        if per_row && starts.len() != b {
            return Err(EngineError::Streaming(format!("{} row starts for a batch of {b}", starts.len())));
        }
        let starts: Vec<usize> = if per_row { starts.to_vec() } else { Vec::new() };
        // The position held by each slot the layers will read (after this call's writes).
        let key_pos: Vec<i64> = match capacity {
            Some(cap) => {
                let written = offset + t;
                let (filled, last, cap) = (written.min(cap), written as i64 - 1, cap as i64);
                (0..filled as i64).map(|s| last - (last - s).rem_euclid(cap)).collect()
            }
            None => (offset..offset + t).map(|p| p as i64).collect(),
        };
        let row_starts: Vec<i64> = if per_row { starts.iter().map(|&s| s as i64).collect() } else { vec![0] };
        let mut mask = Vec::with_capacity(row_starts.len() * t * key_pos.len());
        let mut any = false;
        for &start in &row_starts {
            for i in 0..t {
                let qp = (offset + i) as i64;
                for &kp in &key_pos {
                    let delta = qp - kp;
                    let ok = delta >= 0 && delta < context as i64 && kp >= start;
                    any |= !ok;
                    mask.push(if ok { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let s = key_pos.len();
        let mask = match (any, per_row) {
            (false, _) => None,
            (true, false) => Some(Tensor::from_vec(mask, (t, s), device)?),
            (true, true) => Some(Tensor::from_vec(mask, (b, 1, t, s), device)?),
        };
        let rope = match rope {
            None => None,
            Some(r) if per_row => {
                let offsets: Vec<usize> = starts.iter().map(|&st| offset.saturating_sub(st)).collect();
                Some(r.row_tables(&offsets, t, device)?)
            }
            Some(r) => Some(r.tables(offset, t, device)?),
        };
        // Zeros are made on the device (no host copy in the common case).
        let starts_dev = match (super::wants_device_starts(device, capacity, t), per_row) {
            (false, _) => None,
            (true, false) => Some(Tensor::zeros(b, DType::I64, device)?),
            (true, true) => Some(Tensor::from_vec(row_starts, b, device)?),
        };
        Ok(Self { offset, capacity, starts, rope, mask, starts_dev })
    }
}

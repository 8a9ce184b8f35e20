//! The streaming KV cache of one attention layer for one batch of streams: a ring of `capacity`
//! slots, allocated at the first step and written in place (position p in slot p mod capacity, as
//! the reference's `RingKVCache`), in the model's dtype or 8-bit ([`KvCacheKind`]). The kind is
//! the cache's own, given when its state is made (`TransformerState::new`, from the run's
//! `RunOptions`): the weights know nothing of it.

use candle_core::{DType, Device, Tensor, D};

use crate::error::{EngineError, Result};

/// How a streaming KV cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheKind {
    /// The model's dtype (bf16 for the released LM), as the reference.
    #[default]
    Model,
    /// 8 bits per value, symmetric: one f32 scale per (row, head, position) = max|x| / 127,
    /// values round(x / scale) stored as u8 = q + 128. Half the bytes of bf16 (plus 3% scales).
    Int8,
}

#[derive(Debug)]
pub(super) enum Ring {
    /// [B, H, capacity, Dh] each, in the model's dtype.
    Full { k: Tensor, v: Tensor },
    /// u8 [B, H, capacity, Dh] and f32 scales [B, H, capacity].
    Int8 { k: Tensor, v: Tensor, ks: Tensor, vs: Tensor },
}

/// Keys and values of one layer for one stream batch (see the module docs).
#[derive(Debug, Default)]
pub struct KvCache {
    kind: KvCacheKind,
    pub(super) ring: Option<Ring>,
    /// Positions written so far (the next position to write).
    pub(super) written: usize,
}

impl Clone for KvCache {
    /// A deep copy: the ring is written in place, so clones must not share its storage.
    fn clone(&self) -> Self {
        let c = |t: &Tensor| t.copy().expect("copy KV cache");
        let ring = self.ring.as_ref().map(|r| match r {
            Ring::Full { k, v } => Ring::Full { k: c(k), v: c(v) },
            Ring::Int8 { k, v, ks, vs } => Ring::Int8 { k: c(k), v: c(v), ks: c(ks), vs: c(vs) },
        });
        Self { kind: self.kind, ring, written: self.written }
    }
}

/// 8-bit symmetric quantisation of x [.., Dh] along its last dim: (u8 = q + 128, f32 scales [..]).
/// The CUDA kernel `qkv_rope_write` computes the same (it rounds ties to even, this away from zero).
pub fn quantize_i8(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let xf = x.to_dtype(DType::F32)?;
    let amax = xf.abs()?.max_keepdim(D::Minus1)?.clamp(1e-30f32, f32::MAX)?;
    let inv = Tensor::full(127f32, amax.shape(), amax.device())?.div(&amax)?;
    let q = xf.broadcast_mul(&inv)?.round()?.clamp(-127f32, 127f32)?;
    let u = (q + 128.0)?.to_dtype(DType::U8)?;
    Ok((u, (amax / 127.0)?.squeeze(D::Minus1)?))
}

/// The inverse of `quantize_i8`, in f32.
pub fn dequantize_i8(u: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok((u.to_dtype(DType::F32)? - 128.0)?.broadcast_mul(&scale.unsqueeze(D::Minus1)?)?)
}

impl KvCache {
    /// An empty cache that will store keys and values as `kind`.
    pub fn new(kind: KvCacheKind) -> Self {
        Self { kind, ring: None, written: 0 }
    }

    pub fn kind(&self) -> KvCacheKind {
        self.kind
    }

    /// Positions written so far (the next position to write).
    pub fn written(&self) -> usize {
        self.written
    }

    /// Number of cached steps.
    pub fn len(&self) -> usize {
        match &self.ring {
            Some(Ring::Full { k, .. }) | Some(Ring::Int8 { k, .. }) => self.written.min(k.dim(2).unwrap_or(0)),
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the ring (keys, values and scales).
    pub fn bytes(&self) -> usize {
        let b = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match &self.ring {
            Some(Ring::Full { k, v }) => b(k) + b(v),
            Some(Ring::Int8 { k, v, ks, vs }) => b(k) + b(v) + b(ks) + b(vs),
            None => 0,
        }
    }

    /// Move the write position back by `steps` (see `TransformerState::rewind`).
    pub fn rewind(&mut self, steps: usize) {
        self.written = self.written.saturating_sub(steps);
    }

    /// Move the write position forward by `steps` without writing (benchmarks: a cache as full
    /// as a long conversation's, whatever its contents).
    pub fn skip(&mut self, steps: usize) {
        self.written += steps;
    }

    /// Write `k`, `v` [B, H, T, Dh] for positions `offset .. offset + T`.
    pub(super) fn append(&mut self, k: &Tensor, v: &Tensor, offset: usize, capacity: usize) -> Result<()> {
        let (b, h, t, dh) = k.dims4()?;
        self.prepare(b, h, dh, offset, capacity, k.dtype(), k.device())?;
        let ring = self.ring.as_ref().expect("allocated by prepare");
        // Only the last `capacity` positions of the chunk can survive the writes.
        let skip = t.saturating_sub(capacity);
        let mut pos = offset + skip;
        let mut i = skip;
        while i < t {
            let slot = pos % capacity;
            let n = (capacity - slot).min(t - i);
            let (kn, vn) = (k.narrow(2, i, n)?.contiguous()?, v.narrow(2, i, n)?.contiguous()?);
            match ring {
                Ring::Full { k: rk, v: rv } => {
                    rk.slice_set(&kn, 2, slot)?;
                    rv.slice_set(&vn, 2, slot)?;
                }
                Ring::Int8 { k: rk, v: rv, ks, vs } => {
                    let ((kq, kscale), (vq, vscale)) = (quantize_i8(&kn)?, quantize_i8(&vn)?);
                    rk.slice_set(&kq, 2, slot)?;
                    rv.slice_set(&vq, 2, slot)?;
                    ks.slice_set(&kscale.contiguous()?, 2, slot)?;
                    vs.slice_set(&vscale.contiguous()?, 2, slot)?;
                }
            }
            i += n;
            pos += n;
        }
        self.written = offset + t;
        Ok(())
    }

    /// Write `k`, `v` [B, H, T, Dh] for positions `offset .. offset + T` (T ≤ capacity) at the
    /// ring slots `slots` (u32 [B, H, T, Dh], `StepCtx::slots`: each position's slot, held on the
    /// device) with one scatter each: the fixed layout's write, whose launches do not depend on
    /// the position. A cache in the model's dtype only.
    pub(super) fn write_slots(&mut self, k: &Tensor, v: &Tensor, slots: &Tensor, offset: usize, capacity: usize) -> Result<()> {
        let (b, h, t, dh) = k.dims4()?;
        if t > capacity {
            return Err(EngineError::Streaming(format!("a fixed-layout write of {t} steps into a ring of {capacity}")));
        }
        self.prepare(b, h, dh, offset, capacity, k.dtype(), k.device())?;
        match self.ring.as_ref().expect("allocated by prepare") {
            Ring::Full { k: rk, v: rv } => {
                rk.scatter_set(slots, &k.contiguous()?, 2)?;
                rv.scatter_set(slots, &v.contiguous()?, 2)?;
            }
            Ring::Int8 { .. } => {
                return Err(EngineError::Streaming("the fixed layout needs a KV cache in the model's dtype, not 8-bit".into()))
            }
        }
        self.written = offset + t;
        Ok(())
    }

    /// The whole ring as keys and values (the fixed layout reads every slot; its mask hides
    /// those not yet written). A cache in the model's dtype only.
    pub(super) fn whole(&self) -> Result<(Tensor, Tensor)> {
        match self.ring.as_ref() {
            Some(Ring::Full { k, v }) => Ok((k.clone(), v.clone())),
            Some(Ring::Int8 { .. }) => Err(EngineError::Streaming("the fixed layout needs a KV cache in the model's dtype, not 8-bit".into())),
            None => Err(EngineError::Streaming("the KV cache was read before any write".into())),
        }
    }

    /// Check that a write of batch `b` at `offset` continues this cache, and allocate the ring
    /// ([B, H, capacity, Dh] in `dtype`, or 8-bit) at the first write.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn prepare(
        &mut self,
        b: usize,
        h: usize,
        dh: usize,
        offset: usize,
        capacity: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<()> {
        if offset != self.written {
            return Err(EngineError::Streaming(format!(
                "KV cache holds {} positions but the step starts at {offset}",
                self.written
            )));
        }
        if let Some(Ring::Full { k: rk, .. } | Ring::Int8 { k: rk, .. }) = &self.ring {
            if rk.dim(0)? != b {
                return Err(EngineError::Streaming(format!(
                    "batch size changed mid-stream ({} then {b}); reset the state first",
                    rk.dim(0)?
                )));
            }
        }
        if self.ring.is_none() {
            self.ring = Some(match self.kind {
                KvCacheKind::Model => {
                    let z = Tensor::zeros((b, h, capacity, dh), dtype, dev)?;
                    Ring::Full { v: z.copy()?, k: z }
                }
                KvCacheKind::Int8 => {
                    let z = Tensor::zeros((b, h, capacity, dh), DType::U8, dev)?;
                    let s = Tensor::zeros((b, h, capacity), DType::F32, dev)?;
                    Ring::Int8 { v: z.copy()?, k: z, vs: s.copy()?, ks: s }
                }
            });
        }
        Ok(())
    }

    /// The filled part of the ring as keys and values in `dtype` (8-bit rings dequantised).
    pub(super) fn filled(&self, dtype: DType) -> Result<(Tensor, Tensor)> {
        let n = self.len();
        match self.ring.as_ref() {
            Some(Ring::Full { k, v }) => Ok((k.narrow(2, 0, n)?, v.narrow(2, 0, n)?)),
            Some(Ring::Int8 { k, v, ks, vs }) => Ok((
                dequantize_i8(&k.narrow(2, 0, n)?, &ks.narrow(2, 0, n)?)?.to_dtype(dtype)?,
                dequantize_i8(&v.narrow(2, 0, n)?, &vs.narrow(2, 0, n)?)?.to_dtype(dtype)?,
            )),
            None => Err(EngineError::Streaming("the KV cache was read before any write".into())),
        }
    }

    /// Copy positions `0 .. n` of `src` (a one-row cache that has written exactly `n` positions,
    /// n ≤ capacity) into row `row` of this `batch`-row cache as its positions `first .. first + n`,
    /// where `first + n` is this cache's write position: a row prefilled on its own joins a running
    /// batch (`TransformerState::splice_row`). Only that row's slots are written; the stored values
    /// are copied as they are (8-bit rings keep their codes and scales).
    pub(crate) fn splice_row(&mut self, src: &KvCache, row: usize, batch: usize, capacity: usize) -> Result<()> {
        let n = src.written;
        let Some(sring) = src.ring.as_ref() else { return Ok(()) };
        let sk = match sring {
            Ring::Full { k, .. } | Ring::Int8 { k, .. } => k,
        };
        let (sb, h, scap, dh) = sk.dims4()?;
        if sb != 1 || scap != capacity || n > capacity || src.kind != self.kind || n > self.written || row >= batch {
            return Err(EngineError::Streaming(format!(
                "splice: a {sb}-row cache of {n} positions (capacity {scap}, {:?}) into row {row} of {batch} at {} (capacity {capacity}, {:?})",
                src.kind, self.written, self.kind
            )));
        }
        if self.ring.is_none() {
            // A state advanced without computing (`skip`): allocate its ring now.
            let w = self.written;
            self.prepare(batch, h, dh, w, capacity, sk.dtype(), sk.device())?;
        }
        let first = self.written - n;
        let ring = self.ring.as_ref().expect("allocated above");
        let pairs: Vec<(&Tensor, &Tensor)> = match (ring, sring) {
            (Ring::Full { k, v }, Ring::Full { k: a, v: b }) => vec![(k, a), (v, b)],
            (Ring::Int8 { k, v, ks, vs }, Ring::Int8 { k: a, v: b, ks: c, vs: d }) => vec![(k, a), (v, b), (ks, c), (vs, d)],
            _ => unreachable!("kinds checked above"),
        };
        for (dst, s) in pairs {
            let dst_row = dst.narrow(0, row, 1)?;
            let mut i = 0;
            while i < n {
                let slot = (first + i) % capacity;
                let len = (capacity - slot).min(n - i);
                dst_row.slice_set(&s.narrow(2, i, len)?.contiguous()?, 2, slot)?;
                i += len;
            }
        }
        Ok(())
    }

    /// The ring as our CUDA kernels read it (None before the first write).
    #[cfg(feature = "cuda")]
    pub(super) fn ring_view(&self) -> Option<super::cuda::RingView<'_>> {
        Some(match self.ring.as_ref()? {
            Ring::Full { k, v } => super::cuda::RingView { k, v, scales: None },
            Ring::Int8 { k, v, ks, vs } => super::cuda::RingView { k, v, scales: Some((ks, vs)) },
        })
    }

    /// The ring's tensors (keys, values, and scales for an 8-bit ring): what a CUDA graph that
    /// reads and writes this cache holds the addresses of (`lm::temporal_graph` checks that they
    /// are still the same storage before replaying). Empty before the first write.
    pub fn ring_tensors(&self) -> Vec<&Tensor> {
        match &self.ring {
            Some(Ring::Full { k, v }) => vec![k, v],
            Some(Ring::Int8 { k, v, ks, vs }) => vec![k, v, ks, vs],
            None => Vec::new(),
        }
    }
}

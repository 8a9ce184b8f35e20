//! Token sampling on the device: the seam's choice between the host sampler
//! (`lm::sampling::sample`, every backend) and the CUDA sampler kernel, which computes the same
//! arithmetic operation for operation (its exponential is the host's `exp_f32`, its softmax sum
//! runs in token order, its top-k order and argmax break ties the host's way), so that one seed
//! gives the same tokens on either. What the kernel cannot draw is the noise: the caller draws
//! every call of a frame on the host first, in the order the host sampler would have drawn it
//! ([`SampleCallPlan`]), and the frame's settings and noise travel in one upload. Each call writes
//! its tokens into a device buffer and hands back the next depformer step's input without a
//! round trip; [`FrameSampler::finish`] downloads the whole frame's tokens once.
//!
//! The host samples instead when `RunOptions::sampler` is `Sampler::Host`, on devices without
//! the kernel (CPU, Metal), and for a top-k above the kernel's 1024 (0, the whole vocabulary in
//! token order, is supported).

use candle_core::{DType, Device, Tensor};

use super::{Backend, RunOptions};
use crate::error::Result;

/// Where tokens are sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Sampler {
    /// On the model's device where the seam has a sampler kernel (CUDA), else on the host.
    #[default]
    Device,
    /// Always on the host (the logits are downloaded at every sampling call).
    Host,
}

/// One sampling call of a frame, made on the host: per row the temperature (≤ 0: greedy), the
/// top-k (0: every token, in token order) and the row's noise, `stride` values per row (row r's
/// draws first, one per rank; rows that draw fewer, or none, are padded).
#[derive(Debug, Clone, Default)]
pub struct SampleCallPlan {
    pub temps: Vec<f32>,
    pub top_k: Vec<u32>,
    pub noise: Vec<f32>,
    pub stride: usize,
}

/// The largest top-k the device sampler takes.
#[cfg(feature = "cuda")]
const KMAX: usize = super::cuda::SAMPLE_KMAX;
#[cfg(not(feature = "cuda"))]
const KMAX: usize = 0;

/// Whether a frame with these settings is sampled on `device` (see the module docs): `top_k`
/// holds every row's top-k of every call.
pub fn device_sampling(device: &Device, options: &RunOptions, top_k: impl IntoIterator<Item = u32>) -> bool {
    options.sampler == Sampler::Device
        && Backend::of(device) == Backend::Cuda
        && cfg!(feature = "cuda")
        && top_k.into_iter().all(|k| (k as usize) <= KMAX)
}

/// What a frame's calls sampled, downloaded once: [B, calls] row-major each. A flag 1 means the
/// row's logits held a non-finite value (its token is then 0).
pub struct FrameTokens {
    pub tokens: Vec<u32>,
    pub flags: Vec<u32>,
}

/// A frame's sampling calls on the device (see the module docs).
pub struct FrameSampler {
    /// Every call's temperatures, top-k and noise, in one f32 buffer on the device.
    params: Tensor,
    /// [2, B, calls] u32: tokens, then flags.
    out: Tensor,
    /// Per call: where its temperatures, top-k and noise start in `params`, and the noise stride.
    layout: Vec<[usize; 4]>,
    batch: usize,
}

impl FrameSampler {
    /// Upload a frame's calls (all with `batch` rows) to `device`.
    pub fn new(device: &Device, batch: usize, calls: &[SampleCallPlan]) -> Result<Self> {
        let (params, layout) = Self::pack(batch, calls);
        let n = params.len();
        let params = Tensor::from_vec(params, n, device)?;
        let out = Tensor::zeros((2, batch, calls.len()), DType::U32, device)?;
        Ok(Self { params, out, layout, batch })
    }

    /// The calls' settings and noise in one buffer, and where each call's parts start.
    fn pack(batch: usize, calls: &[SampleCallPlan]) -> (Vec<f32>, Vec<[usize; 4]>) {
        let mut params = Vec::new();
        let mut layout = Vec::with_capacity(calls.len());
        for c in calls {
            debug_assert!(c.temps.len() == batch && c.top_k.len() == batch && c.noise.len() == batch * c.stride);
            let at = params.len();
            layout.push([at, at + batch, at + 2 * batch, c.stride]);
            params.extend_from_slice(&c.temps);
            params.extend(c.top_k.iter().map(|&k| k as f32));
            params.extend_from_slice(&c.noise);
        }
        (params, layout)
    }

    /// Whether `calls` have this sampler's shape (batch, call count, noise strides): what a
    /// captured graph over it needs to be replayed with them.
    pub fn fits(&self, batch: usize, calls: &[SampleCallPlan]) -> bool {
        batch == self.batch && calls.len() == self.layout.len() && calls.iter().zip(&self.layout).all(|(c, l)| c.stride == l[3])
    }

    /// Replace the settings and noise with another frame's, in place (the buffer keeps its
    /// address: a captured graph reads it), when the calls `fits`.
    pub fn update(&self, calls: &[SampleCallPlan]) -> Result<()> {
        if !self.fits(self.batch, calls) {
            return Err(crate::error::EngineError::InvalidInput("device sampler: a frame of another shape".into()));
        }
        let (params, _) = Self::pack(self.batch, calls);
        let n = params.len();
        self.params.slice_set(&Tensor::from_vec(params, n, self.params.device())?, 0, 0)?;
        Ok(())
    }

    /// Call `call` of the frame on `logits` [B, 1, V] (or [B, V]): returns token + 1 per row as
    /// u32 [B, 1], on the device (the next depformer step's shifted input).
    pub fn sample(&self, logits: &Tensor, call: usize) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        {
            let [temps_at, topks_at, noise_at, noise_stride] = self.layout[call];
            let (tokens, flags) = (self.out.get(0)?, self.out.get(1)?);
            let c = super::cuda::SampleCall { params: &self.params, temps_at, topks_at, noise_at, noise_stride, tokens: &tokens, flags: &flags, col: call };
            super::cuda::sample_tokens(logits, &c)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (logits, call);
            Err(crate::error::EngineError::InvalidInput("the device sampler needs the cuda feature".into()))
        }
    }

    /// The frame's tokens and flags (one download).
    pub fn finish(self) -> Result<FrameTokens> {
        self.read()
    }

    /// The tokens and flags the calls wrote so far (one download; the sampler stays usable).
    pub fn read(&self) -> Result<FrameTokens> {
        let v = self.out.flatten_all()?.to_vec1::<u32>()?;
        let half = v.len() / 2;
        debug_assert_eq!(half % self.batch.max(1), 0);
        let (tokens, flags) = v.split_at(half);
        Ok(FrameTokens { tokens: tokens.to_vec(), flags: flags.to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(batch: usize, stride: usize, seed: f32) -> SampleCallPlan {
        SampleCallPlan { temps: vec![0.8; batch], top_k: vec![stride as u32; batch], noise: (0..batch * stride).map(|i| seed + i as f32).collect(), stride }
    }

    /// A graph replays a sampler with new settings written in place: same shape only, and the
    /// buffer then holds exactly the new frame's values (read back on the CPU).
    #[test]
    fn update_rewrites_in_place_for_the_same_shape_only() {
        let calls = [plan(2, 3, 0.0), plan(2, 5, 100.0)];
        let s = FrameSampler::new(&Device::Cpu, 2, &calls).unwrap();
        assert!(s.fits(2, &calls));
        assert!(!s.fits(3, &calls));
        assert!(!s.fits(2, &[plan(2, 3, 0.0), plan(2, 4, 0.0)]));
        assert!(!s.fits(2, &calls[..1]));
        assert!(s.update(&[plan(2, 3, 0.0), plan(2, 4, 0.0)]).is_err());
        let next = [plan(2, 3, 7.0), plan(2, 5, 9.0)];
        s.update(&next).unwrap();
        let (want, _) = FrameSampler::pack(2, &next);
        assert_eq!(s.params.to_vec1::<f32>().unwrap(), want);
    }
}

//! `verify ops` cases of the token sampler: the seam's device sampler (where it has one, CUDA)
//! against the host sampler on the CPU, the same logits and the same noise, tokens equal. On the
//! CPU both sides are the host sampler. Each case is a batch whose rows stress one part of the
//! kernel: the top-k order (ties in probability broken by index), the whole vocabulary in token
//! order, greedy and overflowing temperatures, per-row settings, zero noise.

use candle_core::{Device, Tensor};

use super::cases::{Case, Kind};
use super::Env;
use crate::error::Result;
use crate::exec::{device_sampling, FrameSampler, RunOptions, SampleCallPlan};
use crate::lm::sampling::{sample, ReplayNoise, SamplingConfig};

/// One row's settings: temperature (≤ 0 greedy) and top-k (0: every token).
type Row = (f32, u32);

/// Sample `logits` [B, V] (on the env's device, in its dtype) with one row setting per row and
/// Exponential(1) noise drawn from the env: the device sampler where the seam has one, else the
/// host sampler. Returns the tokens, u32 [B] on the CPU.
fn sampled(e: &mut Env<'_>, rows: &[Row], vocab: usize, logits: impl Fn(&mut Env<'_>) -> Result<Tensor>, zero_noise: bool) -> Result<Tensor> {
    let x = logits(e)?;
    let k_of = |&(t, k): &Row| if t <= 0.0 { 0 } else if k == 0 { vocab } else { (k as usize).min(vocab) };
    let stride = rows.iter().map(k_of).max().unwrap_or(0);
    let mut noise: Vec<f32> = (0..rows.len() * stride).map(|_| -(1.0 - (e.uniform() + 1.0) / 2.0).max(1e-7).ln()).collect();
    if zero_noise && rows.len() > 1 && stride > 3 {
        // Row 0's rank 0 and row 1's rank 3 draw 0: an infinite ratio, which must win.
        noise[0] = 0.0;
        noise[stride + 3] = 0.0;
    }
    let plan = SampleCallPlan {
        temps: rows.iter().map(|r| r.0).collect(),
        top_k: rows.iter().map(|r| r.1).collect(),
        noise: noise.clone(),
        stride,
    };
    let ks = rows.iter().map(|r| if r.0 <= 0.0 { 0 } else { (r.1 as usize).min(vocab) as u32 });
    if device_sampling(e.device, &RunOptions::default(), ks) {
        let s = FrameSampler::new(e.device, rows.len(), std::slice::from_ref(&plan))?;
        s.sample(&x, 0)?;
        let got = s.finish()?;
        return Ok(Tensor::from_vec(got.tokens, rows.len(), &Device::Cpu)?);
    }
    let host: Vec<f32> = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        let cfg = if row.0 <= 0.0 { SamplingConfig::greedy() } else { SamplingConfig::sampled(row.0 as f64, row.1 as usize) };
        let mut replay = ReplayNoise::new();
        let k = k_of(row);
        if k > 0 {
            replay.push(noise[r * stride..r * stride + k].to_vec());
        }
        out.extend(sample(&host[r * vocab..(r + 1) * vocab], 1, &cfg, &mut replay, "verify ops")?);
    }
    Ok(Tensor::from_vec(out, rows.len(), &Device::Cpu)?)
}

fn case(name: &'static str, run: impl Fn(&mut Env<'_>) -> Result<Tensor> + 'static) -> Case {
    Case { op: "sample", name, kind: Kind::Codes, run: Box::new(run) }
}

/// Uniform logits in ±`scale`, [rows, vocab]; `steps` > 0 rounds them to multiples of 1/steps
/// (many equal probabilities: the top-k's tie order matters).
fn logits(e: &mut Env<'_>, rows: usize, vocab: usize, scale: f32, steps: f32) -> Result<Tensor> {
    let h = e.host(&[rows, vocab], scale)?;
    let h = if steps > 0.0 { (h * steps as f64)?.round()?.affine(1.0 / steps as f64, 0.0)? } else { h };
    e.put(&h)
}

pub(super) fn cases() -> Vec<Case> {
    let audio = 2048;
    let text = 32000;
    vec![
        case("audio 0.8 / top 250", move |e| sampled(e, &[(0.8, 250); 4], audio, |e| logits(e, 4, audio, 6.0, 0.0), false)),
        case("text 0.7 / top 25", move |e| sampled(e, &[(0.7, 25); 3], text, |e| logits(e, 3, text, 8.0, 0.0), false)),
        case("ties in the top k", move |e| sampled(e, &[(1.0, 250), (0.8, 1000)], audio, |e| logits(e, 2, audio, 2.0, 2.0), false)),
        case("every token (top-k 0)", move |e| sampled(e, &[(1.0, 0); 2], audio, |e| logits(e, 2, audio, 3.0, 0.0), false)),
        case("greedy", move |e| sampled(e, &[(0.0, 250); 3], audio, |e| logits(e, 3, audio, 6.0, 4.0), false)),
        case("temperature overflows f32", move |e| sampled(e, &[(1e-40, 5); 2], audio, |e| logits(e, 2, audio, 6.0, 0.0), false)),
        case("rows with their own settings", move |e| {
            let rows = [(0.8, 250), (0.0, 1), (1.3, 1024), (0.5, 1), (0.7, 0)];
            sampled(e, &rows, audio, |e| logits(e, 5, audio, 5.0, 0.0), false)
        }),
        case("zero noise", move |e| sampled(e, &[(0.9, 100); 2], audio, |e| logits(e, 2, audio, 4.0, 0.0), true)),
    ]
}

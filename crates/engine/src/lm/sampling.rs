//! Token sampling as the reference's `utils/sampling.py` does it, so that a run can be replayed:
//! greedy is `argmax(logits)`; otherwise `probs = softmax(logits / temperature)` (f32), the top
//! k probabilities sorted descending, and the token is the one at rank `argmax(prob_r / q_r)`
//! with q an Exponential(1) draw per rank (the "exponential race", equivalent to drawing from
//! the renormalised top-k distribution). The noise comes from a [`Noise`] source: a seeded RNG,
//! or recorded noise replayed call by call (torch's generator itself cannot be reproduced).

use std::collections::VecDeque;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1};

use crate::error::{EngineError, Result};

/// Settings for one kind of token (text or audio).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingConfig {
    /// `None` (or a temperature ≤ 0): greedy.
    pub temperature: Option<f64>,
    pub top_k: usize,
}

impl SamplingConfig {
    pub fn greedy() -> Self {
        Self { temperature: None, top_k: 1 }
    }

    pub fn sampled(temperature: f64, top_k: usize) -> Self {
        Self { temperature: Some(temperature), top_k }
    }

    /// The reference's LMGen defaults: text 0.7 / top 25.
    pub fn text_default() -> Self {
        Self::sampled(0.7, 25)
    }

    /// The reference's LMGen defaults: audio 0.8 / top 250.
    pub fn audio_default() -> Self {
        Self::sampled(0.8, 250)
    }

    /// A setting from user input (a CLI flag, a query parameter), validated the same way
    /// wherever it comes from: the temperature finite and ≥ 0 (0 meaning greedy, the reference's
    /// rule), top-k at least 1. The error says what was wrong, for the caller to name the flag.
    pub fn from_user(temperature: f64, top_k: usize) -> std::result::Result<Self, String> {
        let t = check_temperature(temperature)?;
        if top_k == 0 {
            return Err("top-k must be at least 1".into());
        }
        // A temperature that is 0 in f32, where logits are divided by it, is greedy.
        Ok(if t as f32 == 0.0 { Self::greedy() } else { Self::sampled(t, top_k) })
    }

    /// Greedy unless a positive temperature is set. With a temperature, `top_k` 0 samples from
    /// the whole vocabulary (noise in token order, as the reference's `multinomial`).
    pub fn is_greedy(&self) -> bool {
        !matches!(self.temperature, Some(t) if t > 0.0)
    }
}

/// A temperature from user input: finite and ≥ 0 (0 is greedy), else an error saying so.
pub fn check_temperature(t: f64) -> std::result::Result<f64, String> {
    if t.is_finite() && t >= 0.0 {
        Ok(t)
    } else {
        Err(format!("a temperature must be finite and ≥ 0, got {t}"))
    }
}

/// A source of Exponential(1) noise, one block of `rows × k` values per sampling call
/// (row-major: batch row, then rank).
pub trait Noise: Send {
    fn fill(&mut self, rows: usize, k: usize, out: &mut Vec<f32>) -> Result<()>;
}

/// Deterministic noise from a seed (ChaCha8, portable across platforms). A clone continues
/// from the same point of the stream.
#[derive(Clone)]
pub struct SeededNoise(ChaCha8Rng);

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }
}

impl Noise for SeededNoise {
    fn fill(&mut self, rows: usize, k: usize, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        out.extend((0..rows * k).map(|_| {
            let e: f64 = Exp1.sample(&mut self.0);
            e as f32
        }));
        Ok(())
    }
}

/// No noise at all: for greedy sampling, which draws none (a draw is an error).
pub struct NoNoise;

impl Noise for NoNoise {
    fn fill(&mut self, _rows: usize, _k: usize, _out: &mut Vec<f32>) -> Result<()> {
        Err(EngineError::InvalidInput("a sampling call without a noise source drew noise".into()))
    }
}

/// Recorded noise, replayed in the order it was recorded, each block checked for its size.
#[derive(Default)]
pub struct ReplayNoise {
    blocks: VecDeque<Vec<f32>>,
    used: usize,
}

impl ReplayNoise {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue the noise of the next sampling call (`rows × k` values).
    pub fn push(&mut self, block: Vec<f32>) {
        self.blocks.push_back(block);
    }

    /// Blocks not consumed yet.
    pub fn remaining(&self) -> usize {
        self.blocks.len()
    }
}

impl Noise for ReplayNoise {
    fn fill(&mut self, rows: usize, k: usize, out: &mut Vec<f32>) -> Result<()> {
        let block = self.blocks.pop_front().ok_or_else(|| {
            EngineError::InvalidInput(format!("replayed noise ran out after {} sampling calls", self.used))
        })?;
        if block.len() != rows * k {
            return Err(EngineError::InvalidInput(format!(
                "replayed noise block {} has {} values, the sampling call needs {rows}×{k}",
                self.used,
                block.len()
            )));
        }
        self.used += 1;
        *out = block;
        Ok(())
    }
}

/// e^x for the softmax, computed the same way on the host and in the CUDA sampler
/// (`exec/cuda/kernels.cu`, `moshi_exp`) so that both give the same bits: the platform's `expf`
/// (glibc, Apple's libm, CUDA's `expf`) differs from one to the next by an ulp here and there,
/// enough to move a sum and with it a sampled token. In f64, with only additions and
/// multiplications each rounded once (no fused multiply-add on either side): x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2 (Cody–Waite, ln 2 in two parts so that n·LN2_HI is exact), e^r by its Taylor
/// series to r¹¹ (truncation < 7e-15 relative), times 2ⁿ, rounded once to f32. That is the
/// correctly rounded e^x except where the true value lies within ~1e-14 of a rounding boundary
/// (1 of 160 million f32 inputs in [−104, 0]; glibc's expf differs from it on 1 in 11 500).
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f64 = std::f64::consts::LOG2_E; // 1.4426950408889634
    const LN2_HI: f64 = 0.6931467056274414; // ln 2 with its last 32 bits zero
    const LN2_LO: f64 = 4.7493250387997676e-07;
    const INV_FACT: [f64; 12] = [
        1.0, 1.0, 0.5, 0.16666666666666666, 0.041666666666666664, 0.008333333333333333, 0.001388888888888889,
        0.0001984126984126984, 2.48015873015873e-05, 2.7557319223985893e-06, 2.755731922398589e-07,
        2.505210838544172e-08,
    ];
    if x.is_nan() {
        return x;
    }
    if x < -104.0 {
        return 0.0; // below half the smallest subnormal
    }
    if x > 89.0 {
        return f32::INFINITY;
    }
    let xd = x as f64;
    let n = (xd * LOG2E).round();
    let r = (xd - n * LN2_HI) - n * LN2_LO;
    let mut p = INV_FACT[11];
    for c in INV_FACT[..11].iter().rev() {
        p = p * r + c;
    }
    // 2ⁿ for n in [−151, 129]: a normal f64, so the product is exact until the final rounding.
    let scale = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (p * scale) as f32
}

/// Index of the largest value (the first one on ties, as torch's argmax on CPU).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Sample one token per row of `logits` (row-major [rows, vocab], f32). NaN logits are an
/// error naming `what` and the row.
pub fn sample(logits: &[f32], rows: usize, cfg: &SamplingConfig, noise: &mut dyn Noise, what: &str) -> Result<Vec<u32>> {
    if rows == 0 || !logits.len().is_multiple_of(rows) {
        return Err(EngineError::InvalidInput(format!("{what}: {} logits for {rows} rows", logits.len())));
    }
    let vocab = logits.len() / rows;
    for (r, row) in logits.chunks(vocab).enumerate() {
        if let Some(i) = row.iter().position(|x| x.is_nan()) {
            return Err(EngineError::InvalidInput(format!("{what}: NaN logit (batch row {r}, token {i})")));
        }
    }
    if cfg.is_greedy() {
        return Ok(logits.chunks(vocab).map(|row| argmax(row) as u32).collect());
    }
    let temp = cfg.temperature.unwrap_or(1.0) as f32;
    let k = if cfg.top_k == 0 { vocab } else { cfg.top_k.min(vocab) };
    let mut q = Vec::new();
    noise.fill(rows, k, &mut q)?;
    let mut out = Vec::with_capacity(rows);
    let mut probs = vec![0f32; vocab];
    for (r, row) in logits.chunks(vocab).enumerate() {
        // softmax(logits / T) in f32, as torch computes it (max-subtracted).
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x / temp));
        if m.is_infinite() {
            // logits / T overflowed f32 (T tiny but positive, e.g. 1e-40): the distribution is
            // then its T → 0 limit, the argmax. The row's noise is drawn all the same.
            out.push(argmax(row) as u32);
            continue;
        }
        let mut sum = 0f32;
        for (p, &x) in probs.iter_mut().zip(row) {
            *p = exp_f32(x / temp - m);
            sum += *p;
        }
        for p in probs.iter_mut() {
            *p /= sum;
        }
        // Top k, descending by probability (ties: lower index first); top_k 0: token order.
        // Select the k first, then sort only them: a full sort of the 32000-token text vocabulary
        // per row was most of a batch-16 step on the GPU.
        let mut idx: Vec<usize> = (0..vocab).collect();
        if cfg.top_k != 0 {
            let by_prob = |a: &usize, b: &usize| {
                probs[*b].partial_cmp(&probs[*a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(b))
            };
            if k < vocab {
                idx.select_nth_unstable_by(k - 1, by_prob);
                idx.truncate(k);
            }
            idx.sort_by(by_prob);
        }
        let qr = &q[r * k..(r + 1) * k];
        let ratios: Vec<f32> = (0..k).map(|j| probs[idx[j]] / qr[j]).collect();
        out.push(idx[argmax(&ratios)] as u32);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Temperatures too small for f32 sample the argmax (their limit) instead of NaN; one that is
    /// 0 in f32 is greedy from the start.
    #[test]
    fn tiny_temperatures_are_the_argmax() {
        let logits = [0.5f32, 3.0, -1.0, 2.9, 0.0, 1.0];
        for t in [1e-40, 1e-300, 1e-45] {
            let cfg = SamplingConfig::sampled(t, 3);
            let got = sample(&logits, 2, &cfg, &mut SeededNoise::new(1), "test").unwrap();
            assert_eq!(got, vec![1, 0], "temperature {t}");
        }
        assert!(SamplingConfig::from_user(1e-300, 5).unwrap().is_greedy());
        assert!(!SamplingConfig::from_user(1e-30, 5).unwrap().is_greedy());
    }

    /// `exp_f32` is e^x rounded to f32: against f64's exp rounded once, on a sweep of the inputs
    /// the softmax gives it ([−104, 0], every 997th f32) and at its edges.
    #[test]
    fn exp_f32_is_the_rounded_exponential() {
        let (mut n, mut off) = (0u32, 0u32);
        let mut bits = (-104.0f32).to_bits();
        while bits > 0x8000_0000 {
            let x = f32::from_bits(bits);
            n += 1;
            if exp_f32(x) != (x as f64).exp() as f32 {
                off += 1;
            }
            bits -= 997;
        }
        assert!(n > 1_000_000 && off <= 1, "{off} of {n} differ");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-0.0), 1.0);
        assert_eq!(exp_f32(-105.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-103.9), (-103.9f64).exp() as f32); // subnormal
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(88.0), 88f64.exp() as f32);
        assert_eq!(exp_f32(90.0), f32::INFINITY);
    }
}

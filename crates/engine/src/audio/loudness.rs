//! Integrated loudness (ITU-R BS.1770-4, EBU R128 gating) and loudness normalization, computed as
//! pyloudnorm 0.2.0 computes them, because PersonaPlex's reference normalizes a wav voice prompt to
//! −24 LUFS with it (`normalize_audio`, `moshi/models/lm.py` L109-118 of NVIDIA/personaplex) and the
//! normalized samples go straight into Mimi: a gain off by 1e-3 moves Mimi codes.
//!
//! pyloudnorm's K-weighting is two RBJ-cookbook biquads designed at the signal's rate (high shelf
//! +4 dB, Q 1/√2, 1500 Hz; high pass Q 0.5, 38 Hz), run in f64 with each stage's output stored back
//! into the f32 array (`scipy.signal.lfilter` into a float32 copy); 400 ms blocks with 75 % overlap,
//! the mean square of each block summed by numpy in f32 (pairwise), an absolute gate at −70 LUFS
//! and a relative one 10 LU below the gated mean.
//!
//! Why not a crate: the maintained EBU R128 crate, `ebur128` 0.1.11 (a port of libebur128), designs
//! its K-weighting as libebur128 does (BS.1770's shelf at 1681.97 Hz and high pass at 38.14 Hz,
//! bilinear-transformed for the rate), not as pyloudnorm's cookbook biquads (1500 Hz, 38 Hz). Measured on the fixture's voice (golden/personaplex_tiny/
//! voice.wav, 24 kHz; a scratch program outside the repository): `ebur128` reads −19.8723 LUFS
//! where pyloudnorm reads −19.9550, 0.083 dB apart, so its −24 LUFS gain is 0.95 % off and
//! samples move by up to 5.2e-3, far more than the 1.1e-3 relative margin of the fixture's
//! nearest Mimi codebook decision (golden/README.md). This module reads −19.954996324 (4.7e-9 dB
//! from pyloudnorm; tests/personaplex_engine.rs) and gives the reference's voice codes exactly.

/// A biquad's coefficients, normalized by a0: (b0, b1, b2, a1, a2).
type Biquad = [f64; 5];

fn high_shelf(gain_db: f64, q: f64, fc: f64, rate: f64) -> Biquad {
    let a = 10f64.powf(gain_db / 40.0);
    let w0 = 2.0 * std::f64::consts::PI * (fc / rate);
    let alpha = w0.sin() / (2.0 * q);
    let c = w0.cos();
    let b0 = a * ((a + 1.0) + (a - 1.0) * c + 2.0 * a.sqrt() * alpha);
    let b1 = -2.0 * a * ((a - 1.0) + (a + 1.0) * c);
    let b2 = a * ((a + 1.0) + (a - 1.0) * c - 2.0 * a.sqrt() * alpha);
    let a0 = (a + 1.0) - (a - 1.0) * c + 2.0 * a.sqrt() * alpha;
    let a1 = 2.0 * ((a - 1.0) - (a + 1.0) * c);
    let a2 = (a + 1.0) - (a - 1.0) * c - 2.0 * a.sqrt() * alpha;
    [b0 / a0, b1 / a0, b2 / a0, a1 / a0, a2 / a0]
}

fn high_pass(q: f64, fc: f64, rate: f64) -> Biquad {
    let w0 = 2.0 * std::f64::consts::PI * (fc / rate);
    let alpha = w0.sin() / (2.0 * q);
    let c = w0.cos();
    let (b0, b1, b2) = ((1.0 + c) / 2.0, -(1.0 + c), (1.0 + c) / 2.0);
    let (a0, a1, a2) = (1.0 + alpha, -2.0 * c, 1.0 - alpha);
    [b0 / a0, b1 / a0, b2 / a0, a1 / a0, a2 / a0]
}

/// `lfilter` (direct form II transposed, as scipy's), in f64, the result rounded to f32.
fn filter(x: &mut [f32], [b0, b1, b2, a1, a2]: Biquad) {
    let (mut z1, mut z2) = (0f64, 0f64);
    for v in x.iter_mut() {
        let xi = *v as f64;
        let y = b0 * xi + z1;
        z1 = b1 * xi + z2 - a1 * y;
        z2 = b2 * xi - a2 * y;
        *v = y as f32;
    }
}

/// numpy's pairwise sum of a contiguous array (`pairwise_sum` in numpy's loops: 8 accumulators
/// up to 128 values, halves above), in the array's own precision.
fn pairwise_sum<T: Copy + Default + std::ops::Add<Output = T> + std::ops::AddAssign>(v: &[T]) -> T {
    let n = v.len();
    if n < 8 {
        let mut s = T::default();
        for &x in v {
            s += x;
        }
        s
    } else if n <= 128 {
        let mut r = [T::default(); 8];
        r.copy_from_slice(&v[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += v[i + j];
            }
            i += 8;
        }
        let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &v[i..] {
            s += x;
        }
        s
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&v[..n2]) + pairwise_sum(&v[n2..])
    }
}

/// Integrated loudness in LUFS of mono `samples` at `rate` Hz (pyloudnorm's
/// `Meter(rate).integrated_loudness`). `None` when the signal is shorter than one 400 ms block;
/// −∞ for silence (as pyloudnorm).
pub fn integrated_loudness(samples: &[f32], rate: u32) -> Option<f64> {
    let (rate, t_g, step) = (rate as f64, 0.4f64, 0.25f64);
    let n = samples.len();
    if (n as f64) / rate < t_g {
        return None;
    }
    let mut x = samples.to_vec();
    filter(&mut x, high_shelf(4.0, 1.0 / 2f64.sqrt(), 1500.0, rate));
    filter(&mut x, high_pass(0.5, 38.0, rate));
    let t = n as f64 / rate;
    let blocks = ((t - t_g) / (t_g * step)).round_ties_even() as usize + 1;
    let mut squares = Vec::new();
    let z: Vec<f64> = (0..blocks)
        .map(|j| {
            let l = (t_g * (j as f64 * step) * rate) as usize;
            let u = ((t_g * (j as f64 * step + 1.0) * rate) as usize).min(n);
            squares.clear();
            squares.extend(x[l.min(u)..u].iter().map(|v| v * v));
            // numpy 2 (NEP 50): the Python float scale is cast to the f32 sum's type.
            ((1.0 / (t_g * rate)) as f32 * pairwise_sum(&squares)) as f64
        })
        .collect();
    let lufs = |z: f64| -0.691 + 10.0 * z.log10();
    let mean = |keep: &dyn Fn(f64) -> bool| {
        let kept: Vec<f64> = z.iter().copied().filter(|&zj| keep(lufs(zj))).collect();
        if kept.is_empty() {
            f64::NAN
        } else {
            pairwise_sum(&kept) / kept.len() as f64
        }
    };
    let gamma_a = -70.0;
    let gamma_r = lufs(mean(&|l| l >= gamma_a)) - 10.0;
    let z_gated = mean(&|l| l > gamma_r && l > gamma_a);
    // numpy's nan_to_num of an empty mean: 0, i.e. −∞ LUFS.
    Some(lufs(if z_gated.is_nan() { 0.0 } else { z_gated }))
}

/// The gain (linear) that brings `samples` to `target` LUFS, and their loudness before it, as
/// pyloudnorm's `normalize.loudness` computes it (`10^((target − L) / 20)`, no clipping). `None`
/// when the loudness is not finite (silence) or the signal is shorter than a block.
pub fn loudness_gain(samples: &[f32], rate: u32, target: f64) -> Option<(f64, f64)> {
    let l = integrated_loudness(samples, rate)?;
    l.is_finite().then(|| (10f64.powf((target - l) / 20.0), l))
}

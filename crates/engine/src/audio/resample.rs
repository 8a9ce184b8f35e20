//! Whole-signal resampling with rubato's synchronous FFT resampler.

use rubato::{FftFixedInOut, Resampler};

use super::AudioError;

/// Minimum length, in samples on the shorter side, of each FFT block. The block length is also
/// the length of rubato's anti-aliasing sinc filter, so this sets the filter's steepness.
const MIN_BLOCK: usize = 1024;

/// Resamples a mono signal from `from_hz` to `to_hz`.
///
/// The output has exactly `round(samples.len() * to_hz / from_hz)` samples (halves round up)
/// and is time-aligned with the input: output sample `k` is the input evaluated at time
/// `k / to_hz`. The resampler's delay is removed and its tail flushed with zeros, so a sine
/// resampled this way matches a sine generated directly at `to_hz`, in phase, away from the
/// first and last few milliseconds (where the filter sees the implicit zeros outside the
/// signal). Equal rates return a copy; empty input returns an empty vector; a rate of 0 is an
/// [`AudioError::InvalidSampleRate`].
///
/// # Why rubato's FFT resampler ([`FftFixedInOut`]) rather than its sinc resamplers
/// The conversion here is offline, over a whole file, at a fixed ratio of two integer rates.
/// The FFT resampler is *synchronous*: it works on blocks whose lengths are in the exact ratio
/// `from/gcd : to/gcd`, so every output sample sits exactly on the ideal grid and the length is
/// exact, with no drift. Its anti-aliasing filter is a windowed sinc (Blackman-Harris²) as long
/// as the block (≥ 1024 taps here), applied exactly by FFT convolution. The asynchronous sinc
/// resamplers exist for ratios that vary at run time; they approximate each fractional
/// position by interpolating an oversampled sinc table (an extra error source) and cost a
/// multiply-add per tap per output sample, whereas the FFT version costs `O(log n)` per sample.
/// For a fixed ratio the FFT resampler is both more accurate and much faster.
///
/// The block length is chosen as an *even* number of `from/gcd : to/gcd` units so that
/// rubato's delay (half a block) is a whole number of samples on both sides, which is what
/// makes the alignment exact. Rates with a large gcd-reduced ratio (e.g. 44101 Hz) give long
/// blocks: slower and more memory-hungry, but still correct.
pub fn resample(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, AudioError> {
    if from_hz == 0 || to_hz == 0 {
        return Err(AudioError::InvalidSampleRate { what: "resample".into(), from_hz, to_hz });
    }
    if from_hz == to_hz {
        return Ok(samples.to_vec());
    }
    let n_in = samples.len();
    let out_len = output_len(n_in, from_hz, to_hz);
    if n_in == 0 {
        return Ok(Vec::new());
    }

    let g = gcd(from_hz, to_hz);
    let (unit_in, unit_out) = ((from_hz / g) as usize, (to_hz / g) as usize);
    let shorter = unit_in.min(unit_out);
    let mut units = MIN_BLOCK.div_ceil(shorter).max(2);
    units += units % 2; // even: the delay (block_out / 2) is then a whole number of samples
    let block_in = units * unit_in;

    let rubato_err = |e: &dyn std::fmt::Display| AudioError::Resample { from_hz, to_hz, detail: e.to_string() };
    let mut resampler =
        FftFixedInOut::<f32>::new(from_hz as usize, to_hz as usize, block_in, 1).map_err(|e| rubato_err(&e))?;
    let (block_in, block_out) = (resampler.input_frames_next(), resampler.output_frames_next());
    let delay = resampler.output_delay();
    debug_assert_eq!(block_in * unit_out, block_out * unit_in);

    let needed = out_len + delay;
    let n_blocks = needed.div_ceil(block_out);
    let mut out = vec![0f32; n_blocks * block_out];
    let mut padded = vec![0f32; block_in];
    for (b, out_block) in out.chunks_exact_mut(block_out).enumerate() {
        let start = b * block_in;
        let input: &[f32] = if start + block_in <= n_in {
            &samples[start..start + block_in]
        } else {
            // Last partial block, then pure flush blocks: zero-padded input.
            padded.fill(0.0);
            if start < n_in {
                padded[..n_in - start].copy_from_slice(&samples[start..]);
            }
            &padded
        };
        let (_, written) =
            resampler.process_into_buffer(&[input], &mut [out_block], None).map_err(|e| rubato_err(&e))?;
        debug_assert_eq!(written, block_out);
    }
    out.drain(..delay);
    out.truncate(out_len);
    Ok(out)
}

/// `round(n * to / from)` with halves rounded up, in exact integer arithmetic.
fn output_len(n: usize, from_hz: u32, to_hz: u32) -> usize {
    let (n, from, to) = (n as u128, from_hz as u128, to_hz as u128);
    ((2 * n * to + from) / (2 * from)) as usize
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_len_rounds_half_up() {
        assert_eq!(output_len(1, 48_000, 24_000), 1);
        assert_eq!(output_len(3, 48_000, 24_000), 2);
        assert_eq!(output_len(16_000, 16_000, 24_000), 24_000);
        assert_eq!(output_len(1, 44_100, 24_000), 1);
        assert_eq!(output_len(0, 44_100, 24_000), 0);
    }
}

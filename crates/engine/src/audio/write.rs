//! Writing mono WAV files with hound.

use std::path::Path;

use hound::{SampleFormat, WavSpec, WavWriter};

use super::AudioError;

/// Writes `samples` as a mono 32-bit float WAV at `sample_rate`, bit-exact (reading it back with
/// [`decode_file`](super::decode_file) returns the same values).
///
/// All samples are checked first: a NaN or infinity is an [`AudioError::NonFiniteSample`] naming
/// its index, and no file is created. Values outside `[-1, 1]` are written as they are (float
/// WAV can hold them; players will clip).
pub fn write_wav(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), AudioError> {
    check(path, samples, sample_rate)?;
    let spec = WavSpec { channels: 1, sample_rate, bits_per_sample: 32, sample_format: SampleFormat::Float };
    write_with(path, spec, samples.iter().copied())
}

/// Writes `samples` as a mono 16-bit integer WAV at `sample_rate`. Samples are clamped to
/// `[-1, 1]` and scaled by 32767 with rounding. Non-finite samples are rejected as in
/// [`write_wav`].
pub fn write_wav_i16(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), AudioError> {
    check(path, samples, sample_rate)?;
    let spec = WavSpec { channels: 1, sample_rate, bits_per_sample: 16, sample_format: SampleFormat::Int };
    write_with(path, spec, samples.iter().map(|&x| (x.clamp(-1.0, 1.0) * 32767.0).round() as i16))
}

fn check(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), AudioError> {
    if sample_rate == 0 {
        return Err(AudioError::Write { path: path.to_path_buf(), detail: "sample rate is 0".into() });
    }
    if let Some((index, &value)) = samples.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(AudioError::NonFiniteSample { path: path.to_path_buf(), index, value });
    }
    // hound's data chunk length is a u32 of bytes.
    if samples.len() as u64 * 4 > u32::MAX as u64 - 64 {
        let detail = format!("{} samples is too long for a WAV file (4 GiB limit)", samples.len());
        return Err(AudioError::Write { path: path.to_path_buf(), detail });
    }
    Ok(())
}

fn write_with<S: hound::Sample + Copy>(
    path: &Path,
    spec: WavSpec,
    samples: impl Iterator<Item = S>,
) -> Result<(), AudioError> {
    let err = |e: hound::Error| AudioError::Write { path: path.to_path_buf(), detail: e.to_string() };
    let mut writer = WavWriter::create(path, spec).map_err(err)?;
    for s in samples {
        writer.write_sample(s).map_err(err)?;
    }
    writer.finalize().map_err(err)
}

//! Writing mono WAV files with hound.

use std::path::Path;

use hound::{SampleFormat, WavSpec, WavWriter};

use super::AudioError;

/// Writes `samples` as a mono 32-bit float WAV at `sample_rate`, bit-exact (reading it back with
/// [`decode_file`](super::decode_file) returns the same values).
///
/// The header is the plain one (`WAVE_FORMAT_IEEE_FLOAT`, tag 3, with a `fact` chunk), not the
/// `WAVE_FORMAT_EXTENSIBLE` form hound writes for 32-bit samples: some players and tools read
/// only the plain one, and every reader that reads float WAV reads it.
///
/// All samples are checked first: a NaN or infinity is an [`AudioError::NonFiniteSample`] naming
/// its index, and no file is created. Values outside `[-1, 1]` are written as they are (float
/// WAV can hold them; players will clip).
pub fn write_wav(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), AudioError> {
    check(path, samples, sample_rate)?;
    let data_len = samples.len() as u32 * 4;
    let mut bytes = Vec::with_capacity(58 + data_len as usize);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(4 + (8 + 18) + (8 + 4) + (8 + data_len)).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&18u32.to_le_bytes());
    bytes.extend_from_slice(&3u16.to_le_bytes()); // WAVE_FORMAT_IEEE_FLOAT
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&sample_rate.to_le_bytes());
    bytes.extend_from_slice(&(sample_rate * 4).to_le_bytes()); // bytes per second
    bytes.extend_from_slice(&4u16.to_le_bytes()); // block align
    bytes.extend_from_slice(&32u16.to_le_bytes()); // bits per sample
    bytes.extend_from_slice(&0u16.to_le_bytes()); // no extension
    bytes.extend_from_slice(b"fact");
    bytes.extend_from_slice(&4u32.to_le_bytes());
    bytes.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, bytes).map_err(|e| AudioError::Write { path: path.to_path_buf(), detail: e.to_string() })
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

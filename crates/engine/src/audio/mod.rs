//! Audio I/O: decode any common audio file (WAV, FLAC, MP3, Ogg Vorbis, Ogg Opus), downmix to
//! mono, resample to Mimi's 24 kHz, cut into frames, and write WAV files.
//!
//! Ogg Opus, what browsers record and what Kyutai's protocol carries, has its pieces public for
//! the server: [`ogg_stream`] (an incremental, bounded Ogg packet reader) and [`opus`] (the
//! `OpusHead` header and a packet decoder that contains the decoder's failures). Files and
//! connections decode through the same code, at 24 kHz, so the same packets give the same
//! samples in both.
//!
//! The usual path into the codec is [`load_mono_24k`] followed by [`frames`]:
//!
//! ```no_run
//! use moshi_engine::audio::{frames, load_mono_24k, MIMI_FRAME_SIZE};
//! # fn main() -> Result<(), moshi_engine::audio::AudioError> {
//! let pcm = load_mono_24k(std::path::Path::new("speech.flac"))?;
//! for frame in frames(&pcm, MIMI_FRAME_SIZE) {
//!     assert_eq!(frame.len(), MIMI_FRAME_SIZE); // the last one is zero-padded
//! }
//! # Ok(()) }
//! ```
//!
//! Samples are `f32` in `[-1, 1]` (integer PCM is scaled by `2^-(bits-1)`), interleaved when
//! there is more than one channel. Nothing here panics on bad input files: every failure is an
//! [`AudioError`] naming the file and what was wrong with it.

pub mod loudness;
mod decode;
mod ogg_opus;
pub mod ogg_stream;
pub mod opus;
pub mod opus_backend;
mod resample;
mod write;

use std::path::{Path, PathBuf};

pub use decode::{decode_bytes, decode_file};
pub use resample::resample;
pub use write::{write_wav, write_wav_i16};

/// The sample rate Mimi works at, in Hz.
pub const MIMI_SAMPLE_RATE: u32 = 24_000;

/// Samples per Mimi frame at [`MIMI_SAMPLE_RATE`]: 80 ms, i.e. the codec's 12.5 Hz frame rate.
pub const MIMI_FRAME_SIZE: usize = 1920;

/// Decoded audio as it came out of the file, before any downmixing or resampling.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples in `[-1, 1]`, interleaved by channel (`L R L R ...` for stereo).
    pub samples: Vec<f32>,
    /// Sample rate in Hz (never 0 for decoded audio).
    pub sample_rate: u32,
    /// Number of interleaved channels (at least 1 for decoded audio).
    pub channels: u16,
}

impl Audio {
    /// Number of frames (samples per channel).
    pub fn num_frames(&self) -> usize {
        if self.channels == 0 {
            0
        } else {
            self.samples.len() / self.channels as usize
        }
    }

    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        if self.sample_rate == 0 {
            0.0
        } else {
            self.num_frames() as f64 / self.sample_rate as f64
        }
    }
}

/// Everything that can go wrong reading, resampling or writing audio. Each message starts with
/// the file concerned (`<memory buffer>` for [`decode_bytes`]).
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The file does not exist.
    #[error("{}: audio file not found", .path.display())]
    NotFound {
        /// The file that was asked for.
        path: PathBuf,
    },

    /// The file exists but could not be opened or read (permissions, a directory, I/O error).
    #[error("{}: cannot read audio file: {source}", .path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The file is 0 bytes long.
    #[error("{}: audio file is empty (0 bytes)", .path.display())]
    Empty {
        /// The empty file.
        path: PathBuf,
    },

    /// The content is not a recognised audio container (not audio at all, or a format this
    /// build does not know). Supported: WAV, FLAC, MP3, Ogg/Vorbis, Ogg/Opus.
    #[error("{}: not a recognised audio file ({detail}); supported formats are WAV, FLAC, MP3, Ogg/Vorbis and Ogg/Opus", .path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What was seen instead (e.g. the first bytes).
        detail: String,
    },

    /// The file is in a container recognised by its signature that this build cannot read:
    /// MP4/M4A (an ISO `ftyp` box at offset 4), raw AAC (ADTS), WebM/Matroska (EBML, what
    /// Chrome's MediaRecorder writes), AIFF or CAF. `container` names it.
    #[error("{}: {container} audio is not supported (convert it to wav, flac, mp3 or ogg)", .path.display())]
    UnsupportedContainer {
        /// The file.
        path: PathBuf,
        /// What it is, e.g. `MP4/AAC`.
        container: String,
    },

    /// The container was recognised but the file ends before its headers are complete (for
    /// example a WAV cut inside its `fmt ` chunk).
    #[error("{}: audio file is truncated: it ends inside its header ({detail})", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The decoder's description of where it stopped.
        detail: String,
    },

    /// The container was recognised but its headers or data are invalid.
    #[error("{}: malformed audio file: {detail}", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the decoder objected to.
        detail: String,
    },

    /// The container is fine but it holds no audio track, or its codec (or a feature of it) is
    /// one this build cannot decode.
    #[error("{}: unsupported audio: {detail}", .path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The codec or feature that is not supported.
        detail: String,
    },

    /// The sample rate or channel count changes part-way through the stream, which this module
    /// does not handle.
    #[error("{}: stream parameters change mid-stream: {detail}", .path.display())]
    ChangingFormat {
        /// The file.
        path: PathBuf,
        /// The old and new parameters.
        detail: String,
    },

    /// Every packet of the stream failed to decode, so there is no audio to return.
    #[error("{}: no packet could be decoded ({failed} failed; first error: {first})", .path.display())]
    Undecodable {
        /// The file.
        path: PathBuf,
        /// Number of packets that failed.
        failed: usize,
        /// The first decoder error.
        first: String,
    },

    /// The file decoded without error but contains no audio samples.
    #[error("{}: file contains no audio (0 samples)", .path.display())]
    NoAudio {
        /// The file.
        path: PathBuf,
    },

    /// A sample rate of 0 (or one too large to resample between) was given.
    #[error("invalid sample rate for {what}: {from_hz} Hz -> {to_hz} Hz (rates must be > 0)")]
    InvalidSampleRate {
        /// What was being done (e.g. `resample`).
        what: String,
        /// The source rate.
        from_hz: u32,
        /// The target rate.
        to_hz: u32,
    },

    /// The resampler itself failed (should not happen for valid rates).
    #[error("resampling {from_hz} Hz -> {to_hz} Hz failed: {detail}")]
    Resample {
        /// The source rate.
        from_hz: u32,
        /// The target rate.
        to_hz: u32,
        /// rubato's error.
        detail: String,
    },

    /// A sample to be written is NaN or infinite; nothing was written.
    #[error("{}: refusing to write non-finite sample {value} at index {index}", .path.display())]
    NonFiniteSample {
        /// The file that was not written.
        path: PathBuf,
        /// Index of the first offending sample.
        index: usize,
        /// Its value.
        value: f32,
    },

    /// A WAV file could not be written (or was asked for with a sample rate of 0).
    #[error("{}: cannot write WAV file: {detail}", .path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// Averages the channels of interleaved audio into one: `out[i] = mean(frame i)`.
///
/// Mono input is returned as a copy. A trailing incomplete frame (a sample count that is not a
/// multiple of the channel count, which decoded [`Audio`] never has) is dropped; zero channels
/// give an empty result.
pub fn to_mono(audio: &Audio) -> Vec<f32> {
    match audio.channels {
        0 => Vec::new(),
        1 => audio.samples.clone(),
        n => {
            let mut out = Vec::with_capacity(audio.samples.len() / n as usize);
            downmix_into(&audio.samples, n as usize, &mut out);
            out
        }
    }
}

/// The arithmetic of [`to_mono`] for `channels >= 2`, appending to `out`; shared with
/// [`opus::OpusPacketDecoder::decode_mono`] so that files and streams mix down identically.
fn downmix_into(samples: &[f32], channels: usize, out: &mut Vec<f32>) {
    let scale = 1.0 / channels as f32;
    out.extend(samples.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() * scale));
}

/// Decodes `path`, downmixes it to mono and resamples it to [`MIMI_SAMPLE_RATE`]: the input
/// Mimi expects. The result is aligned with the original (no resampler delay) and has
/// `round(frames * 24000 / rate)` samples.
pub fn load_mono_24k(path: &Path) -> Result<Vec<f32>, AudioError> {
    let t0 = std::time::Instant::now();
    let audio = decode_file(path)?;
    let frames = audio.samples.len() / audio.channels.max(1) as usize;
    tracing::info!(
        file = %path.display(),
        rate = audio.sample_rate,
        channels = audio.channels,
        seconds = frames as f64 / audio.sample_rate as f64,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "decoded"
    );
    let mono = to_mono(&audio);
    if audio.sample_rate != MIMI_SAMPLE_RATE {
        tracing::info!(from = audio.sample_rate, to = MIMI_SAMPLE_RATE, "resampling");
    }
    resample(&mono, audio.sample_rate, MIMI_SAMPLE_RATE)
}

/// Splits `samples` into consecutive frames of `frame` samples (use [`MIMI_FRAME_SIZE`] for
/// Mimi), copying each. The last frame is zero-padded to full length if needed, so every item
/// has exactly `frame` samples and there are `ceil(len / frame)` of them; empty input yields
/// no frames. Callers who need the true length should keep `samples.len()` and trim the
/// decoded output to it.
///
/// # Panics
/// If `frame` is 0 (like [`slice::chunks`]); frame sizes come from the model, not from input.
pub fn frames(samples: &[f32], frame: usize) -> impl Iterator<Item = Vec<f32>> + '_ {
    assert!(frame > 0, "audio::frames: frame size must be > 0");
    samples.chunks(frame).map(move |chunk| {
        let mut v = Vec::with_capacity(frame);
        v.extend_from_slice(chunk);
        v.resize(frame, 0.0);
        v
    })
}

//! Decoding: WAV, FLAC, MP3 and Ogg/Vorbis through symphonia; Ogg/Opus through opus-rs, the
//! decoder the server uses (`ogg_opus.rs`, which documents how Opus files are played: pre-skip,
//! end trimming, output gain, damaged pages and packets).
//!
//! Behaviour on damaged input, decided here and relied on by the tests:
//! - **Format detection** is by content. An `OggS` page whose first packet starts with
//!   `OpusHead` is Ogg Opus; other Ogg streams (Vorbis) go to symphonia. Containers this build
//!   cannot read are named by their signature ([`AudioError::UnsupportedContainer`]): MP4/M4A
//!   (`ftyp` at offset 4), ADTS AAC (sync `FFF1`/`FFF9`), WebM/Matroska (`1A 45 DF A3`), AIFF,
//!   CAF. Otherwise the first bytes must carry a known container magic (`RIFF`, `fLaC`, `OggS`,
//!   `ID3`, an MPEG audio sync word) before symphonia is asked to probe: symphonia's own probe
//!   scans up to 1 MiB for *any* marker, and random bytes contain MP3 sync words often enough to
//!   be "decoded" into noise. The file extension (or the hint given to [`decode_bytes`]) only
//!   helps symphonia choose among candidates.
//! - **Truncated header** (e.g. a WAV cut inside `fmt `): [`AudioError::Truncated`].
//! - **Truncated data** (e.g. a WAV cut mid-`data`): decoding *succeeds* with every complete
//!   frame before the cut, and a `tracing` warning says how many frames the header promised.
//!   Recordings cut short by a crash are common and their audio is still good.
//! - **End of stream**: symphonia reports it as `IoError(UnexpectedEof)`; that is the normal end.
//! - **A packet that fails to decode** (`DecodeError`, e.g. a corrupt MP3 frame): skipped with a
//!   `tracing` warning, as media players do; the rest of the file is kept. If *no* packet
//!   decodes, [`AudioError::Undecodable`]. Any other error while decoding fails the call.
//! - **Chained streams** (symphonia's `ResetRequired`, e.g. a second Ogg logical stream): the
//!   first stream is returned, with a warning.
//! - **No samples at all**: [`AudioError::NoAudio`].
//! - **An Ogg file cut inside its first page**: [`AudioError::Truncated`].
//! - A panic inside symphonia or the Ogg reader on a malformed file is caught and reported as
//!   [`AudioError::Malformed`] (the panic message still goes to the panic hook); the Opus
//!   decoder's panics are contained packet by packet (`opus.rs`).

use std::io::ErrorKind;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use symphonia::core::audio::{SampleBuffer, SignalSpec};
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::ogg_opus::{self, FirstPage};
use super::{Audio, AudioError};

/// Name used in errors for [`decode_bytes`] input.
const MEMORY_NAME: &str = "<memory buffer>";

/// Leading bytes read for format detection (the whole file when it is shorter).
const HEAD_LEN: usize = ogg_opus::CLASSIFY_LEN;

/// Decodes an audio file (WAV with 8/16/24/32-bit integer or 32/64-bit float PCM, FLAC, MP3,
/// Ogg/Vorbis, Ogg/Opus) into interleaved `f32` samples. Ogg Opus comes out at 24 kHz with the
/// channels of its header.
///
/// The format is detected from the content; the extension is only a hint. See the module
/// documentation for how truncated or damaged files are handled.
pub fn decode_file(path: &Path) -> Result<Audio, AudioError> {
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        let source = std::io::Error::other("it is a directory");
        return Err(AudioError::Io { path: path.to_path_buf(), source });
    }
    if meta.len() == 0 {
        return Err(AudioError::Empty { path: path.to_path_buf() });
    }
    let mut head = [0u8; HEAD_LEN];
    let n = read_head(&file, &mut head).map_err(|e| io_error(path, e))?;
    let ext = path.extension().and_then(|e| e.to_str());
    decode_source(Box::new(file), &head[..n], ext, path)
}

/// Decodes audio held in memory, exactly as [`decode_file`] does for a file. `hint_ext` is an
/// optional file extension (`"wav"`, `"mp3"`, without the dot) that helps format detection.
/// Errors name the source as `<memory buffer>`.
pub fn decode_bytes(bytes: Vec<u8>, hint_ext: Option<&str>) -> Result<Audio, AudioError> {
    let path = Path::new(MEMORY_NAME);
    if bytes.is_empty() {
        return Err(AudioError::Empty { path: path.to_path_buf() });
    }
    let head: Vec<u8> = bytes.iter().take(HEAD_LEN).copied().collect();
    decode_source(Box::new(std::io::Cursor::new(bytes)), &head, hint_ext, path)
}

fn io_error(path: &Path, e: std::io::Error) -> AudioError {
    if e.kind() == ErrorKind::NotFound {
        AudioError::NotFound { path: path.to_path_buf() }
    } else {
        AudioError::Io { path: path.to_path_buf(), source: e }
    }
}

/// Reads up to `buf.len()` leading bytes without moving `file`'s cursor for later readers.
fn read_head(file: &std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    f.seek(SeekFrom::Start(0))?;
    Ok(n)
}

/// True when `head` (the first bytes of the file) starts like a container symphonia may read.
fn known_magic(head: &[u8]) -> bool {
    const MAGICS: [&[u8]; 4] = [b"RIFF", b"fLaC", b"OggS", b"ID3"];
    MAGICS.iter().any(|m| head.starts_with(m))
        // MPEG audio frame sync: 11 set bits (ADTS, layer bits 00, is named before this).
        || (head.len() >= 2 && head[0] == 0xff && head[1] & 0xe0 == 0xe0)
}

/// The name of a container that `head` shows and this build cannot read, if any.
fn unsupported_container(head: &[u8]) -> Option<&'static str> {
    if head.len() >= 8 && &head[4..8] == b"ftyp" {
        Some("MP4/AAC") // ISO base media: .mp4, .m4a, .mov, .3gp
    } else if head.len() >= 2 && head[0] == 0xff && head[1] & 0xf6 == 0xf0 {
        Some("AAC (ADTS)") // sync 0xFFF, layer 00: FFF1 / FFF9, or FFF0 / FFF8 with a CRC
    } else if head.starts_with(b"\x1a\x45\xdf\xa3") {
        Some("WebM/Matroska")
    } else if head.starts_with(b"FORM") && head.len() >= 12 && matches!(&head[8..12], b"AIFF" | b"AIFC") {
        Some("AIFF")
    } else if head.starts_with(b"caff") {
        Some("CAF")
    } else {
        None
    }
}

fn decode_source(
    source: Box<dyn MediaSource>,
    head: &[u8],
    hint_ext: Option<&str>,
    path: &Path,
) -> Result<Audio, AudioError> {
    if let Some(container) = unsupported_container(head) {
        return Err(AudioError::UnsupportedContainer { path: path.to_path_buf(), container: container.into() });
    }
    let first_page = ogg_opus::classify(head);
    if first_page == Some(FirstPage::Cut) {
        return Err(AudioError::Truncated {
            path: path.to_path_buf(),
            detail: "the Ogg file ends inside its first page".into(),
        });
    }
    if !known_magic(head) {
        let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(AudioError::UnknownFormat {
            path: path.to_path_buf(),
            detail: format!("no known format signature; file starts with bytes [{}]", shown.join(" ")),
        });
    }
    let decode = || {
        if first_page == Some(FirstPage::Opus) {
            return ogg_opus::decode(source, path);
        }
        let mut hint = Hint::new();
        if let Some(ext) = hint_ext {
            hint.with_extension(ext);
        }
        let mss = MediaSourceStream::new(source, MediaSourceStreamOptions::default());
        decode_stream(mss, &hint, path)
    };
    match catch_unwind(AssertUnwindSafe(decode)) {
        Ok(result) => result,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(AudioError::Malformed { path: path.to_path_buf(), detail: format!("decoder panicked: {msg}") })
        }
    }
}

/// Maps a symphonia error raised while opening (probing) the stream.
fn open_error(path: &Path, e: SymError) -> AudioError {
    let path = path.to_path_buf();
    match e {
        SymError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => {
            AudioError::Truncated { path, detail: "unexpected end of file".into() }
        }
        SymError::IoError(source) => AudioError::Io { path, source },
        SymError::Unsupported(msg) if msg.contains("probe") => {
            AudioError::UnknownFormat { path, detail: msg.to_string() }
        }
        SymError::Unsupported(msg) => AudioError::Unsupported { path, detail: msg.to_string() },
        other => AudioError::Malformed { path, detail: other.to_string() },
    }
}

fn decode_stream(mss: MediaSourceStream, hint: &Hint, path: &Path) -> Result<Audio, AudioError> {
    let format_opts = FormatOptions { enable_gapless: true, ..Default::default() };
    let probed = symphonia::default::get_probe()
        .format(hint, mss, &format_opts, &MetadataOptions::default())
        .map_err(|e| open_error(path, e))?;
    let mut format = probed.format;

    let track = format.tracks().iter().find(|t| t.codec_params.codec != CODEC_TYPE_NULL).ok_or_else(|| {
        AudioError::Unsupported { path: path.to_path_buf(), detail: "the file has no decodable audio track".into() }
    })?;
    let track_id = track.id;
    let expected_frames = track.codec_params.n_frames;
    let mut decoder =
        symphonia::default::get_codecs().make(&track.codec_params, &DecoderOptions::default()).map_err(|e| {
            AudioError::Unsupported {
                path: path.to_path_buf(),
                detail: format!("codec {:?}: {e}", track.codec_params.codec),
            }
        })?;

    let mut samples: Vec<f32> = Vec::new();
    let mut spec: Option<SignalSpec> = None;
    let mut buf: Option<SampleBuffer<f32>> = None;
    let mut failed = 0usize;
    let mut first_failure: Option<String> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => {
                tracing::warn!(file = %path.display(), "audio stream changes (chained stream); keeping only the first part");
                break;
            }
            Err(SymError::DecodeError(msg)) => {
                return Err(AudioError::Malformed { path: path.to_path_buf(), detail: format!("container: {msg}") })
            }
            Err(e) => return Err(open_error(path, e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        if packet.data.is_empty() {
            // Guards against readers that keep returning empty packets at a truncated end.
            break;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::DecodeError(msg)) => {
                tracing::warn!(file = %path.display(), ts = packet.ts(), "skipping undecodable packet: {msg}");
                failed += 1;
                first_failure.get_or_insert_with(|| msg.to_string());
                continue;
            }
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                tracing::warn!(file = %path.display(), ts = packet.ts(), "skipping incomplete packet at end of stream");
                failed += 1;
                first_failure.get_or_insert_with(|| "incomplete packet".to_string());
                continue;
            }
            Err(SymError::Unsupported(msg)) => {
                return Err(AudioError::Unsupported { path: path.to_path_buf(), detail: msg.to_string() })
            }
            Err(e) => return Err(AudioError::Malformed { path: path.to_path_buf(), detail: e.to_string() }),
        };
        let this_spec = *decoded.spec();
        match spec {
            None => spec = Some(this_spec),
            Some(s) if s.rate != this_spec.rate || s.channels.count() != this_spec.channels.count() => {
                return Err(AudioError::ChangingFormat {
                    path: path.to_path_buf(),
                    detail: format!(
                        "{} Hz x{} then {} Hz x{}",
                        s.rate,
                        s.channels.count(),
                        this_spec.rate,
                        this_spec.channels.count()
                    ),
                });
            }
            Some(_) => {}
        }
        if decoded.frames() == 0 {
            continue;
        }
        let needed = decoded.capacity() as u64;
        if buf.as_ref().is_none_or(|b| (b.capacity() as u64) < needed * this_spec.channels.count() as u64) {
            buf = Some(SampleBuffer::new(needed, this_spec));
        }
        if let Some(b) = buf.as_mut() {
            b.copy_interleaved_ref(decoded);
            samples.extend_from_slice(b.samples());
        }
    }

    finish(path, samples, spec, failed, first_failure, expected_frames)
}

fn finish(
    path: &Path,
    samples: Vec<f32>,
    spec: Option<SignalSpec>,
    failed: usize,
    first_failure: Option<String>,
    expected_frames: Option<u64>,
) -> Result<Audio, AudioError> {
    let path: PathBuf = path.to_path_buf();
    let spec = match spec {
        Some(s) if !samples.is_empty() => s,
        _ if failed > 0 => {
            return Err(AudioError::Undecodable { path, failed, first: first_failure.unwrap_or_default() })
        }
        _ => return Err(AudioError::NoAudio { path }),
    };
    let channels = spec.channels.count();
    if spec.rate == 0 || channels == 0 || channels > u16::MAX as usize {
        return Err(AudioError::Malformed {
            path,
            detail: format!("invalid stream parameters: {} Hz, {channels} channels", spec.rate),
        });
    }
    let frames = (samples.len() / channels) as u64;
    if let Some(expected) = expected_frames {
        if frames < expected {
            tracing::warn!(
                file = %path.display(),
                "audio file looks truncated: header promises {expected} frames, decoded {frames}"
            );
        }
    }
    if failed > 0 {
        tracing::warn!(file = %path.display(), "{failed} packet(s) could not be decoded and were skipped");
    }
    Ok(Audio { samples, sample_rate: spec.rate, channels: channels as u16 })
}

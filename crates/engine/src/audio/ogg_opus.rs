//! Ogg Opus files (RFC 7845), decoded as an Opus file player does it, through the same
//! [`OggPacketStream`] and [`OpusPacketDecoder`] as the server's connections:
//! - the first packet is the `OpusHead` ([`OpusHead::parse`]: channel mapping family 0, mono or
//!   stereo; other families are [`AudioError::Unsupported`]); the second is `OpusTags`, skipped
//!   (if it is missing the packet is decoded as audio, with a warning);
//! - audio is decoded at 24 kHz (why: [`super::opus`]), with the channels of the header (stereo
//!   stays stereo here; [`super::load_mono_24k`] averages the channels, as for every format) and
//!   its output gain applied. Samples are not clipped: Opus, like MP3, can overshoot ±1 a little,
//!   and a positive output gain raises them further;
//! - the pre-skip is removed from the start, and the end is trimmed to the granule position of
//!   the end-of-stream page. The first audio page's granule position fixes where the stream
//!   starts (a stream cut from a live one may start later than 0); end trimming is honoured only
//!   within the last page, as RFC 7845 §4.4 allows, never past audio that an earlier page
//!   already accounted for. The input rate field is informational and ignored;
//! - damage, in the spirit of [`super::decode_file`]'s other formats: a page with a bad checksum
//!   is skipped (with its packets) and reading resumes at the next page; a packet the decoder
//!   rejects (or panics on) is replaced by silence of the duration its TOC byte announces, so
//!   that later audio keeps its timing, with a warning; if no packet decodes,
//!   [`AudioError::Undecodable`]. A file that ends without its end-of-stream page (cut short)
//!   keeps every packet of its complete pages, with a warning. A second logical stream (a
//!   chained file, or one multiplexed beside the Opus one) is ignored, with a warning.

use std::io::{ErrorKind, Read};
use std::path::Path;

use super::ogg_stream::{OggPacket, OggPacketStream};
use super::opus::{packet_samples_48k, OpusHead, OpusHeadError, OpusPacketDecoder, DECODE_RATE};
use super::{Audio, AudioError};

/// Most bytes of pages accepted for one packet: an OpusTags packet may carry cover art.
const MAX_FILE_PACKET: usize = 32 << 20;

/// Bytes read from the file at a time.
const READ_CHUNK: usize = 64 << 10;

/// Leading bytes [`classify`] needs: the first page's header, its lacing values and 8 bytes of
/// its body.
pub(super) const CLASSIFY_LEN: usize = 27 + 255 + 8;

/// What the first Ogg page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstPage {
    /// Its first packet starts with `OpusHead`.
    Opus,
    /// Anything else (Vorbis, ..., or damage): for symphonia.
    Other,
    /// The file ends before the first 8 bytes of the first packet.
    Cut,
}

/// Classifies an Ogg file from its first bytes: `head` holds at least [`CLASSIFY_LEN`] bytes,
/// or the whole file. `None` when it does not start with `OggS`.
pub(super) fn classify(head: &[u8]) -> Option<FirstPage> {
    if !head.starts_with(b"OggS") {
        return None;
    }
    let Some(&nseg) = head.get(26) else { return Some(FirstPage::Cut) };
    let body = 27 + nseg as usize;
    match head.get(body..body + 8) {
        None => Some(FirstPage::Cut),
        Some(magic) if magic == b"OpusHead" => Some(FirstPage::Opus),
        Some(_) => Some(FirstPage::Other),
    }
}

/// Decodes an Ogg Opus stream read from `src` (see the module documentation).
pub(super) fn decode(mut src: impl Read, path: &Path) -> Result<Audio, AudioError> {
    let mut ogg = OggPacketStream::new(MAX_FILE_PACKET);
    let mut file = OpusFile::new(path);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut after_end = false;
    loop {
        let n = match src.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => return Err(AudioError::Io { path: path.to_path_buf(), source }),
        };
        if file.ended {
            after_end = true;
            break;
        }
        let packets = ogg.push_packets(&chunk[..n]).map_err(|e| malformed(path, format!("Ogg framing: {e}")))?;
        for p in packets {
            if file.ended {
                after_end = true;
                break;
            }
            file.packet(p)?;
        }
    }
    if ogg.foreign_pages > 0 || (file.ended && ogg.buffered() > 0) {
        after_end = true;
    }
    if after_end {
        tracing::warn!(file = %path.display(), "data after the Opus stream (another logical stream, or a chained file) is ignored");
    }
    if ogg.corrupt_pages > 0 {
        tracing::warn!(file = %path.display(), "{} damaged Ogg page(s) skipped", ogg.corrupt_pages);
    }
    if !file.ended && file.head.is_some() {
        tracing::warn!(
            file = %path.display(),
            "Ogg Opus file looks truncated: no end-of-stream page ({} byte(s) of an incomplete page ignored); keeping the audio before the cut",
            ogg.buffered()
        );
    }
    file.finish(ogg.corrupt_pages)
}

fn malformed(path: &Path, detail: String) -> AudioError {
    AudioError::Malformed { path: path.to_path_buf(), detail }
}

/// The decoding state of one file.
struct OpusFile<'a> {
    path: &'a Path,
    head: Option<OpusHead>,
    decoder: Option<OpusPacketDecoder>,
    tags_seen: bool,
    /// Interleaved 24 kHz samples from the first decoded one (pre-skip included).
    samples: Vec<f32>,
    /// Decoded length so far, in 48 kHz units (the format's).
    pos_48: u64,
    /// 48 kHz samples of the audio packets ending on the current page so far.
    page_48: u64,
    /// Granule position of the first decoded sample (fixed by the first audio page).
    start_48: Option<u64>,
    /// Where the audio ends (relative to the first decoded sample), from the end-of-stream page.
    end_48: Option<u64>,
    /// The first audio page's granule position was invalid: no end trimming.
    bad_granules: bool,
    ended: bool,
    decoded: usize,
    failed: usize,
    first_failure: Option<String>,
}

impl<'a> OpusFile<'a> {
    fn new(path: &'a Path) -> Self {
        Self {
            path,
            head: None,
            decoder: None,
            tags_seen: false,
            samples: Vec::new(),
            pos_48: 0,
            page_48: 0,
            start_48: None,
            end_48: None,
            bad_granules: false,
            ended: false,
            decoded: 0,
            failed: 0,
            first_failure: None,
        }
    }

    fn packet(&mut self, p: OggPacket) -> Result<(), AudioError> {
        if self.head.is_none() {
            let head = OpusHead::parse(&p.data).map_err(|e| self.head_error(e))?;
            self.decoder = Some(OpusPacketDecoder::new(&head));
            self.head = Some(head);
            self.ended = p.end_of_stream;
            return Ok(());
        }
        if !self.tags_seen {
            self.tags_seen = true;
            if p.data.starts_with(b"OpusTags") {
                self.ended = p.end_of_stream;
                return Ok(());
            }
            tracing::warn!(file = %self.path.display(), "the second packet is not OpusTags: decoding it as audio");
        }
        self.audio(p);
        Ok(())
    }

    fn head_error(&self, e: OpusHeadError) -> AudioError {
        let path = self.path.to_path_buf();
        match e {
            e if e.is_unsupported() => AudioError::Unsupported { path, detail: format!("Ogg Opus: {e}") },
            // The first page announced OpusHead (see `classify`): it was damaged and skipped.
            OpusHeadError::NotOpus(_) => {
                AudioError::Malformed { path, detail: format!("its first Ogg page (the OpusHead) is damaged: {e}") }
            }
            e => AudioError::Malformed { path, detail: e.to_string() },
        }
    }

    fn audio(&mut self, p: OggPacket) {
        let decoder = self.decoder.as_mut().expect("a decoder once the OpusHead is read");
        let channels = decoder.channels();
        let outcome = if p.data.is_empty() {
            Err("empty packet (a valid Opus packet has at least its TOC byte)".to_string())
        } else {
            match decoder.decode(&p.data) {
                Ok(pcm) => {
                    self.samples.extend_from_slice(pcm);
                    Ok(2 * (pcm.len() / channels) as u64)
                }
                Err(e) => Err(e.to_string()),
            }
        };
        let got_48 = match outcome {
            Ok(n) => {
                self.decoded += 1;
                n
            }
            Err(msg) => {
                let nominal = packet_samples_48k(&p.data).unwrap_or(0);
                tracing::warn!(
                    file = %self.path.display(),
                    at_s = self.pos_48 as f64 / 48_000.0,
                    "Opus packet not decoded ({msg}): replaced by {} ms of silence", nominal / 48
                );
                self.failed += 1;
                self.first_failure.get_or_insert(msg);
                let n = (nominal / 2) as usize * channels;
                self.samples.resize(self.samples.len() + n, 0.0);
                nominal as u64
            }
        };
        self.pos_48 += got_48;
        self.page_48 += got_48;
        if p.last_in_page && p.granule != u64::MAX {
            self.page_end(p.granule, p.end_of_stream);
        }
        self.ended = p.end_of_stream;
    }

    /// The current page ends with a packet: its granule position `g` counts the samples up to
    /// here, from the stream's start, pre-skip included.
    fn page_end(&mut self, g: u64, eos: bool) {
        let page_start = self.pos_48 - self.page_48;
        let start = match self.start_48 {
            Some(start) => start,
            None => {
                let start = match g.checked_sub(self.page_48) {
                    Some(start) => start,
                    // Fewer samples than the page holds: end trimming, valid on a stream of
                    // one audio page only (RFC 7845 §4.5).
                    None if eos => 0,
                    None => {
                        tracing::warn!(
                            file = %self.path.display(),
                            "the first audio page's granule position ({g}) is less than the samples it holds ({}): granule positions ignored",
                            self.page_48
                        );
                        self.bad_granules = true;
                        0
                    }
                };
                self.start_48 = Some(start);
                start
            }
        };
        self.page_48 = 0;
        if !eos || self.bad_granules {
            return;
        }
        let end = g.saturating_sub(start);
        self.end_48 = Some(if end < page_start {
            tracing::warn!(
                file = %self.path.display(),
                "the last page's granule position would trim more than that page holds: not trimmed"
            );
            self.pos_48
        } else {
            end.min(self.pos_48)
        });
    }

    fn finish(mut self, corrupt_pages: u64) -> Result<Audio, AudioError> {
        let path = self.path.to_path_buf();
        let Some(head) = self.head else {
            return Err(if corrupt_pages > 0 {
                AudioError::Malformed { path, detail: "its first Ogg page (the OpusHead) is damaged".into() }
            } else {
                AudioError::Truncated { path, detail: "the file ends inside its first Ogg page (OpusHead)".into() }
            });
        };
        if self.decoded == 0 && self.failed > 0 {
            return Err(AudioError::Undecodable {
                path,
                failed: self.failed,
                first: self.first_failure.unwrap_or_default(),
            });
        }
        if self.failed > 0 {
            tracing::warn!(file = %path.display(), "{} Opus packet(s) could not be decoded and were replaced by silence", self.failed);
        }
        let channels = head.channels as usize;
        let frames = self.samples.len() / channels;
        // 48 kHz positions to 24 kHz frames, halves rounded up.
        let skip = (head.pre_skip as usize).div_ceil(2);
        let end = self.end_48.map_or(frames, |e| (e as usize).div_ceil(2).min(frames));
        if end <= skip {
            return Err(AudioError::NoAudio { path });
        }
        self.samples.truncate(end * channels);
        self.samples.drain(..skip * channels);
        Ok(Audio { samples: self.samples, sample_rate: DECODE_RATE, channels: channels as u16 })
    }
}

//! Opus in Ogg (RFC 7845) and Opus packets (RFC 6716), the pieces shared by the file decoder
//! ([`super::decode_file`] on an Ogg Opus file) and the server (Kyutai's protocol carries Ogg
//! Opus): the `OpusHead` identification header, packet durations from the TOC byte, and a packet
//! decoder that contains the decoder's failures.
//!
//! Opus is `opus-rs`, a pure-Rust port of libopus: no system library to install.
//!
//! # Why decode at 24 kHz, not at 48 kHz and resample
//! Opus can be decoded directly at 8, 12, 16, 24 or 48 kHz: the decoder synthesises at the rate
//! asked for (CELT drops the bands above the Nyquist rate, SILK resamples internally), so
//! decoding at 24 kHz, Mimi's rate, gives the signal band-limited to 12 kHz with no second
//! filter. Decoding at 48 kHz and resampling with [`super::resample`] would cost a 48 kHz
//! synthesis plus an FFT resampler and give *different* samples from the server, which must
//! decode at 24 kHz incrementally, packet by packet (a whole-signal resampler does not apply
//! there). With one rate and one decoder here, the same packets give the same samples in
//! `moshi-rs run` (a file) and in `serve` (a connection), which the tests check. The 48 kHz
//! units of the Ogg Opus format (pre-skip, granule positions) are halved, rounding halves up.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// The rate Opus is decoded at here: Mimi's 24 kHz (see the module documentation).
pub const DECODE_RATE: u32 = 24_000;

/// The most samples (per channel) one Opus packet decodes to at [`DECODE_RATE`]: 120 ms.
pub const MAX_PACKET_SAMPLES: usize = DECODE_RATE as usize * 120 / 1000;

/// The fields of an `OpusHead` packet (RFC 7845 §5.1) for channel mapping family 0, the only
/// one supported: one Opus stream, mono or stereo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    /// Version byte; 1 today, and any version with major (upper four bits) 0 is compatible.
    pub version: u8,
    /// Output channels: 1 or 2.
    pub channels: u8,
    /// Samples at 48 kHz to discard from the start of the decoded stream (the encoder's delay).
    pub pre_skip: u16,
    /// The sample rate of the encoder's input, in Hz (0: unknown). Informational only: Opus
    /// always decodes at the rate asked for.
    pub input_rate: u32,
    /// Gain to apply to the decoded output, in dB in Q7.8 (`256` = +1 dB).
    pub output_gain: i16,
    /// Channel mapping family: 0.
    pub mapping_family: u8,
}

/// Why an `OpusHead` packet was refused by [`OpusHead::parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpusHeadError {
    /// The packet does not start with the `OpusHead` magic: it is not an Opus stream. The
    /// payload shows its first bytes, non-printable ones as `.`.
    #[error("the stream is not Ogg Opus: its first packet starts with {0:?}, not \"OpusHead\"")]
    NotOpus(String),
    /// Fewer than the 19 bytes of the fixed header.
    #[error("OpusHead of {0} bytes, at least 19 expected")]
    TooShort(usize),
    /// A major version other than 0 (an incompatible future format).
    #[error("OpusHead version {0} is not supported (major version 0 expected)")]
    Version(u8),
    /// Channel mapping family 0 with a channel count other than 1 or 2.
    #[error("OpusHead with {0} channels under channel mapping family 0, which allows mono or stereo only")]
    Channels(u8),
    /// A channel mapping family other than 0 (surround or ambisonics: several Opus streams).
    #[error("channel mapping family {family} ({channels} channels) is not supported: only mono or stereo (family 0)")]
    MappingFamily {
        /// The family.
        family: u8,
        /// The channel count it announces.
        channels: u8,
    },
}

impl OpusHeadError {
    /// True for a well-formed header asking for what this build does not decode (another
    /// major version, another channel mapping), false for a damaged or non-Opus one.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, OpusHeadError::Version(_) | OpusHeadError::MappingFamily { .. })
    }
}

impl OpusHead {
    /// Parses and checks an `OpusHead` packet. Trailing bytes after the 19 of family 0 are
    /// ignored, as RFC 7845 asks of decoders.
    pub fn parse(p: &[u8]) -> Result<OpusHead, OpusHeadError> {
        if !p.starts_with(b"OpusHead") {
            let shown = p.iter().take(8).map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }).collect();
            return Err(OpusHeadError::NotOpus(shown));
        }
        if p.len() < 19 {
            return Err(OpusHeadError::TooShort(p.len()));
        }
        let head = OpusHead {
            version: p[8],
            channels: p[9],
            pre_skip: u16::from_le_bytes([p[10], p[11]]),
            input_rate: u32::from_le_bytes([p[12], p[13], p[14], p[15]]),
            output_gain: i16::from_le_bytes([p[16], p[17]]),
            mapping_family: p[18],
        };
        if head.version >> 4 != 0 {
            return Err(OpusHeadError::Version(head.version));
        }
        if head.mapping_family != 0 {
            return Err(OpusHeadError::MappingFamily { family: head.mapping_family, channels: head.channels });
        }
        if head.channels == 0 || head.channels > 2 {
            return Err(OpusHeadError::Channels(head.channels));
        }
        Ok(head)
    }

    /// The 19-byte packet (family 0).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut h = b"OpusHead".to_vec();
        h.push(self.version);
        h.push(self.channels);
        h.extend_from_slice(&self.pre_skip.to_le_bytes());
        h.extend_from_slice(&self.input_rate.to_le_bytes());
        h.extend_from_slice(&self.output_gain.to_le_bytes());
        h.push(self.mapping_family);
        h
    }

    /// The output gain as a linear factor: `10^(gain_dB / 20)`.
    pub fn gain_factor(&self) -> f32 {
        10f64.powf(self.output_gain as f64 / (20.0 * 256.0)) as f32
    }
}

/// Samples per channel at 48 kHz that an Opus packet holds, from its TOC byte (RFC 6716 §3.1)
/// and, for code 3, its frame count byte. `None` for an empty packet, a code 3 packet without
/// its count byte or with 0 frames, or one longer than the 120 ms a packet may hold.
pub fn packet_samples_48k(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][(config & 3) as usize], // SILK: 10, 20, 40, 60 ms
        12..=15 => [480, 960][(config & 1) as usize],            // Hybrid: 10, 20 ms
        _ => [120, 240, 480, 960][(config & 3) as usize],        // CELT: 2.5, 5, 10, 20 ms
    };
    let count = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => (*packet.get(1)? & 0x3f) as u32,
    };
    let total = frame * count;
    (count > 0 && total <= 5760).then_some(total)
}

/// The frame sizes of a non-empty Opus packet (RFC 6716 §3.2), or which of §3.4's rules
/// [R1]–[R7] it breaks: what libopus's `opus_packet_parse` accepts and refuses (the `opus_diff`
/// fuzz target checks the two agree). A frame of size 0 is a lost one (concealed).
pub fn opus_frame_sizes(packet: &[u8]) -> Result<Vec<usize>, &'static str> {
    const MAX_FRAME: usize = 1275;
    let (&toc, mut data) = packet.split_first().ok_or("an empty packet (R1)")?;
    // A frame length: one byte below 252, else two (RFC 6716 §3.2.1).
    fn length(data: &mut &[u8]) -> Result<usize, &'static str> {
        let (&b0, rest) = data.split_first().ok_or("a frame length past the end")?;
        if b0 < 252 {
            *data = rest;
            return Ok(b0 as usize);
        }
        let (&b1, rest) = rest.split_first().ok_or("a frame length past the end")?;
        *data = rest;
        Ok(b0 as usize + 4 * b1 as usize)
    }
    let sizes = match toc & 3 {
        0 => vec![data.len()],
        1 if data.len() % 2 == 1 => return Err("code 1 with an odd payload length (R3)"),
        1 => vec![data.len() / 2; 2],
        2 => {
            let first = length(&mut data)?;
            if first > data.len() {
                return Err("code 2 with a first frame longer than the packet (R4)");
            }
            vec![first, data.len() - first]
        }
        _ => {
            let (&count, rest) = data.split_first().ok_or("code 3 without its frame count byte (R6)")?;
            data = rest;
            let m = (count & 0x3f) as usize;
            if m == 0 || packet_samples_48k(packet).is_none() {
                return Err("code 3 with no frames or more than 120 ms (R5)");
            }
            if count & 0x40 != 0 {
                // Padding: bytes of 255 add 254 and continue; the last adds its value.
                let mut padding = 0usize;
                loop {
                    let (&b, rest) = data.split_first().ok_or("code 3 padding length past the end (R7)")?;
                    data = rest;
                    padding += if b == 255 { 254 } else { b as usize };
                    if b != 255 {
                        break;
                    }
                }
                if padding > data.len() {
                    return Err("code 3 padding longer than the packet (R7)");
                }
                data = &data[..data.len() - padding];
            }
            if count & 0x80 == 0 {
                if data.len() % m != 0 {
                    return Err("code 3 CBR with a payload not a multiple of its frame count (R6)");
                }
                vec![data.len() / m; m]
            } else {
                let mut sizes = Vec::with_capacity(m);
                for _ in 0..m - 1 {
                    sizes.push(length(&mut data)?);
                }
                let listed: usize = sizes.iter().sum();
                if listed > data.len() {
                    return Err("code 3 VBR frame lengths longer than the packet (R7)");
                }
                sizes.push(data.len() - listed);
                sizes
            }
        }
    };
    if sizes.iter().any(|&s| s > MAX_FRAME) {
        return Err("a frame longer than 1275 bytes (R2)");
    }
    Ok(sizes)
}

/// Why [`OpusPacketDecoder`] could not decode a packet. Either way the decoder was reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpusPacketError {
    /// The decoder refused the packet.
    #[error("Opus decoder: {0}")]
    Rejected(String),
    /// The decoder panicked on the packet; the panic was caught (its message also went to the
    /// panic hook).
    #[error("Opus decoder panicked: {0}")]
    Panicked(String),
}

/// Decodes the Opus packets of one stream at [`DECODE_RATE`], with the stream's channel count
/// and output gain. A malformed packet ([`opus_frame_sizes`]) is an [`OpusPacketError`] that
/// leaves the decoder as it was; a packet that the decoder rejects, or that makes it panic, is
/// one too and the decoder is replaced by a fresh one (a panic may leave it inconsistent):
/// nothing here panics on hostile packets.
///
/// An empty packet is a lost one: the decoder conceals [`MAX_PACKET_SAMPLES`] in its place (as
/// libopus does for a lost packet of that length).
pub struct OpusPacketDecoder {
    decoder: super::opus_backend::Decoder,
    channels: usize,
    gain: f32,
    pcm: Vec<f32>,
    mono: Vec<f32>,
}

impl OpusPacketDecoder {
    /// A decoder for the stream `head` describes.
    pub fn new(head: &OpusHead) -> Self {
        let channels = head.channels.clamp(1, 2) as usize;
        Self {
            decoder: Self::fresh(channels),
            channels,
            gain: head.gain_factor(),
            pcm: vec![0f32; MAX_PACKET_SAMPLES * channels],
            mono: Vec::with_capacity(MAX_PACKET_SAMPLES),
        }
    }

    fn fresh(channels: usize) -> super::opus_backend::Decoder {
        super::opus_backend::Decoder::new(DECODE_RATE, channels).expect("24 kHz mono or stereo is a valid Opus decoder")
    }

    /// Output channels (1 or 2).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Decodes one packet; returns its samples, interleaved by channel (at most
    /// [`MAX_PACKET_SAMPLES`] per channel), the output gain applied.
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[f32], OpusPacketError> {
        // A malformed packet (RFC 6716 §3.4) never reaches the decoder, whose state it leaves
        // as it was (as libopus refuses it). opus-rs would conceal some of them as lost ones.
        if !packet.is_empty() {
            opus_frame_sizes(packet).map_err(|rule| OpusPacketError::Rejected(format!("malformed Opus packet: {rule}")))?;
        }
        let decoder = &mut self.decoder;
        let pcm = &mut self.pcm;
        let channels = self.channels;
        let result = catch_unwind(AssertUnwindSafe(|| decoder.decode(packet, MAX_PACKET_SAMPLES, pcm, channels)));
        let n = match result {
            Ok(Ok(n)) if n <= MAX_PACKET_SAMPLES => n,
            Ok(Ok(n)) => {
                self.reset();
                return Err(OpusPacketError::Rejected(format!("{n} samples from one packet")));
            }
            Ok(Err(e)) => {
                self.reset();
                return Err(OpusPacketError::Rejected(e.to_string()));
            }
            Err(panic) => {
                self.reset();
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                return Err(OpusPacketError::Panicked(msg));
            }
        };
        let out = &mut self.pcm[..n * self.channels];
        // Full scale at most: on hostile packets opus-rs has decoded samples of 8e6 where libopus
        // stays near full scale (docs/fuzzing.md, `opus_diff`); whatever a packet holds, the
        // model gets audio in [-1, 1] (NaN as silence), as from libopus's 16-bit output.
        let gain = self.gain;
        out.iter_mut().for_each(|x| *x = if x.is_nan() { 0.0 } else { (*x * gain).clamp(-1.0, 1.0) });
        Ok(out)
    }

    /// As [`decode`](Self::decode), mixed down to mono exactly as [`super::to_mono`] does (the
    /// mean of the channels), so that a stereo stream decoded here and a stereo file decoded by
    /// [`super::load_mono_24k`] give the same samples.
    pub fn decode_mono(&mut self, packet: &[u8]) -> Result<&[f32], OpusPacketError> {
        let n = self.decode(packet)?.len() / self.channels;
        if self.channels == 1 {
            return Ok(&self.pcm[..n]);
        }
        self.mono.clear();
        super::downmix_into(&self.pcm[..n * self.channels], self.channels, &mut self.mono);
        Ok(&self.mono)
    }

    /// Starts again from a fresh decoder state (as at the start of a stream).
    pub fn reset(&mut self) {
        self.decoder = Self::fresh(self.channels);
    }
}

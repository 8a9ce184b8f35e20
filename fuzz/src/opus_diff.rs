//! Differential decoding: the server's Opus packet path (`OpusPacketDecoder`'s structure check
//! `opus_frame_sizes`, then opus-rs, the pure-Rust decoder) against libopus 1.6.1 (the reference
//! implementation, which opus-rs ports; bundled by `opusic-sys`), packet by packet on the same
//! stream at the server's 24 kHz. Used by the `opus_diff` fuzz target and by
//! `examples/opus_diff_seeds.rs`. docs/fuzzing.md has the runs.
//!
//! Per packet, both sides carry their state from the packets before:
//! 1. **Structure**: our verdict (`opus_frame_sizes`) and libopus's (`opus_packet_parse`) must
//!    agree, and so must the frame sizes. A malformed packet goes no further (the server
//!    refuses it; the decoders keep their state).
//! 2. **Concealment**: a lost packet (empty) or one holding a lost frame (size 0) is concealed by
//!    both. Concealment is no part of the bitstream RFC 6716 defines (each decoder conceals as
//!    it chooses), and opus-rs's differs from libopus's: only the sample counts must agree, and
//!    both decoders start afresh after it so that the next packets are compared from equal state.
//! 3. **Decoding**: every other packet must be decoded by both (neither refuses, opus-rs does not
//!    panic), to the same number of samples, every sample within [`TOLERANCE`] of libopus's once
//!    both are clipped to full scale (what the server hands on).

use std::panic::{catch_unwind, AssertUnwindSafe};

use moshi_engine::audio::opus::opus_frame_sizes;
use opusic_sys as sys;

/// The server's decoding rate and its largest packet (120 ms).
pub const RATE: i32 = 24_000;
pub const MAX_SAMPLES: usize = 2880;

/// Largest |opus-rs − libopus| allowed on a decoded sample (full scale ±1). On the seed corpus
/// (every encoder mode, mono and stereo, 2.5 to 60 ms) the largest difference is 1.2e-7, a few
/// f32 ulps: opus-rs is the same float code as libopus; 1e-4 (−80 dB) leaves room for rounding
/// that accumulates in the decoders' filter states while still catching a wrong band, frame or
/// channel (differences of the order of the signal).
pub const TOLERANCE: f32 = 1e-4;

/// libopus's decoder, owned.
pub struct LibOpus {
    st: *mut sys::OpusDecoder,
}

impl LibOpus {
    pub fn new(channels: usize) -> Self {
        let mut err = 0;
        // SAFETY: plain constructor; the result is checked below.
        let st = unsafe { sys::opus_decoder_create(RATE, channels as i32, &mut err) };
        assert!(!st.is_null() && err == sys::OPUS_OK, "opus_decoder_create({RATE}, {channels}): {err}");
        Self { st }
    }

    /// Decodes `packet` (empty: a lost packet, concealed) into `pcm`; Ok(samples per channel).
    pub fn decode(&mut self, packet: &[u8], pcm: &mut [f32], channels: usize) -> Result<usize, i32> {
        let frame = (pcm.len() / channels) as i32;
        let data = if packet.is_empty() { std::ptr::null() } else { packet.as_ptr() };
        // SAFETY: `st` is live; `data` holds `len` bytes (or is null for a lost packet); `pcm`
        // holds `frame × channels` floats.
        let n = unsafe { sys::opus_decode_float(self.st, data, packet.len() as i32, pcm.as_mut_ptr(), frame, 0) };
        if n < 0 {
            Err(n)
        } else {
            Ok(n as usize)
        }
    }
}

impl Drop for LibOpus {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create, destroyed once.
        unsafe { sys::opus_decoder_destroy(self.st) }
    }
}

/// libopus's frame sizes for a non-empty packet, or its error code.
pub fn libopus_frame_sizes(packet: &[u8]) -> Result<Vec<usize>, i32> {
    let mut toc = 0u8;
    let mut frames = [std::ptr::null::<u8>(); 48];
    let mut sizes = [0i16; 48];
    let mut offset = 0;
    // SAFETY: `packet` holds `len` bytes; the output arrays have the 48 entries libopus writes
    // at most (a packet holds ≤ 48 frames).
    let n = unsafe {
        sys::opus_packet_parse(packet.as_ptr(), packet.len() as i32, &mut toc, frames.as_mut_ptr(), sizes.as_mut_ptr(), &mut offset)
    };
    if n < 0 {
        Err(n)
    } else {
        Ok(sizes[..n as usize].iter().map(|&s| s as usize).collect())
    }
}

/// One packet's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Both sides refused the packet as malformed.
    Malformed,
    /// Concealed by both (a lost packet or frame), the same number of samples.
    Concealed { samples: usize },
    /// Decoded by both, the same number of samples; the largest difference.
    Decoded { samples: usize, max_diff: f32 },
    /// A divergence: which rule of the module docs, and how.
    Diverged(Divergence, String),
}

/// The kinds of divergence. The `opus_diff` target aborts on all but [`Divergence::Value`]
/// and [`Divergence::Panic`], which it notes (by mode and size) and goes on: a decoded sample
/// off libopus's is a quality question, a contained opus-rs panic the server survives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Divergence {
    /// Our structure verdict or frame sizes differ from libopus's.
    Structure,
    /// Different sample counts.
    Count,
    /// A valid packet refused by one side or both.
    Refusal,
    /// opus-rs panicked on a valid packet (contained by `catch_unwind`, as in the server).
    Panic,
    /// A decoded sample further than [`TOLERANCE`] from libopus's (by `diff` at most).
    Value { diff: f32 },
    /// opus-rs decoded a non-finite sample.
    NonFinite,
}

/// Both decoders on one stream.
pub struct Pair {
    channels: usize,
    ours: opus_rs::OpusDecoder,
    reference: LibOpus,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Pair {
    pub fn new(channels: usize) -> Self {
        Self {
            channels,
            ours: opus_rs::OpusDecoder::new(RATE, channels).expect("24 kHz mono/stereo"),
            reference: LibOpus::new(channels),
            a: vec![0.0; MAX_SAMPLES * channels],
            b: vec![0.0; MAX_SAMPLES * channels],
        }
    }

    pub fn decode(&mut self, packet: &[u8]) -> Outcome {
        let mut concealed = packet.is_empty();
        if !packet.is_empty() {
            match (opus_frame_sizes(packet), libopus_frame_sizes(packet)) {
                (Err(_), Err(_)) => return Outcome::Malformed,
                (Ok(a), Ok(b)) if a == b => concealed = a.contains(&0),
                (a, b) => return Outcome::Diverged(Divergence::Structure, format!("ours {a:?}, libopus {b:?}")),
            }
        }
        let ours = {
            let (dec, out) = (&mut self.ours, &mut self.a);
            match catch_unwind(AssertUnwindSafe(|| dec.decode(packet, MAX_SAMPLES, out))) {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("panicked".to_string()),
            }
        };
        let reference = self.reference.decode(packet, &mut self.b, self.channels);
        let outcome = match (ours, reference) {
            (Ok(n), Ok(m)) if n != m => Outcome::Diverged(Divergence::Count, format!("opus-rs {n} samples, libopus {m}")),
            (Ok(n), Ok(_)) => {
                let c = self.channels;
                // Compared at full scale, as the server hands audio on (`OpusPacketDecoder` clips
                // to [-1, 1], as libopus's 16-bit output does): on hostile packets libopus's float
                // output reaches 8e6 where opus-rs's stays within ±1 (`opus_diff-unclamped/`).
                let full = |x: f32| x.clamp(-1.0, 1.0);
                let diff = self.a[..n * c].iter().zip(&self.b[..n * c]).map(|(x, y)| (full(*x) - full(*y)).abs()).fold(0f32, f32::max);
                if !self.a[..n * c].iter().all(|x| x.is_finite()) {
                    Outcome::Diverged(Divergence::NonFinite, format!("{n} samples"))
                } else if concealed {
                    Outcome::Concealed { samples: n }
                } else if diff > TOLERANCE {
                    let peak = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let (pa, pb) = (peak(&self.a[..n * c]), peak(&self.b[..n * c]));
                    Outcome::Diverged(Divergence::Value { diff }, format!("{n} samples, peaks opus-rs {pa:e} libopus {pb:e}, max |diff| at full scale {diff:e}"))
                } else {
                    Outcome::Decoded { samples: n, max_diff: diff }
                }
            }
            (Err(e), Ok(_)) if e == "panicked" => Outcome::Diverged(Divergence::Panic, "opus-rs panicked, libopus decoded".into()),
            (Err(e), Ok(m)) => Outcome::Diverged(Divergence::Refusal, format!("opus-rs refused a valid packet ({e}), libopus decoded {m} samples")),
            (Ok(n), Err(code)) => Outcome::Diverged(Divergence::Refusal, format!("libopus refused a valid packet ({code}), opus-rs decoded {n}")),
            (Err(e), Err(code)) => Outcome::Diverged(Divergence::Refusal, format!("both refused a valid packet: opus-rs {e}, libopus {code}")),
        };
        // After a concealment or a divergence, both start afresh: the next packet is compared
        // from equal states.
        if concealed || matches!(outcome, Outcome::Diverged(..)) {
            *self = Self::new(self.channels);
        }
        outcome
    }
}

/// The mode of a packet from its TOC (RFC 6716 §3.1), for notes.
pub fn mode(packet: &[u8]) -> &'static str {
    match packet.first().map(|t| t >> 3) {
        None => "lost",
        Some(0..=11) => "silk",
        Some(12..=15) => "hybrid",
        Some(_) => "celt",
    }
}

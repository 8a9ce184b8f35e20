//! Differential decoding: opus-rs (the pure-Rust decoder the server runs on client audio)
//! against libopus (the reference implementation, through `opusic-sys`), packet by packet on the
//! same stream, at the server's 24 kHz. Used by the `opus_diff` fuzz target and by
//! `examples/opus_diff_seeds.rs` (which measured the tolerance below on the seed corpus).
//!
//! What counts as a divergence, for one packet (both decoders carry their state from the packets
//! before):
//! - one decoder accepts the packet and the other refuses it (libopus returns an error code;
//!   opus-rs an `Err` or a contained panic);
//! - both accept it but return a different number of samples;
//! - both accept it and some sample differs by more than [`TOLERANCE`].
//!
//! After a refusal by both, both decoders are replaced by fresh ones (what the server does after
//! a refused packet), so that the next packets start from the same state.

use std::panic::{catch_unwind, AssertUnwindSafe};

use opusic_sys as sys;

/// The server's decoding rate and its largest packet (120 ms).
pub const RATE: i32 = 24_000;
pub const MAX_SAMPLES: usize = 2880;

/// Largest |opus-rs − libopus| allowed on a sample in [−1, 1] (see the module docs and
/// docs/fuzzing.md for where it comes from).
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
        assert!(!st.is_null() && err == sys::OPUS_OK as i32, "opus_decoder_create({RATE}, {channels}): {err}");
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

/// One packet's outcome on both sides.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Both decoded the same number of samples; the largest difference between them.
    Same { samples: usize, max_diff: f32 },
    /// Both refused the packet.
    BothRefused,
    /// A divergence (module docs), described.
    Diverged(String),
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
        let ours = {
            let (dec, out) = (&mut self.ours, &mut self.a);
            match catch_unwind(AssertUnwindSafe(|| dec.decode(packet, MAX_SAMPLES, out))) {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("panicked".to_string()),
            }
        };
        let reference = self.reference.decode(packet, &mut self.b, self.channels);
        match (ours, reference) {
            (Ok(n), Ok(m)) if n == m => {
                let c = self.channels;
                let max_diff = self.a[..n * c].iter().zip(&self.b[..n * c]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                if max_diff > TOLERANCE || max_diff.is_nan() {
                    Outcome::Diverged(format!("{n} samples, max |diff| {max_diff:e}"))
                } else {
                    Outcome::Same { samples: n, max_diff }
                }
            }
            (Ok(n), Ok(m)) => Outcome::Diverged(format!("opus-rs {n} samples, libopus {m}")),
            (Err(e), Err(_)) => {
                let _ = e;
                *self = Self::new(self.channels);
                Outcome::BothRefused
            }
            (Ok(n), Err(code)) => Outcome::Diverged(format!("opus-rs decoded {n} samples, libopus refused ({code})")),
            (Err(e), Ok(m)) => Outcome::Diverged(format!("opus-rs refused ({e}), libopus decoded {m} samples")),
        }
    }
}

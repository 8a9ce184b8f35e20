//! The Opus packet decoder under [`super::opus::OpusPacketDecoder`]: libopus 1.6.1 (the reference
//! implementation, built from source by `opusic-sys`; feature `libopus`, which needs CMake to
//! build) or opus-rs (pure Rust, the default build: nothing to install). Differential fuzzing
//! and libopus-encoded streams showed opus-rs decoding some configurations differently from
//! libopus, by up to full scale (docs/fuzzing.md, 2026-12-04): every build we ship (the
//! container images, CI) enables `libopus`, and `serve` warns when built without it.

/// Which decoder this build runs, for logs and `/api/info`.
pub fn decoder_name() -> &'static str {
    if cfg!(feature = "libopus") {
        "libopus"
    } else {
        "opus-rs"
    }
}

#[cfg(feature = "libopus")]
mod imp {
    use opusic_sys as sys;

    /// libopus's decoder, owned.
    pub struct Decoder {
        st: std::ptr::NonNull<sys::OpusDecoder>,
    }

    // SAFETY: the decoder state is plain memory owned by this value; libopus keeps no thread
    // affinity or shared state for it, and `&mut self` serialises every use.
    unsafe impl Send for Decoder {}

    impl Decoder {
        pub fn new(rate: u32, channels: usize) -> Result<Self, String> {
            let mut err = 0;
            // SAFETY: a plain constructor; the result is checked.
            let st = unsafe { sys::opus_decoder_create(rate as i32, channels as i32, &mut err) };
            match std::ptr::NonNull::new(st) {
                Some(st) if err == sys::OPUS_OK => Ok(Self { st }),
                _ => Err(format!("libopus: no decoder for {rate} Hz, {channels} channel(s) (error {err})")),
            }
        }

        /// Decodes `packet` (empty: lost, concealed) into `pcm` (interleaved, `max` samples per
        /// channel of room); the samples per channel.
        pub fn decode(&mut self, packet: &[u8], max: usize, pcm: &mut [f32], channels: usize) -> Result<usize, String> {
            assert!(pcm.len() >= max * channels, "room for {max} samples × {channels}");
            let data = if packet.is_empty() { std::ptr::null() } else { packet.as_ptr() };
            // SAFETY: `st` is live; `data` holds `len` bytes (or is null: a lost packet); `pcm`
            // holds `max × channels` floats (asserted).
            let n = unsafe { sys::opus_decode_float(self.st.as_ptr(), data, packet.len() as i32, pcm.as_mut_ptr(), max as i32, 0) };
            if n < 0 {
                // SAFETY: opus_strerror returns a static NUL-terminated string for any code.
                let msg = unsafe { std::ffi::CStr::from_ptr(sys::opus_strerror(n)) };
                return Err(format!("libopus: {}", msg.to_string_lossy()));
            }
            Ok(n as usize)
        }
    }

    impl Drop for Decoder {
        fn drop(&mut self) {
            // SAFETY: created by opus_decoder_create, destroyed once.
            unsafe { sys::opus_decoder_destroy(self.st.as_ptr()) }
        }
    }
}

#[cfg(not(feature = "libopus"))]
mod imp {
    /// opus-rs's decoder.
    pub struct Decoder(opus_rs::OpusDecoder);

    impl Decoder {
        pub fn new(rate: u32, channels: usize) -> Result<Self, String> {
            opus_rs::OpusDecoder::new(rate as i32, channels).map(Self).map_err(|e| format!("opus-rs: {e}"))
        }

        pub fn decode(&mut self, packet: &[u8], max: usize, pcm: &mut [f32], _channels: usize) -> Result<usize, String> {
            self.0.decode(packet, max, pcm).map_err(|e| e.to_string())
        }
    }
}

pub use imp::Decoder;

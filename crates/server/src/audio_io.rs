//! The audio of one connection: Ogg Opus in, 24 kHz PCM for the model; the model's PCM out, Ogg
//! Opus messages for the client (docs/protocol.md).
//!
//! Opus is `opus-rs`, a pure-Rust port of libopus 1.6: no system library, so `cargo build` works
//! on a fresh machine. Interoperability with libopus is exercised by the browser test (Chromium's
//! WebCodecs encoder and decoder are libopus). Reading is the engine's (`moshi_engine::audio`):
//! its Ogg packet reader, its `OpusHead` checks and its packet decoder, the ones `moshi-rs run`
//! uses on Ogg Opus files, so that the same packets give the same samples in both (a test below
//! checks it). Decoding never panics on hostile input: a packet the decoder rejects, or that
//! makes it panic, is counted and skipped. What is the server's own: the bounds per message and
//! on the buffer, and the writing side.
//!
//! Unlike a file player, the input side keeps the stream's first samples (it does not remove the
//! OpusHead pre-skip): live audio has no start to align, and the model hears the stream as it
//! comes.

use std::collections::VecDeque;

use moshi_engine::audio::opus::{packet_samples_48k, OpusHead, OpusHeadError, OpusPacketDecoder};
use opus_rs::{Application, OpusEncoder};

use crate::ogg_stream::{OggOpusWriter, OggPacketStream, OggStreamError};


/// The model's sample rate; Opus runs at it in both directions.
pub const SAMPLE_RATE: usize = 24_000;
/// Samples per outgoing Opus packet (40 ms, as Kyutai's servers send).
pub const OUT_PACKET: usize = 960;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AudioInError {
    #[error(transparent)]
    Ogg(#[from] OggStreamError),
    #[error("the audio stream is not Ogg Opus: its first packet starts with {0:?}, not \"OpusHead\"")]
    NotOpus(String),
    #[error("unsupported OpusHead: {0}")]
    BadHead(String),
    #[error("{0} Opus packets in a row could not be decoded")]
    Undecodable(u64),
    #[error("more than {0} bytes of audio without an Ogg page (is it Ogg Opus?)")]
    NoPage(usize),
}

impl From<OpusHeadError> for AudioInError {
    fn from(e: OpusHeadError) -> Self {
        match e {
            OpusHeadError::NotOpus(shown) => AudioInError::NotOpus(shown),
            e => AudioInError::BadHead(e.to_string()),
        }
    }
}

/// Incoming audio of one connection: Ogg pages (split across messages as they come) → Opus
/// packets → 24 kHz mono samples (stereo is mixed down), buffered up to a bound (the oldest
/// samples are dropped past it).
pub struct OpusInput {
    ogg: OggPacketStream,
    /// Made from the OpusHead (the first packet).
    decoder: Option<OpusPacketDecoder>,
    packets: u64,
    pcm: VecDeque<f32>,
    max_pcm: usize,
    bad_in_a_row: u64,
    /// Packets skipped because they did not decode.
    pub bad_packets: u64,
    /// Samples dropped because the buffer was full (the client sends faster than real time).
    pub dropped_samples: u64,
    /// Samples (their packets' durations) skipped undecoded: the older part of a message holding
    /// more audio than the buffer, which would be dropped anyway.
    pub skipped_samples: u64,
    /// Bytes without a page tolerated at most since the last page.
    max_garbage: usize,
    /// The Ogg reader's skipped bytes and pages when the last page was accepted.
    garbage_mark: (u64, u64),
}

/// Samples at 24 kHz an audio packet is taken to hold when choosing what to decode: its TOC's
/// duration; for an empty packet (concealment) the longest a packet can be; 0 for a packet whose
/// TOC is invalid (it is counted as undecodable without being decoded).
fn packet_samples(packet: &[u8]) -> usize {
    match packet_samples_48k(packet) {
        Some(n) => n as usize / 2,
        None if packet.is_empty() => 2880,
        None => 0,
    }
}

/// After this many undecodable packets in a row the stream is declared broken.
const MAX_BAD_IN_A_ROW: u64 = 50;

impl OpusInput {
    /// `max_pcm`: samples buffered at most; `max_ogg`: bytes of an incomplete page held at most,
    /// and bytes without any page tolerated in a row.
    pub fn new(max_pcm: usize, max_ogg: usize) -> Self {
        Self {
            ogg: OggPacketStream::new(max_ogg),
            decoder: None,
            packets: 0,
            pcm: VecDeque::new(),
            max_pcm,
            bad_in_a_row: 0,
            bad_packets: 0,
            dropped_samples: 0,
            skipped_samples: 0,
            max_garbage: max_ogg,
            garbage_mark: (0, 0),
        }
    }

    /// The payload of one audio message; returns the number of samples it added (decoded).
    ///
    /// A message may hold more audio than the buffer (a whole file on one long page, or thousands
    /// of tiny packets): as with input sent faster than real time, the newest `max_pcm` samples are
    /// kept. Only the packets that can end up in the buffer are decoded (chosen from the end by
    /// their TOC durations); the older ones are skipped undecoded and counted in
    /// `skipped_samples`, so that the time a message costs is bounded by the buffer, not by its
    /// packet count.
    pub fn push(&mut self, bytes: &[u8]) -> Result<usize, AudioInError> {
        let packets = self.ogg.push(bytes)?;
        // Bytes that never form a page (not Ogg at all, or corrupt pages) are bounded too.
        let (skipped, pages) = (self.ogg.skipped_bytes, self.ogg.pages);
        if pages != self.garbage_mark.1 {
            self.garbage_mark = (skipped, pages);
        } else if skipped - self.garbage_mark.0 > self.max_garbage as u64 {
            return Err(AudioInError::NoPage(self.max_garbage));
        }
        let mut audio = Vec::with_capacity(packets.len());
        for packet in packets {
            self.packets += 1;
            if self.packets == 1 {
                self.decoder = Some(OpusPacketDecoder::new(&OpusHead::parse(&packet)?));
                continue;
            }
            if packet.starts_with(b"OpusTags") || packet.starts_with(b"OpusHead") {
                continue;
            }
            audio.push(packet);
        }
        // From the end: the packets whose audio fits in the buffer (and one more, partly kept).
        let mut first = audio.len();
        let mut held = 0;
        while first > 0 && held < self.max_pcm {
            first -= 1;
            held += packet_samples(&audio[first]);
        }
        self.skipped_samples += audio[..first].iter().map(|p| packet_samples(p) as u64).sum::<u64>();
        let mut added = 0;
        for packet in &audio[first..] {
            // None only after the OpusHead was refused (an error already returned).
            let Some(decoder) = self.decoder.as_mut() else { continue };
            let decoded = if !packet.is_empty() && packet_samples_48k(packet).is_none() {
                Err(()) // not a valid Opus packet (RFC 6716 §3.4): no decoder would take it
            } else {
                decoder.decode_mono(packet).map_err(|_| ())
            };
            match decoded {
                Ok(mono) => {
                    self.bad_in_a_row = 0;
                    added += mono.len();
                    self.pcm.extend(mono.iter().copied());
                    self.trim();
                }
                Err(_) => {
                    // The decoder has started afresh (a panic may leave it inconsistent).
                    self.bad_packets += 1;
                    self.bad_in_a_row += 1;
                    if self.bad_in_a_row >= MAX_BAD_IN_A_ROW {
                        return Err(AudioInError::Undecodable(self.bad_in_a_row));
                    }
                }
            }
        }
        self.trim();
        Ok(added)
    }

    /// Keep at most `max_pcm` samples (the oldest go).
    fn trim(&mut self) {
        if self.pcm.len() > self.max_pcm {
            let extra = self.pcm.len() - self.max_pcm;
            self.pcm.drain(..extra);
            self.dropped_samples += extra as u64;
        }
    }

    /// Samples waiting.
    pub fn available(&self) -> usize {
        self.pcm.len()
    }

    /// Take `n` samples if that many are waiting.
    pub fn take(&mut self, n: usize) -> Option<Vec<f32>> {
        (self.pcm.len() >= n).then(|| self.pcm.drain(..n).collect())
    }

    /// Pages skipped as corrupt by the Ogg reader.
    pub fn corrupt_pages(&self) -> u64 {
        self.ogg.corrupt_pages
    }
}

/// Outgoing audio of one connection: the model's 24 kHz frames → Ogg Opus messages.
pub struct OpusOutput {
    encoder: OpusEncoder,
    writer: OggOpusWriter,
    packet: Vec<u8>,
}

impl OpusOutput {
    pub fn new(serial: u32) -> Self {
        let mut encoder = OpusEncoder::new(SAMPLE_RATE as i32, 1, Application::Voip).expect("24 kHz mono encoder");
        encoder.bitrate_bps = 32_000;
        Self { encoder, writer: OggOpusWriter::new(serial), packet: vec![0u8; 4000] }
    }

    /// One message of audio for `pcm` (a whole number of 40 ms packets; 80 ms per model frame),
    /// one Opus packet per Ogg page; the first message also carries the stream headers.
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u8>, String> {
        if pcm.is_empty() || pcm.len() % OUT_PACKET != 0 {
            return Err(format!("{} samples is not a whole number of {OUT_PACKET}-sample packets", pcm.len()));
        }
        let mut msg = Vec::new();
        for chunk in pcm.chunks(OUT_PACKET) {
            let clamped: Vec<f32> = chunk.iter().map(|x| if x.is_finite() { x.clamp(-1.0, 1.0) } else { 0.0 }).collect();
            let n = self.encoder.encode(&clamped, OUT_PACKET, &mut self.packet).map_err(|e| format!("Opus encoder: {e}"))?;
            let page = self.writer.audio_message(&self.packet[..n], OUT_PACKET as u64).map_err(|e| format!("Ogg writer: {e}"))?;
            msg.extend(page);
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize) -> Vec<f32> {
        (0..n).map(|i| 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / SAMPLE_RATE as f32).sin()).collect()
    }

    #[test]
    fn what_we_send_we_can_read_back() {
        let mut out = OpusOutput::new(7);
        let mut input = OpusInput::new(SAMPLE_RATE * 10, 1 << 16);
        let signal = tone(1920 * 20);
        let mut bytes = Vec::new();
        for frame in signal.chunks(1920) {
            bytes.extend(out.encode(frame).unwrap());
        }
        // Any split of the byte stream into messages gives the same samples.
        for piece in bytes.chunks(77) {
            input.push(piece).unwrap();
        }
        assert_eq!(input.available(), signal.len());
        let back = input.take(signal.len()).unwrap();
        // Opus is lossy and delays the signal a little: compare energy past the start.
        let e = |v: &[f32]| v[4800..].iter().map(|x| x * x).sum::<f32>() / (v.len() - 4800) as f32;
        let (ei, eo) = (e(&signal), e(&back));
        assert!((eo / ei - 1.0).abs() < 0.2, "energy in {ei}, out {eo}");
        assert_eq!(input.bad_packets, 0);
    }

    /// `moshi-rs run` on a file and `serve` on a connection decode the same packets to the same
    /// samples: the file player removes the pre-skip (80 ms here), the connection keeps it.
    #[test]
    fn a_file_and_a_connection_give_the_same_samples() {
        let path = std::env::temp_dir().join(format!("moshi-server-same-samples-{}.opus", std::process::id()));
        // Mono, as the server writes it.
        let mut out = OpusOutput::new(7);
        let mut bytes = Vec::new();
        for frame in tone(1920 * 12).chunks(1920) {
            bytes.extend(out.encode(frame).unwrap());
        }
        // Stereo, as a client may send it (one channel a different tone).
        let mut enc = OpusEncoder::new(SAMPLE_RATE as i32, 2, Application::Audio).unwrap();
        let mut w = ogg::PacketWriter::new(Vec::new());
        let mut head = crate::ogg_stream::opus_head(3840, 48_000);
        head[9] = 2;
        w.write_packet(head, 3, ogg::PacketWriteEndInfo::EndPage, 0).unwrap();
        w.write_packet(crate::ogg_stream::opus_tags("test"), 3, ogg::PacketWriteEndInfo::EndPage, 0).unwrap();
        let right: Vec<f32> = (0..960 * 30).map(|i| 0.2 * (i as f32 * 0.05).sin()).collect();
        let inter: Vec<f32> = tone(960 * 30).iter().zip(&right).flat_map(|(&l, &r)| [l, r]).collect();
        let mut packet = vec![0u8; 4000];
        for (i, chunk) in inter.chunks(2 * 960).enumerate() {
            let n = enc.encode(chunk, 960, &mut packet).unwrap();
            let end = if i == 29 { ogg::PacketWriteEndInfo::EndStream } else { ogg::PacketWriteEndInfo::NormalPacket };
            w.write_packet(packet[..n].to_vec(), 3, end, 1920 * (i as u64 + 1)).unwrap();
        }
        for (bytes, channels) in [(bytes, 1), (w.into_inner(), 2)] {
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(moshi_engine::audio::decode_file(&path).unwrap().channels, channels);
            let file = moshi_engine::audio::load_mono_24k(&path).unwrap();
            let mut input = OpusInput::new(SAMPLE_RATE * 10, 1 << 16);
            for piece in bytes.chunks(333) {
                input.push(piece).unwrap();
            }
            let stream = input.take(input.available()).unwrap();
            assert_eq!(stream.len(), file.len() + 1920, "{channels} channel(s)");
            assert_eq!(&stream[1920..], &file[..], "{channels} channel(s)");
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_stream_that_is_not_opus_is_named() {
        let mut w = ogg::PacketWriter::new(Vec::new());
        w.write_packet(b"\x01vorbis\0\0\0\0".to_vec(), 1, ogg::PacketWriteEndInfo::EndPage, 0).unwrap();
        let mut input = OpusInput::new(1000, 1 << 16);
        let e = input.push(&w.into_inner()).unwrap_err();
        assert!(matches!(e, AudioInError::NotOpus(_)), "{e}");
        assert!(e.to_string().contains("vorbis"), "{e}");
    }

    #[test]
    fn garbage_packets_are_skipped_then_refused() {
        let mut w = ogg::PacketWriter::new(Vec::new());
        w.write_packet(crate::ogg_stream::opus_head(3840, 48_000), 1, ogg::PacketWriteEndInfo::EndPage, 0).unwrap();
        let mut r = 99u32;
        for i in 0..60u64 {
            let p: Vec<u8> = (0..40)
                .map(|_| {
                    r = r.wrapping_mul(1664525).wrapping_add(1013904223);
                    (r >> 24) as u8
                })
                .collect();
            // A TOC byte with an invalid frame count code 3 and zero frames: never decodable.
            let mut p = p;
            p[0] = 0x03;
            p[1] = 0x00;
            w.write_packet(p, 1, ogg::PacketWriteEndInfo::EndPage, i * 960).unwrap();
        }
        let mut input = OpusInput::new(SAMPLE_RATE, 1 << 16);
        let e = input.push(&w.into_inner()).unwrap_err();
        assert_eq!(e, AudioInError::Undecodable(MAX_BAD_IN_A_ROW));
    }

    #[test]
    fn tiny_packets_cannot_amplify_a_message() {
        // Empty packets decode as 120 ms of concealment each: 2000 of them in one message would
        // be 240 s of audio from a few kB. Only the last 2 s worth are decoded; the rest are
        // skipped and counted (issue 15, F7: before, the message closed the connection).
        let mut w = ogg::PacketWriter::new(Vec::new());
        w.write_packet(crate::ogg_stream::opus_head(3840, 48_000), 1, ogg::PacketWriteEndInfo::EndPage, 0).unwrap();
        let mut input = OpusInput::new(SAMPLE_RATE * 2, 1 << 16);
        input.push(&std::mem::take(w.inner_mut())).unwrap();
        for i in 0..2000u64 {
            let end = if i % 200 == 199 { ogg::PacketWriteEndInfo::EndPage } else { ogg::PacketWriteEndInfo::NormalPacket };
            w.write_packet(Vec::new(), 1, end, i).unwrap();
        }
        let t = std::time::Instant::now();
        let added = input.push(&w.into_inner()).unwrap();
        assert!(added <= SAMPLE_RATE * 2 + 2880, "decoded {added}");
        assert!(input.available() <= SAMPLE_RATE * 2);
        assert_eq!(input.skipped_samples, (2000 - (SAMPLE_RATE * 2).div_ceil(2880)) as u64 * 2880);
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    }

    /// Issue 15, F7: a valid page longer than the buffer (what sphn writes for a file: up to 255
    /// packets a page) is trimmed like input sent too fast: the newest audio is kept, decoded as
    /// the same samples as when it comes in small messages, and the rest is counted.
    #[test]
    fn a_long_page_is_trimmed_like_long_input() {
        let mut enc = OpusEncoder::new(SAMPLE_RATE as i32, 1, Application::Voip).unwrap();
        let mut w = ogg::PacketWriter::new(Vec::new());
        w.write_packet(crate::ogg_stream::opus_head(3840, 48_000), 1, ogg::PacketWriteEndInfo::EndPage, 0).unwrap();
        w.write_packet(crate::ogg_stream::opus_tags("sphn"), 1, ogg::PacketWriteEndInfo::EndPage, 0).unwrap();
        let head = std::mem::take(w.inner_mut());
        // 5 s in 250 packets of 20 ms, all on one page.
        let mut packet = vec![0u8; 4000];
        let signal = tone(480 * 250);
        for (i, chunk) in signal.chunks(480).enumerate() {
            let n = enc.encode(chunk, 480, &mut packet).unwrap();
            let end = if i == 249 { ogg::PacketWriteEndInfo::EndPage } else { ogg::PacketWriteEndInfo::NormalPacket };
            w.write_packet(packet[..n].to_vec(), 1, end, 960 * (i as u64 + 1)).unwrap();
        }
        let page = w.into_inner();
        let mut input = OpusInput::new(SAMPLE_RATE * 2, 1 << 17);
        input.push(&head).unwrap();
        let added = input.push(&page).unwrap();
        assert_eq!(added, SAMPLE_RATE * 2, "exactly the packets that fit were decoded");
        assert_eq!(input.available(), SAMPLE_RATE * 2);
        assert_eq!(input.skipped_samples, 480 * 150);
        assert_eq!(input.bad_packets, 0);
    }

    /// Issue 15, F6: bytes that never form an Ogg page were dropped for ever (a 3.4 GB flood kept
    /// its slot); past `max_ogg` of them in a row the stream is refused by name.
    #[test]
    fn bytes_without_a_page_are_bounded() {
        let mut input = OpusInput::new(SAMPLE_RATE, 1 << 17);
        let zeros = vec![0u8; 1 << 16];
        assert!(input.push(&zeros).is_ok());
        assert!(input.push(&zeros).is_ok(), "128 KiB less 3 bytes: still tolerated");
        assert_eq!(input.push(&zeros), Err(AudioInError::NoPage(1 << 17)));
        // Garbage between valid pages is counted from the last page.
        let mut out = OpusOutput::new(3);
        let mut input = OpusInput::new(SAMPLE_RATE * 100, 1 << 17);
        for frame in tone(1920 * 8).chunks(1920) {
            input.push(&out.encode(frame).unwrap()).unwrap();
            input.push(&vec![0x55; 100_000]).unwrap();
        }
        assert_eq!(input.available(), 1920 * 8);
    }

    #[test]
    fn a_packet_continued_forever_and_foreign_streams_are_bounded() {
        // Pages whose lacing values are all 255: one packet that never ends.
        let mut s = crate::ogg_stream::OggPacketStream::new(1 << 16);
        let mut w = ogg::PacketWriter::new(Vec::new());
        w.write_packet(crate::ogg_stream::opus_head(3840, 48_000), 1, ogg::PacketWriteEndInfo::EndPage, 0).unwrap();
        s.push(&w.into_inner()).unwrap();
        let mut result = Ok(vec![]);
        for seq in 1..200u32 {
            result = s.push(&raw_page(1, seq, &[255; 255], if seq == 1 { 0 } else { 1 }));
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result.unwrap_err(), OggStreamError::PacketTooLong { max: 1 << 16 });
        // Pages of other serials are skipped, not kept.
        let mut s = crate::ogg_stream::OggPacketStream::new(1 << 16);
        s.push(&raw_page(1, 0, &[19], 2)).unwrap();
        for serial in 2..100u32 {
            s.push(&raw_page(serial, 0, &[255; 255], 2)).unwrap();
        }
        assert_eq!(s.foreign_pages, 98);
    }

    /// One Ogg page with the given lacing values (body of zeros), CRC computed.
    fn raw_page(serial: u32, seq: u32, lacing: &[u8], flags: u8) -> Vec<u8> {
        let body: usize = lacing.iter().map(|&l| l as usize).sum();
        let mut p = b"OggS".to_vec();
        p.push(0);
        p.push(flags);
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend_from_slice(&serial.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.push(lacing.len() as u8);
        p.extend_from_slice(lacing);
        p.extend(std::iter::repeat_n(0u8, body));
        let crc = ogg_crc(&p);
        p[22..26].copy_from_slice(&crc.to_le_bytes());
        p
    }

    fn ogg_crc(data: &[u8]) -> u32 {
        let mut crc = 0u32;
        for &b in data {
            crc ^= (b as u32) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04c1_1db7 } else { crc << 1 };
            }
        }
        crc
    }

    #[test]
    fn the_input_buffer_is_bounded() {
        let mut out = OpusOutput::new(7);
        let mut input = OpusInput::new(1920 * 3, 1 << 16);
        for frame in tone(1920 * 10).chunks(1920) {
            input.push(&out.encode(frame).unwrap()).unwrap();
        }
        assert_eq!(input.available(), 1920 * 3);
        assert_eq!(input.dropped_samples, 1920 * 7);
    }
}

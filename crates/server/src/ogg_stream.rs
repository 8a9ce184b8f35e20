//! Ogg framing of the Opus audio in Kyutai's protocol (docs/protocol.md), on the `ogg` crate:
//! - [`OggPacketStream`] reassembles packets from the bytes of all audio messages of a connection
//!   (pages may be split or merged across messages), bounded in memory, resynchronising on the
//!   next `OggS` after a corrupt page. It is the engine's reader
//!   (`moshi_engine::audio::ogg_stream`), the one that also reads Ogg Opus files;
//! - [`OggOpusWriter`] writes what Kyutai's clients decode: the OpusHead packet alone on the first
//!   (BOS) page, OpusTags on the second, then one Opus packet per page with granule positions in
//!   48 kHz units.

use moshi_engine::audio::opus::OpusHead;
use ogg::{PacketWriteEndInfo, PacketWriter};

pub use moshi_engine::audio::ogg_stream::{OggPacketStream, OggStreamError};

#[cfg(test)]
const CAPTURE: &[u8; 4] = b"OggS";

/// The OpusHead packet (RFC 7845): version 1, mono, `pre_skip` samples at 48 kHz, input rate,
/// gain 0, channel mapping family 0.
pub fn opus_head(pre_skip: u16, input_rate: u32) -> Vec<u8> {
    OpusHead { version: 1, channels: 1, pre_skip, input_rate, output_gain: 0, mapping_family: 0 }.to_bytes()
}

/// The OpusTags packet with `vendor` and no comments.
pub fn opus_tags(vendor: &str) -> Vec<u8> {
    let mut t = b"OpusTags".to_vec();
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor.as_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

/// Writes one connection's outgoing Ogg Opus stream, message by message.
pub struct OggOpusWriter {
    w: PacketWriter<'static, Vec<u8>>,
    serial: u32,
    granule: u64,
    headers: bool,
}

impl OggOpusWriter {
    pub fn new(serial: u32) -> Self {
        Self { w: PacketWriter::new(Vec::new()), serial, granule: 0, headers: false }
    }

    /// The bytes of the next audio message: one Opus packet of `samples_24k` samples on its own
    /// page (the first message also carries the OpusHead and OpusTags pages).
    pub fn audio_message(&mut self, packet: &[u8], samples_24k: u64) -> std::io::Result<Vec<u8>> {
        if !self.headers {
            self.w.write_packet(opus_head(3840, 24_000), self.serial, PacketWriteEndInfo::EndPage, 0)?;
            self.w.write_packet(opus_tags("moshi-rs"), self.serial, PacketWriteEndInfo::EndPage, 0)?;
            self.headers = true;
        }
        self.granule += 2 * samples_24k;
        self.w.write_packet(packet.to_vec(), self.serial, PacketWriteEndInfo::EndPage, self.granule)?;
        Ok(std::mem::take(self.w.inner_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page `i` of a byte stream: (header type flags, granule, serial, sequence, packet sizes).
    fn pages(bytes: &[u8]) -> Vec<(u8, u64, u32, u32, Vec<usize>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            assert_eq!(&bytes[at..at + 4], CAPTURE);
            let flags = bytes[at + 5];
            let granule = u64::from_le_bytes(bytes[at + 6..at + 14].try_into().unwrap());
            let serial = u32::from_le_bytes(bytes[at + 14..at + 18].try_into().unwrap());
            let seq = u32::from_le_bytes(bytes[at + 18..at + 22].try_into().unwrap());
            let n = bytes[at + 26] as usize;
            let lacing = &bytes[at + 27..at + 27 + n];
            let body: usize = lacing.iter().map(|&l| l as usize).sum();
            out.push((flags, granule, serial, seq, lacing.iter().map(|&l| l as usize).collect()));
            at += 27 + n + body;
        }
        out
    }

    #[test]
    fn writer_lays_out_pages_as_kyutai_clients_expect() {
        let mut w = OggOpusWriter::new(42);
        let first = w.audio_message(&[7u8; 100], 960).unwrap();
        let p = pages(&first);
        assert_eq!(p.len(), 3, "head, tags, audio in the first message");
        assert_eq!(p[0], (0x02, 0, 42, 0, vec![19]), "BOS page holding only the 19-byte OpusHead");
        assert_eq!((p[1].0, p[1].3), (0, 1), "tags on sequence 1");
        assert_eq!((p[2].1, p[2].3, p[2].4.clone()), (1920, 2, vec![100]), "audio from sequence 2, 48 kHz granule");
        assert_eq!(&first[28..36], b"OpusHead");
        let second = pages(&w.audio_message(&[1u8; 300], 960).unwrap());
        assert_eq!(second.len(), 1);
        assert_eq!((second[0].1, second[0].3, second[0].4.clone()), (3840, 3, vec![255, 45]));
    }

    /// The reader gets back exactly the packets written, whatever the message boundaries.
    #[test]
    fn reader_reassembles_packets_across_any_split() {
        let mut w = OggOpusWriter::new(7);
        let mut stream = Vec::new();
        let written: Vec<Vec<u8>> = (0..20).map(|i| (0..(i * 37 % 400 + 1)).map(|j| (i * 31 + j) as u8).collect()).collect();
        for p in &written {
            stream.extend(w.audio_message(p, 960).unwrap());
        }
        let mut expected = vec![opus_head(3840, 24_000), opus_tags("moshi-rs")];
        expected.extend(written);
        for chunk in [1usize, 7, 27, 28, 100, 1000, stream.len()] {
            let mut r = OggPacketStream::new(1 << 20);
            let mut got = Vec::new();
            for part in stream.chunks(chunk) {
                got.extend(r.push(part).unwrap());
            }
            assert_eq!(got, expected, "split every {chunk} bytes");
            assert_eq!(r.corrupt_pages, 0);
        }
    }

    #[test]
    fn corrupt_pages_are_skipped_and_garbage_is_bounded() {
        let mut w = OggOpusWriter::new(7);
        let mut good = w.audio_message(&[5u8; 50], 960).unwrap();
        let tail = w.audio_message(&[6u8; 60], 960).unwrap();
        let n = good.len();
        good[n - 3] ^= 0xff; // corrupt the audio page's body: its checksum fails
        let mut r = OggPacketStream::new(4096);
        let mut got = r.push(&good).unwrap();
        got.extend(r.push(&tail).unwrap());
        assert!(r.corrupt_pages >= 1);
        assert_eq!(got.last().unwrap(), &vec![6u8; 60], "the stream resynchronises on the next page");
        // Bytes that never form a page do not grow the buffer.
        let mut r = OggPacketStream::new(4096);
        for _ in 0..100 {
            assert!(r.push(&[0x55; 1000]).unwrap().is_empty());
        }
        // A page header announcing more than the limit is refused.
        let mut big = OggOpusWriter::new(1);
        let msg = big.audio_message(&vec![9u8; 60_000], 960).unwrap();
        let mut r = OggPacketStream::new(4096);
        assert_eq!(r.push(&msg[..8000]), Err(OggStreamError::Overflow { max: 4096 }));
    }
}

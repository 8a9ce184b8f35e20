//! Ogg framing of the Opus audio in Kyutai's protocol (docs/protocol.md), on the `ogg` crate:
//! - [`OggPacketStream`] reassembles packets from the bytes of all audio messages of a connection
//!   (pages may be split or merged across messages), bounded in memory, resynchronising on the
//!   next `OggS` after a corrupt page;
//! - [`OggOpusWriter`] writes what Kyutai's clients decode: the OpusHead packet alone on the first
//!   (BOS) page, OpusTags on the second, then one Opus packet per page with granule positions in
//!   48 kHz units.

use ogg::reading::{BasePacketReader, PageParser};
use ogg::{PacketWriteEndInfo, PacketWriter};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OggStreamError {
    #[error("more than {max} bytes of audio buffered without a complete Ogg page")]
    Overflow { max: usize },
    #[error("more than {max} bytes of Ogg pages without a complete packet")]
    PacketTooLong { max: usize },
}

/// Incremental Ogg reader for one connection.
pub struct OggPacketStream {
    buf: Vec<u8>,
    reader: BasePacketReader,
    max_buffer: usize,
    /// Pages rejected (bad header or checksum) and skipped.
    pub corrupt_pages: u64,
    /// The stream serial of the first page: a connection carries one logical stream; pages of
    /// other serials are skipped (the reader would otherwise keep state for each).
    serial: Option<u32>,
    /// Page bytes accepted since the last completed packet (a packet continued page after page
    /// would otherwise grow without bound inside the reader).
    since_packet: usize,
    /// Pages of other streams skipped.
    pub foreign_pages: u64,
}

const CAPTURE: &[u8; 4] = b"OggS";

impl OggPacketStream {
    /// `max_buffer`: the most bytes held while waiting for a page to complete (a page is at most
    /// 27 + 255 + 255·255 bytes).
    pub fn new(max_buffer: usize) -> Self {
        Self {
            buf: Vec::new(),
            reader: BasePacketReader::new(),
            max_buffer,
            corrupt_pages: 0,
            serial: None,
            since_packet: 0,
            foreign_pages: 0,
        }
    }

    /// Add the payload of one audio message; returns every packet completed by it, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, OggStreamError> {
        self.buf.extend_from_slice(bytes);
        let mut packets = Vec::new();
        loop {
            // Resynchronise: drop anything before the next capture pattern.
            match self.buf.windows(4).position(|w| w == CAPTURE) {
                Some(0) => {}
                Some(i) => {
                    self.buf.drain(..i);
                }
                None => {
                    let keep = self.buf.len().min(3);
                    self.buf.drain(..self.buf.len() - keep);
                    break;
                }
            }
            if self.buf.len() < 27 {
                break;
            }
            let header: [u8; 27] = self.buf[..27].try_into().expect("27 bytes");
            let (mut parser, nseg) = match PageParser::new(header) {
                Ok(p) => p,
                Err(_) => {
                    self.skip_bad_page();
                    continue;
                }
            };
            if self.buf.len() < 27 + nseg {
                break;
            }
            let body = parser.parse_segments(self.buf[27..27 + nseg].to_vec());
            let total = 27 + nseg + body;
            if self.buf.len() < total {
                break;
            }
            let serial = u32::from_le_bytes(header[14..18].try_into().expect("4 bytes"));
            if *self.serial.get_or_insert(serial) != serial {
                self.foreign_pages += 1;
                self.buf.drain(..total);
                continue;
            }
            let data = self.buf[27 + nseg..total].to_vec();
            match parser.parse_packet_data(data).map(|page| self.reader.push_page(page)) {
                Ok(Ok(())) => {
                    self.buf.drain(..total);
                    self.since_packet += total;
                    while let Some(p) = self.reader.read_packet() {
                        self.since_packet = 0;
                        packets.push(p.data);
                    }
                    if self.since_packet > self.max_buffer {
                        return Err(OggStreamError::PacketTooLong { max: self.max_buffer });
                    }
                }
                _ => self.skip_bad_page(),
            }
        }
        if self.buf.len() > self.max_buffer {
            self.buf.clear();
            return Err(OggStreamError::Overflow { max: self.max_buffer });
        }
        Ok(packets)
    }

    fn skip_bad_page(&mut self) {
        self.corrupt_pages += 1;
        self.buf.drain(..1); // the search for the next capture pattern does the rest
    }
}

/// The OpusHead packet (RFC 7845): version 1, mono, `pre_skip` samples at 48 kHz, input rate,
/// gain 0, channel mapping family 0.
pub fn opus_head(pre_skip: u16, input_rate: u32) -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1);
    h.push(1);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&input_rate.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
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

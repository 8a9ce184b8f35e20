//! An incremental, bounded Ogg packet reader on the `ogg` crate, shared by the file decoder
//! (Ogg Opus files, [`super::decode_file`]) and the server (the audio messages of a connection).
//!
//! Bytes are pushed in pieces of any size (pages may be split or merged across pieces); every
//! packet completed by a push is returned, in order. Memory is bounded: at most `max_buffer`
//! bytes are held while waiting for a page to complete, and at most `max_buffer` bytes of pages
//! are accepted for one packet. A page that fails its checks (bad header, bad checksum) is
//! skipped and the reader resynchronises on the next `OggS` capture pattern; the packet that
//! was in progress across the lost page is dropped, and reading goes on from the next packet
//! that starts on a page (the `ogg` crate's tolerant mode, as after a seek). One logical stream
//! is followed: the serial of the first page; pages of other serials are counted and skipped.

use ogg::reading::{BasePacketReader, PageParser};

/// Why [`OggPacketStream::push`] gave up. Both are bounds on memory, not decoding problems: a
/// corrupt page is skipped, not an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OggStreamError {
    /// More than `max` bytes arrived without completing a page (the buffer is then emptied).
    #[error("more than {max} bytes of audio buffered without a complete Ogg page")]
    Overflow {
        /// The bound given to [`OggPacketStream::new`].
        max: usize,
    },
    /// More than `max` bytes of pages were accepted without completing a packet.
    #[error("more than {max} bytes of Ogg pages without a complete packet")]
    PacketTooLong {
        /// The bound given to [`OggPacketStream::new`].
        max: usize,
    },
}

/// One packet and what the page it ends on says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OggPacket {
    /// The packet's bytes.
    pub data: Vec<u8>,
    /// The granule position of the page this packet ends on (for Opus: samples at 48 kHz, pre-skip
    /// included, up to the end of the last packet ending on that page). `u64::MAX` (-1) means
    /// none.
    pub granule: u64,
    /// This is the last packet that ends on its page: `granule` counts up to its end.
    pub last_in_page: bool,
    /// The page carries the end-of-stream flag and this is its last packet.
    pub end_of_stream: bool,
}

/// Incremental Ogg reader for one logical stream (see the module documentation).
pub struct OggPacketStream {
    buf: Vec<u8>,
    reader: BasePacketReader,
    max_buffer: usize,
    /// Pages rejected (bad header or checksum) and skipped.
    pub corrupt_pages: u64,
    /// The stream serial of the first page: one logical stream is followed; pages of other
    /// serials are skipped (the reader would otherwise keep state for each).
    serial: Option<u32>,
    /// Page bytes accepted since the last completed packet (a packet continued page after page
    /// would otherwise grow without bound inside the reader).
    since_packet: usize,
    /// Pages of other streams skipped.
    pub foreign_pages: u64,
    /// Pages accepted (of the followed stream).
    pub pages: u64,
    /// Bytes dropped while looking for a page: before a capture pattern, or the first byte of a
    /// page that failed its checks (a reader of a network stream bounds what it tolerates).
    pub skipped_bytes: u64,
}

const CAPTURE: &[u8; 4] = b"OggS";

/// The largest Ogg page: a 27-byte header, 255 lacing values, 255 × 255 bytes of body.
pub const MAX_PAGE: usize = 27 + 255 + 255 * 255;

impl OggPacketStream {
    /// `max_buffer`: the most bytes held while waiting for a page to complete (a page is at most
    /// [`MAX_PAGE`] bytes), and the most bytes of pages accepted for one packet.
    pub fn new(max_buffer: usize) -> Self {
        Self {
            buf: Vec::new(),
            reader: BasePacketReader::new(),
            max_buffer,
            corrupt_pages: 0,
            serial: None,
            since_packet: 0,
            foreign_pages: 0,
            pages: 0,
            skipped_bytes: 0,
        }
    }

    /// Adds the next bytes of the stream; returns every packet completed by them, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, OggStreamError> {
        Ok(self.push_packets(bytes)?.into_iter().map(|p| p.data).collect())
    }

    /// As [`push`](Self::push), with each packet's page information.
    pub fn push_packets(&mut self, bytes: &[u8]) -> Result<Vec<OggPacket>, OggStreamError> {
        self.buf.extend_from_slice(bytes);
        let mut packets = Vec::new();
        loop {
            // Resynchronise: drop anything before the next capture pattern.
            match self.buf.windows(4).position(|w| w == CAPTURE) {
                Some(0) => {}
                Some(i) => {
                    self.skipped_bytes += i as u64;
                    self.buf.drain(..i);
                }
                None => {
                    let keep = self.buf.len().min(3);
                    self.skipped_bytes += (self.buf.len() - keep) as u64;
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
                    self.pages += 1;
                    self.since_packet += total;
                    while let Some(p) = self.reader.read_packet() {
                        self.since_packet = 0;
                        packets.push(OggPacket {
                            granule: p.absgp_page(),
                            last_in_page: p.last_in_page(),
                            end_of_stream: p.last_in_stream(),
                            data: p.data,
                        });
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

    /// Bytes held that do not (yet) form a complete page: at the end of a file, what was cut off.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn skip_bad_page(&mut self) {
        self.corrupt_pages += 1;
        // Drop one byte: the search for the next capture pattern does the rest.
        self.skipped_bytes += 1;
        self.buf.drain(..1);
        // A page may have been lost: a packet continued across it cannot be completed, and the
        // next page's continuation flag no longer matches. The reader's after-seek mode drops
        // such partial packets instead of refusing every later page.
        self.since_packet = 0;
        self.reader.update_after_seek();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ogg::{PacketWriteEndInfo, PacketWriter};

    fn stream(packets: &[Vec<u8>], per_page: usize) -> Vec<u8> {
        let mut w = PacketWriter::new(Vec::new());
        for (i, p) in packets.iter().enumerate() {
            let end = if i + 1 == packets.len() {
                PacketWriteEndInfo::EndStream
            } else if i % per_page == per_page - 1 {
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            w.write_packet(p.clone(), 9, end, 100 * (i as u64 + 1)).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn page_information_comes_with_each_packet() {
        let packets: Vec<Vec<u8>> = (0..7).map(|i| vec![i as u8; 10 + i]).collect();
        let bytes = stream(&packets, 3);
        let got = OggPacketStream::new(1 << 16).push_packets(&bytes).unwrap();
        assert_eq!(got.iter().map(|p| p.data.clone()).collect::<Vec<_>>(), packets);
        let ends: Vec<bool> = got.iter().map(|p| p.last_in_page).collect();
        assert_eq!(ends, [false, false, true, false, false, true, true]);
        assert_eq!(got[2].granule, 300);
        assert_eq!(got[6].granule, 700);
        assert!(got[6].end_of_stream && !got[5].end_of_stream);
    }

    /// A lost page in the middle of a packet spanning pages costs that packet only.
    #[test]
    fn a_lost_page_inside_a_continued_packet_does_not_stop_the_stream() {
        let mut packets: Vec<Vec<u8>> = vec![vec![1; 50], vec![2; 200_000]];
        packets.extend((3..8).map(|i| vec![i as u8; 30]));
        let mut bytes = stream(&packets, 1);
        // Page offsets: page 0 holds packet 0, pages 1..=4 the 200 kB packet, then one each.
        let mut pages = vec![0usize];
        while let Some(&at) = pages.last().filter(|&&at| at < bytes.len()) {
            let n = bytes[at + 26] as usize;
            pages.push(at + 27 + n + bytes[at + 27..at + 27 + n].iter().map(|&l| l as usize).sum::<usize>());
        }
        assert_eq!(pages.len(), 11);
        // Corrupt the third page of the long packet: the page after it (its last) starts with a
        // continued packet that the reader no longer has; the page after that starts afresh.
        bytes[pages[3] + 27 + 255 + 300] ^= 0x55;
        let mut r = OggPacketStream::new(1 << 20);
        let got: Vec<Vec<u8>> = r.push(&bytes).unwrap();
        assert!(r.corrupt_pages >= 1);
        assert_eq!(got.first(), Some(&packets[0]));
        assert_eq!(&got[1..], &packets[2..], "the packets after the damaged one all come through");
    }

    #[test]
    fn a_cut_page_stays_buffered() {
        let packets: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8; 100]).collect();
        let bytes = stream(&packets, 1);
        let mut r = OggPacketStream::new(1 << 16);
        let got = r.push(&bytes[..bytes.len() - 10]).unwrap();
        assert_eq!(got, &packets[..3]);
        assert_eq!(r.buffered(), 27 + 1 + 100 - 10);
    }
}

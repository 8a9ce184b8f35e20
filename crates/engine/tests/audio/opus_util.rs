//! Ogg Opus files built at test time: packets from opus-rs's encoder, pages from the `ogg`
//! crate's writer, granule positions and headers written here (RFC 7845).

use moshi_engine::audio::opus::OpusHead;
use ogg::{PacketWriteEndInfo, PacketWriter};
use opus_rs::{Application, OpusEncoder};

/// The encoder's delay at 48 kHz (libopus's, which opus-rs ports: 2.5 ms + 4 ms): the pre-skip
/// that makes the decoded file line up with the encoder's input.
pub const ENCODER_DELAY_48K: u16 = 312;

/// How [`ogg_opus`] lays the file out.
#[derive(Debug, Clone)]
pub struct Layout {
    pub channels: u8,
    pub pre_skip: u16,
    pub output_gain: i16,
    /// Audio packets per Ogg page (the last page may hold fewer).
    pub per_page: usize,
    /// Samples per channel of each packet at 24 kHz.
    pub frame: usize,
    /// Added to every granule position (a stream cut from a live one starts past 0).
    pub granule_offset: u64,
    /// Samples per channel at 24 kHz the file holds after pre-skip: sets the last granule.
    pub len: usize,
    pub serial: u32,
}

impl Layout {
    pub fn new(channels: u8, len: usize) -> Self {
        Layout {
            channels,
            pre_skip: ENCODER_DELAY_48K,
            output_gain: 0,
            per_page: 5,
            frame: 480,
            granule_offset: 0,
            len,
            serial: 0x4f70_7573,
        }
    }
}

/// Encodes `pcm` (interleaved, 24 kHz, `channels`) into packets of `frame` samples per channel,
/// zero-padded so that the packets hold `len + delay` samples (the whole input survives the
/// pre-skip).
pub fn encode(pcm: &[f32], channels: usize, frame: usize) -> Vec<Vec<u8>> {
    let mut enc = OpusEncoder::new(24_000, channels, Application::Audio).unwrap();
    enc.bitrate_bps = 48_000 * channels as i32;
    let len = pcm.len() / channels;
    let total = (len + ENCODER_DELAY_48K as usize / 2).div_ceil(frame) * frame;
    let mut padded = pcm.to_vec();
    padded.resize(total * channels, 0.0);
    let mut out = vec![0u8; 4000];
    padded
        .chunks(frame * channels)
        .map(|chunk| {
            let n = enc.encode(chunk, frame, &mut out).unwrap();
            out[..n].to_vec()
        })
        .collect()
}

pub fn opus_tags() -> Vec<u8> {
    let vendor = b"moshi-rs tests";
    let mut t = b"OpusTags".to_vec();
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor);
    t.extend_from_slice(&1u32.to_le_bytes());
    let comment = b"TITLE=test";
    t.extend_from_slice(&(comment.len() as u32).to_le_bytes());
    t.extend_from_slice(comment);
    t
}

pub fn head(l: &Layout) -> Vec<u8> {
    OpusHead {
        version: 1,
        channels: l.channels,
        pre_skip: l.pre_skip,
        input_rate: 44_100,
        output_gain: l.output_gain,
        mapping_family: 0,
    }
    .to_bytes()
}

/// An Ogg Opus file of `packets` laid out as `l` says, with `head_bytes` as its OpusHead.
pub fn ogg_opus_with_head(packets: &[Vec<u8>], l: &Layout, head_bytes: Vec<u8>) -> Vec<u8> {
    let mut w = PacketWriter::new(Vec::new());
    w.write_packet(head_bytes, l.serial, PacketWriteEndInfo::EndPage, 0).unwrap();
    w.write_packet(opus_tags(), l.serial, PacketWriteEndInfo::EndPage, 0).unwrap();
    for (i, p) in packets.iter().enumerate() {
        let last = i + 1 == packets.len();
        let mut granule = l.granule_offset + 2 * (l.frame * (i + 1)) as u64;
        let end = if last {
            granule = l.granule_offset + l.pre_skip as u64 + 2 * l.len as u64;
            PacketWriteEndInfo::EndStream
        } else if (i + 1) % l.per_page == 0 {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        w.write_packet(p.clone(), l.serial, end, granule).unwrap();
    }
    w.into_inner()
}

pub fn ogg_opus(packets: &[Vec<u8>], l: &Layout) -> Vec<u8> {
    ogg_opus_with_head(packets, l, head(l))
}

/// Byte offsets of the Ogg pages of `bytes` (each starting with `OggS`).
pub fn page_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 27 <= bytes.len() {
        assert_eq!(&bytes[at..at + 4], b"OggS");
        out.push(at);
        let n = bytes[at + 26] as usize;
        let body: usize = bytes[at + 27..at + 27 + n].iter().map(|&l| l as usize).sum();
        at += 27 + n + body;
    }
    out
}

/// Root mean square over `x`.
pub fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

/// Upward zero crossings.
pub fn crossings(x: &[f32]) -> usize {
    x.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count()
}

/// Normalised correlation of `a` and `b` (same length).
pub fn correlation(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (rms(a) * rms(b) * a.len() as f32)
}

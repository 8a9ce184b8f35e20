//! Reproducers for memory bounds of the Ogg/Opus input path that the fuzz targets cannot show
//! (they need more bytes than a fuzz input): `cargo run --release --example input_memory`.
//! Each case feeds `OpusInput` what one client may send and prints the peak resident memory.
//!
//! 1. amplification: empty Opus packets (a lacing value of 0: 1 byte each) are lost packets that
//!    `OpusInput` decodes as 120 ms of concealment (2880 samples) each: ~2600 samples per byte;
//!    the `max_pcm` bound is applied only after the whole message is decoded.
//! 2. continued packet: pages whose segments are all 255 continue one packet forever; the ogg
//!    crate's reader keeps every page of it. Each page is a valid message under every limit.
//! 3. serials: BOS pages of new stream serials, each ending in a continued packet; the reader
//!    keeps one page per serial.

use std::time::Instant;

use moshi_server::audio_io::OpusInput;
use moshi_server::ogg_stream::{opus_head, opus_tags};
use ogg::{PacketWriteEndInfo, PacketWriter};

fn rss_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// One raw Ogg page (valid checksum).
fn page(flags: u8, serial: u32, seq: u32, granule: u64, lacing: &[u8], body: &[u8]) -> Vec<u8> {
    let mut p = b"OggS\0".to_vec();
    p.push(flags);
    p.extend_from_slice(&granule.to_le_bytes());
    p.extend_from_slice(&serial.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(lacing.len() as u8);
    p.extend_from_slice(lacing);
    p.extend_from_slice(body);
    let crc = crc32(&p);
    p[22..26].copy_from_slice(&crc.to_le_bytes());
    p
}

/// Ogg's CRC-32 (polynomial 0x04c11db7, no reflection, init 0).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04c1_1db7 } else { crc << 1 };
        }
    }
    crc
}

fn headers(serial: u32) -> Vec<u8> {
    let mut w = PacketWriter::new(Vec::new());
    w.write_packet(opus_head(3840, 24_000), serial, PacketWriteEndInfo::EndPage, 0).unwrap();
    w.write_packet(opus_tags("x"), serial, PacketWriteEndInfo::EndPage, 0).unwrap();
    w.into_inner()
}

fn report(case: &str, t: Instant, sent: usize, extra: &str) {
    println!(
        "{case}: {sent} bytes sent, {:.2} s, VmRSS {} MiB, VmHWM (peak) {} MiB{extra}",
        t.elapsed().as_secs_f64(),
        rss_kb("VmRSS:") / 1024,
        rss_kb("VmHWM:") / 1024
    );
}

fn main() {
    let case = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let max_pcm = 24_000 * 10; // the server's default: 10 s buffered at most
    let max_ogg = 1 << 17; // as session.rs
    println!("start: VmRSS {} MiB", rss_kb("VmRSS:") / 1024);

    if case == "all" || case == "amplification" {
        // One message: headers, then pages of 255 empty packets (27 + 1 + 255 bytes each).
        let kib: usize = std::env::var("KIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
        let mut msg = headers(1);
        // A real packet first (libopus's 20 ms CELT silence frame), so that the lost packets
        // after it are concealed by CELT's PLC as they would be mid-conversation.
        let mut lacing = vec![3u8];
        lacing.extend([0u8; 254]);
        msg.extend(page(0, 1, 2, 960, &lacing, &[0xf8, 0xff, 0xfe]));
        let mut seq = 3;
        while msg.len() + 283 <= kib * 1024 {
            msg.extend(page(0, 1, seq, seq as u64 * 960, &[0; 255], &[]));
            seq += 1;
        }
        let mut input = OpusInput::new(max_pcm, max_ogg);
        let t = Instant::now();
        let added = input.push(&msg);
        report(
            "amplification",
            t,
            msg.len(),
            &format!(
                "; push returned {added:?} samples ({:.0} s of audio), {} held after the bound",
                added.as_ref().map(|n| *n as f64 / 24_000.0).unwrap_or(0.0),
                input.available()
            ),
        );
    }

    if case == "all" || case == "continued" {
        let pages: u32 = std::env::var("PAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        let mut input = OpusInput::new(max_pcm, max_ogg);
        input.push(&headers(2)).unwrap();
        let body = vec![0x55u8; 255 * 255];
        let t = Instant::now();
        let mut sent = 0;
        for i in 0..pages {
            // Page 2 starts the packet, every later page continues it (flag 1); none ends it.
            let m = page(if i == 0 { 0 } else { 1 }, 2, 2 + i, u64::MAX, &[255; 255], &body);
            sent += m.len();
            let r = input.push(&m);
            assert!(r.is_ok(), "message {i}: {r:?}");
        }
        report("continued", t, sent, &format!("; {pages} messages of {} bytes, all accepted", 27 + 255 + body.len()));
    }

    if case == "all" || case == "serials" {
        let streams: u32 = std::env::var("STREAMS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        let mut input = OpusInput::new(max_pcm, max_ogg);
        input.push(&headers(3)).unwrap();
        let body = vec![0x55u8; 255 * 255];
        let t = Instant::now();
        let mut sent = 0;
        for s in 0..streams {
            let m = page(2, 1000 + s, 0, u64::MAX, &[255; 255], &body);
            sent += m.len();
            let r = input.push(&m);
            assert!(r.is_ok(), "message {s}: {r:?}");
        }
        report("serials", t, sent, &format!("; {streams} BOS pages of new serials, all accepted"));
    }
}

//! Shared by the fuzz targets (fuzz_targets/) and the helper programs (examples/).

pub mod opus_diff;

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Mutex;

use moshi_server::ogg_stream::{opus_head, opus_tags};
use ogg::{PacketWriteEndInfo, PacketWriter};

/// The source files whose panics `OpusInput` contains: opus-rs (the decoder runs under
/// `catch_unwind` in the engine's `audio::opus::OpusPacketDecoder`, which `OpusInput` uses).
const CONTAINED_SOURCES: &str = "opus-rs-";

thread_local! {
    static CONTAINED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}
static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// libfuzzer-sys installs a panic hook that aborts on *every* panic, caught or not, so the
/// decoder panics that the engine's Opus decoder contains with `catch_unwind` (as the server relies on) would all be
/// reported as crashes. This replaces it (call it from the target's `init:`):
/// - a panic located in opus-rs is recorded (see [`take_contained_panics`]) and printed the first
///   time its location is seen, then unwinds to the decoder's `catch_unwind`; if it ever escaped,
///   libfuzzer-sys's own `catch_unwind` around the target would abort: still a crash;
/// - any other panic (our code, the ogg crate, std) prints and aborts at once, as before.
pub fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())).unwrap_or_default();
        if location.contains(CONTAINED_SOURCES) {
            let first = SEEN.lock().unwrap().get_or_insert_with(HashSet::new).insert(location.clone());
            if first {
                eprintln!("[contained panic, first at this location] {info}");
            }
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            CONTAINED.with(|c| c.borrow_mut().push(format!("{location}: {payload}")));
        } else {
            default_hook(info);
            std::process::abort();
        }
    }));
}

/// Panics contained since the last call (location: message).
pub fn take_contained_panics() -> Vec<String> {
    CONTAINED.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

static SAVED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Save `input` as the reproducer of each contained panic location not saved before, into
/// `$FUZZ_CONTAINED_PANICS_DIR` (nothing when unset): `contained-<target>-<file>-<line>-<col>`.
pub fn record_contained(target: &str, input: &[u8]) {
    let panics = take_contained_panics();
    let Ok(dir) = std::env::var("FUZZ_CONTAINED_PANICS_DIR") else { return };
    for p in panics {
        let location = p.split(": ").next().unwrap_or("").to_string();
        if !SAVED.lock().unwrap().get_or_insert_with(HashSet::new).insert(location.clone()) {
            continue;
        }
        let tail: String = location.rsplit('/').next().unwrap_or("").chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let path = format!("{dir}/contained-{target}-{tail}");
        if std::path::Path::new(&path).exists() {
            continue;
        }
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(&path, input);
        let _ = std::fs::write(format!("{path}.txt"), format!("{p}\n"));
        eprintln!("[contained panic] reproducer written to {path}");
    }
}

/// Splits the input of the `ogg_opus_split` target: `[max_pcm selector][n][n × u16 LE chunk
/// lengths][stream]`. Returns (max_pcm, max_ogg, the pieces to push in order); the pieces cover
/// the whole stream (the chunk lengths are cycled, each taken modulo what is left, plus one).
pub fn split_input(data: &[u8]) -> (usize, usize, Vec<&[u8]>) {
    let Some((&sel, rest)) = data.split_first() else { return (0, 0, vec![]) };
    // Small buffers exercise the drop path; large ones the server's settings (24 kHz × 10 s).
    let max_pcm = match sel & 3 {
        0 => (sel >> 2) as usize * 97,
        1 => 1920 * 3,
        2 => 24_000,
        _ => 240_000,
    };
    let max_ogg = if sel & 0x80 != 0 { 4096 } else { 1 << 17 };
    let Some((&n, rest)) = rest.split_first() else { return (max_pcm, max_ogg, vec![]) };
    let n = (n % 16) as usize;
    let (lens, mut stream) = rest.split_at((2 * n).min(rest.len()));
    let lens: Vec<usize> = lens.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as usize).collect();
    let mut pieces = Vec::new();
    let mut i = 0;
    while !stream.is_empty() {
        let take = match lens.get(i % lens.len().max(1)) {
            Some(&l) if !lens.is_empty() => l % stream.len() + 1,
            _ => stream.len(),
        };
        let (piece, more) = stream.split_at(take);
        pieces.push(piece);
        stream = more;
        i += 1;
    }
    (max_pcm, max_ogg, pieces)
}

/// The `opus_packets` target's input: `[flags][packets]`, each packet `[L][L bytes]` with
/// `L < 0xf0`, or `[0xf0 | hi][lo][((hi << 8) | lo) bytes]` (up to 4095 bytes), the last one
/// truncated to what is left.
pub struct OpusCase {
    /// Bit 0: stereo OpusHead (channel count 2); bit 1: no OpusTags packet; bit 2: several
    /// packets per Ogg page (else one per page, as Kyutai's clients send); bits 3..=7: how the
    /// stream is split into messages (0: one message, else chunks of `bits × 61` bytes).
    pub flags: u8,
    pub packets: Vec<Vec<u8>>,
}

impl OpusCase {
    pub fn parse(data: &[u8]) -> Self {
        let Some((&flags, mut rest)) = data.split_first() else { return Self { flags: 0, packets: vec![] } };
        let mut packets = Vec::new();
        while let Some((&l, more)) = rest.split_first() {
            let (len, more) = if l < 0xf0 {
                (l as usize, more)
            } else if let Some((&lo, more)) = more.split_first() {
                ((((l & 0x0f) as usize) << 8) | lo as usize, more)
            } else {
                (0, more)
            };
            let (p, more) = more.split_at(len.min(more.len()));
            packets.push(p.to_vec());
            rest = more;
        }
        Self { flags, packets }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.flags];
        for p in &self.packets {
            assert!(p.len() < 4096);
            if p.len() < 0xf0 {
                out.push(p.len() as u8);
            } else {
                out.push(0xf0 | (p.len() >> 8) as u8);
                out.push(p.len() as u8);
            }
            out.extend_from_slice(p);
        }
        out
    }

    /// A valid Ogg Opus stream: OpusHead on the BOS page, OpusTags (unless bit 1), the packets.
    pub fn ogg_stream(&self) -> Vec<u8> {
        let serial = 0x6d6f_7368;
        let mut w = PacketWriter::new(Vec::new());
        let mut head = opus_head(3840, 24_000);
        if self.flags & 1 != 0 {
            head[9] = 2;
        }
        w.write_packet(head, serial, PacketWriteEndInfo::EndPage, 0).expect("in memory");
        if self.flags & 2 == 0 {
            w.write_packet(opus_tags("moshi-rs-fuzz"), serial, PacketWriteEndInfo::EndPage, 0).expect("in memory");
        }
        let per_page = self.flags & 4 != 0;
        let mut granule = 0u64;
        for (i, p) in self.packets.iter().enumerate() {
            granule += 1920;
            let last = i + 1 == self.packets.len();
            let end = if last {
                PacketWriteEndInfo::EndStream
            } else if per_page && i % 4 != 3 {
                PacketWriteEndInfo::NormalPacket
            } else {
                PacketWriteEndInfo::EndPage
            };
            w.write_packet(p.clone(), serial, end, granule).expect("in memory");
        }
        w.into_inner()
    }

    /// Message boundaries (bits 3..=7 of the flags).
    pub fn chunk(&self) -> Option<usize> {
        match self.flags >> 3 {
            0 => None,
            k => Some(k as usize * 61),
        }
    }
}

/// Save `input` once per `kind` into `$FUZZ_CONTAINED_PANICS_DIR` (a finding that is not a crash:
/// see docs/fuzzing.md), with `text` beside it.
pub fn note(target: &str, kind: &str, input: &[u8], text: &str) {
    let Ok(dir) = std::env::var("FUZZ_CONTAINED_PANICS_DIR") else { return };
    let key = format!("{target}-{kind}");
    if !SAVED.lock().unwrap().get_or_insert_with(HashSet::new).insert(key.clone()) {
        return;
    }
    let path = format!("{dir}/{key}");
    if std::path::Path::new(&path).exists() {
        return;
    }
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(&path, input);
    let _ = std::fs::write(format!("{path}.txt"), format!("{text}\n"));
    eprintln!("[note {key}] {text}; input written to {path}");
}

/// Push `pieces` (the messages of one connection) into a fresh `OpusInput`, as the server does,
/// checking after each push:
/// - no panic escapes (a contained decoder panic is recorded, see [`install_panic_hook`]);
/// - after `Ok(n)`: `available() == min(before + n, max_pcm)` and the samples dropped are the
///   rest (the bound the server relies on between messages);
/// - after `Err`: the error is a value with a message (the server closes the connection). Samples
///   held beyond `max_pcm` at that point are noted (`over-bound-after-err`), not a crash: the
///   object is dropped with the connection;
/// - every sample is finite (else noted: `nonfinite`, the model would get NaN/inf).
///
/// Also notes the expansion (samples decoded per input byte) by powers of two from 64 up.
pub fn drive_opus_input(target: &str, whole_input: &[u8], max_pcm: usize, max_ogg: usize, pieces: &[&[u8]]) {
    use moshi_server::audio_io::OpusInput;
    let mut input = OpusInput::new(max_pcm, max_ogg);
    let mut total_added = 0usize;
    for (i, piece) in pieces.iter().enumerate() {
        let before = input.available();
        let dropped_before = input.dropped_samples;
        let result = input.push(piece);
        record_contained(target, whole_input);
        match result {
            Ok(n) => {
                let expect = (before + n).min(max_pcm);
                assert_eq!(input.available(), expect, "push {i}: {before} held + {n} added, bound {max_pcm}");
                assert_eq!(input.dropped_samples - dropped_before, (before + n - expect) as u64, "push {i}: dropped count");
                total_added += n;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                if input.available() > max_pcm {
                    note(target, "over-bound-after-err", whole_input, &format!(
                        "push {i} returned Err({e}) holding {} samples, bound {max_pcm}",
                        input.available()
                    ));
                }
            }
        }
        // The server takes everything after each message; take in model frames here instead,
        // leaving a remainder so that the drop path is exercised too.
        while input.available() >= 1920 {
            let frame = input.take(1920).expect("available");
            assert_eq!(frame.len(), 1920);
            if let Some(x) = frame.iter().find(|x| !x.is_finite()) {
                note(target, "nonfinite", whole_input, &format!("decoded sample {x}"));
            }
            if i % 2 == 0 {
                break;
            }
        }
        assert!(input.take(input.available() + 1).is_none());
    }
    let _ = (input.bad_packets, input.corrupt_pages());
    let bytes: usize = pieces.iter().map(|p| p.len()).sum();
    let per_byte = total_added / bytes.max(1);
    if per_byte >= 64 {
        let bucket = (per_byte as u64).ilog2();
        note(target, &format!("expansion-2e{bucket}"), whole_input, &format!(
            "{bytes} bytes of Ogg decoded to {total_added} samples ({per_byte} samples per byte)"
        ));
    }
}

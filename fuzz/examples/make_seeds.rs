//! Writes the seed corpus: `cargo run --release --example make_seeds [DIR]` (DIR defaults to
//! `seeds`, relative to fuzz/), one directory per target. Deterministic.

use std::path::Path;

use moshi_server::audio_io::OpusOutput;
use moshi_server::protocol::{Control, Message};
use moshi_server_fuzz::OpusCase;
use ogg::PacketReader;
use opus_rs::{Application, OpusEncoder};

fn signal(n: usize, rate: usize, channels: usize) -> Vec<f32> {
    let mut r = 12345u32;
    (0..n * channels)
        .map(|i| {
            let t = (i / channels) as f32 / rate as f32;
            r = r.wrapping_mul(1664525).wrapping_add(1013904223);
            let noise = ((r >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.05;
            0.3 * (t * std::f32::consts::TAU * (220.0 + 400.0 * t)).sin() + noise
        })
        .collect()
}

/// The packets of an Ogg stream, headers removed.
fn packets_of(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut r = PacketReader::new(std::io::Cursor::new(stream));
    let mut out = Vec::new();
    while let Ok(Some(p)) = r.read_packet() {
        if !p.data.starts_with(b"OpusHead") && !p.data.starts_with(b"OpusTags") {
            out.push(p.data);
        }
    }
    out
}

/// What the server sends: `OpusOutput` on 80 ms frames of 24 kHz audio.
fn server_stream(frames: usize) -> Vec<u8> {
    let mut out = OpusOutput::new(1);
    let pcm = signal(1920 * frames, 24_000, 1);
    pcm.chunks(1920).flat_map(|f| out.encode(f).expect("encode")).collect()
}

/// Packets from opus-rs's encoder in other configurations than the server's.
fn encoded(rate: usize, channels: usize, app: Application, bitrate: i32, frame: usize, n: usize, tweak: impl Fn(&mut OpusEncoder)) -> Vec<Vec<u8>> {
    let mut enc = OpusEncoder::new(rate as i32, channels, app).expect("encoder");
    enc.bitrate_bps = bitrate;
    tweak(&mut enc);
    let pcm = signal(frame * n, rate, channels);
    let mut buf = vec![0u8; 4000];
    pcm.chunks(frame * channels)
        .filter_map(|f| match enc.encode(f, frame, &mut buf) {
            Ok(len) => Some(buf[..len].to_vec()),
            Err(e) => {
                eprintln!("skipping a {rate} Hz × {channels} frame of {frame}: {e}");
                None
            }
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(name), bytes).expect("write");
}

fn main() {
    let root = std::env::args().nth(1).unwrap_or_else(|| "seeds".into());
    let root = Path::new(&root);

    // protocol: one of each message, both handshake spellings, an unknown type.
    let dir = root.join("protocol");
    let stream = server_stream(2);
    let msgs: Vec<(&str, Vec<u8>)> = vec![
        ("handshake-bare", vec![0]),
        ("handshake", Message::Handshake { protocol_version: 0, model_version: 7 }.encode()),
        ("audio", Message::Audio(stream[..stream.len().min(400)].to_vec()).encode()),
        ("text", Message::Text(" héllo ⁇".into()).encode()),
        ("control-start", Message::Control(Control::Start).encode()),
        ("control-restart", Message::Control(Control::Restart).encode()),
        (
            "metadata",
            Message::Metadata(serde_json::json!({"text_temperature": 0.7, "text_topk": 25, "seed": -1, "a": [null, true, 1e-7, "x\u{1}"]}))
                .encode(),
        ),
        ("error", Message::Error("too many conversations".into()).encode()),
        ("ping", Message::Ping.encode()),
        ("unknown", vec![7, 1, 2, 3]),
    ];
    for (name, m) in &msgs {
        write(&dir, name, m);
    }

    // opus_packets: packets of several encoder configurations (SILK, hybrid, CELT; mono and
    // stereo; 2.5 to 60 ms; FEC), plus hand-made edge cases, in `OpusCase` format.
    let dir = root.join("opus_packets");
    let server = packets_of(&server_stream(3));
    let cases: Vec<(&str, u8, Vec<Vec<u8>>)> = vec![
        ("server-24k-voip", 0, server.clone()),
        ("server-24k-voip-chunked", 2 << 3, server.clone()),
        ("celt-48k-20ms", 4, encoded(48_000, 1, Application::Audio, 64_000, 960, 6, |_| {})),
        ("celt-48k-2.5ms", 0, encoded(48_000, 1, Application::Audio, 64_000, 120, 8, |_| {})),
        ("celt-48k-60ms", 0, encoded(48_000, 1, Application::Audio, 48_000, 2880, 3, |_| {})),
        ("celt-24k-stereo", 1, encoded(24_000, 2, Application::Audio, 48_000, 480, 6, |_| {})),
        ("silk-16k-voip", 2, encoded(16_000, 1, Application::Voip, 16_000, 320, 6, |_| {})),
        ("silk-8k-fec", 0, encoded(8_000, 1, Application::Voip, 12_000, 160, 6, |e| {
            e.use_inband_fec = true;
            e.packet_loss_perc = 20;
        })),
        ("hybrid-24k", 0, encoded(24_000, 1, Application::Voip, 40_000, 480, 6, |e| {
            let _ = e.enable_hybrid_mode();
        })),
        ("silk-24k-cbr-stereo", 1, encoded(24_000, 2, Application::Voip, 24_000, 960, 4, |e| e.use_cbr = true)),
        (
            "edge",
            4,
            vec![
                vec![],                   // lost packet: concealment
                vec![0xfc],               // TOC only
                vec![0x03, 0x81, 0x00],   // code 3, VBR, one frame
                vec![0x7b, 0x00, 0x00],   // CELT FB 20 ms, nearly empty
                vec![0x0b; 40],           // SILK NB 60 ms
                vec![0xff, 0xbf, 0x00],   // code 3 CELT FB 20 ms, padding, 63 frames
            ],
        ),
    ];
    for (name, flags, packets) in &cases {
        let packets: Vec<Vec<u8>> = packets.iter().filter(|p| p.len() < 4096).cloned().collect();
        write(&dir, name, &OpusCase { flags: *flags, packets }.to_bytes());
    }

    // ogg_opus_split: `[selector][n][n × u16 LE lengths][stream]`.
    let dir = root.join("ogg_opus_split");
    let server = server_stream(6);
    let celt = OpusCase { flags: 4, packets: encoded(48_000, 1, Application::Audio, 64_000, 960, 4, |_| {}) }.ogg_stream();
    let splits: Vec<(&str, Vec<u8>, &[u8])> = vec![
        ("server-whole", vec![0x03, 0], &server),
        ("server-77", vec![0x02, 1, 76, 0], &server),
        ("server-mixed", vec![0x81, 3, 26, 0, 0x2c, 1, 1, 0], &server),
        ("server-small-pcm", vec![0x10, 2, 200, 0, 27, 0], &server),
        ("celt-pages", vec![0x01, 1, 0xff, 0xff], &celt),
        ("not-opus", vec![0x02, 0], b"OggS\0\x02\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0\x01\x0a\x01vorbis\0\0\0"),
    ];
    for (name, prefix, stream) in &splits {
        let mut bytes = prefix.clone();
        bytes.extend_from_slice(stream);
        write(&dir, name, &bytes);
    }
    println!("seeds written under {}", root.display());
}

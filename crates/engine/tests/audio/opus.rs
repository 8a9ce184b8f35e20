//! Ogg Opus input: files made here with opus-rs's encoder (audio/opus_util.rs), one fixture made by
//! libopus's `opusenc` (tests/data/README.md), and the containers named as unsupported.

use std::path::PathBuf;

use moshi_engine::audio::ogg_stream::OggPacketStream;
use moshi_engine::audio::opus::{packet_samples_48k, OpusHead, OpusPacketDecoder};
use moshi_engine::audio::{decode_bytes, decode_file, load_mono_24k, to_mono, AudioError};

use super::opus_util::{correlation, crossings, encode, head, ogg_opus, ogg_opus_with_head, page_offsets, rms, Layout};
use super::util::{sine, TempDir};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// A mono Ogg Opus file of a 440 Hz sine, `len` samples at 24 kHz.
fn mono_file(len: usize, per_page: usize) -> (Vec<u8>, Vec<Vec<u8>>, Vec<f32>, Layout) {
    let x = sine(440.0, 24_000, len, 0.5);
    let packets = encode(&x, 1, 480);
    let l = Layout { per_page, ..Layout::new(1, len) };
    (ogg_opus(&packets, &l), packets, x, l)
}

#[test]
fn mono_file_has_the_exact_length_and_keeps_the_sine() {
    let dir = TempDir::new("opus-mono");
    for len in [24_000usize, 24_000 + 77, 1000] {
        let (bytes, _, x, _) = mono_file(len, 5);
        let path = dir.file("tone.opus");
        std::fs::write(&path, &bytes).unwrap();
        let a = decode_file(&path).unwrap();
        assert_eq!((a.sample_rate, a.channels), (24_000, 1));
        assert_eq!(a.samples.len(), len, "pre-skip removed and end trimmed to the granule position");
        assert_eq!(load_mono_24k(&path).unwrap(), a.samples, "at 24 kHz mono nothing else is done");
        assert_eq!(decode_bytes(bytes, None).unwrap(), a);
        if len < 24_000 {
            continue;
        }
        // The pre-skip (the encoder's delay) lines the output up with the input.
        let mid = 2400..len - 2400;
        let c = correlation(&a.samples[mid.clone()], &x[mid.clone()]);
        assert!(c > 0.98, "correlation with the input {c}");
        let ups = crossings(&a.samples[mid.clone()]);
        let want = crossings(&x[mid.clone()]);
        assert!(ups.abs_diff(want) <= 1, "{ups} upward crossings, input has {want}");
        let (ro, ri) = (rms(&a.samples[mid.clone()]), rms(&x[mid]));
        assert!((ro / ri - 1.0).abs() < 0.1, "rms in {ri}, out {ro}");
    }
}

#[test]
fn stereo_stays_stereo_and_mixes_down_to_the_mean() {
    let dir = TempDir::new("opus-stereo");
    let n = 24_000;
    let left = sine(440.0, 24_000, n, 0.5);
    // Left only: the mono mix is half of it (a mix that took one channel or summed them would not be).
    let inter: Vec<f32> = left.iter().flat_map(|&l| [l, 0.0]).collect();
    let packets = encode(&inter, 2, 480);
    let path = dir.file("left.opus");
    std::fs::write(&path, ogg_opus(&packets, &Layout::new(2, n))).unwrap();
    let a = decode_file(&path).unwrap();
    assert_eq!((a.sample_rate, a.channels, a.samples.len()), (24_000, 2, 2 * n));
    let mono = load_mono_24k(&path).unwrap();
    assert_eq!(mono, to_mono(&a));
    let mid = 2400..n - 2400;
    let l: Vec<f32> = a.samples.chunks(2).map(|f| f[0]).collect();
    let ratio = rms(&mono[mid.clone()]) / rms(&l[mid.clone()]);
    assert!((ratio - 0.5).abs() < 0.05, "mono / left rms {ratio}");
    assert!(correlation(&mono[mid.clone()], &left[mid.clone()]) > 0.95);

    // Opposite channels cancel in the mean.
    let inter: Vec<f32> = left.iter().flat_map(|&l| [l, -l]).collect();
    let path = dir.file("opposite.opus");
    std::fs::write(&path, ogg_opus(&encode(&inter, 2, 480), &Layout::new(2, n))).unwrap();
    let a = decode_file(&path).unwrap();
    let mono = load_mono_24k(&path).unwrap();
    let l: Vec<f32> = a.samples.chunks(2).map(|f| f[0]).collect();
    assert!(rms(&l[mid.clone()]) > 0.2, "left {}", rms(&l[mid.clone()]));
    assert!(rms(&mono[mid.clone()]) < 0.1 * rms(&l[mid]), "mono of L and -L should be near silence");
}

/// The packet decoder the server uses gives, packet by packet, the samples of the file decoder
/// (before pre-skip and end trimming), mono and stereo.
#[test]
fn the_streaming_packet_decoder_gives_the_file_samples() {
    for channels in [1u8, 2] {
        let n = 12_000 + 333;
        let mut x: Vec<f32> = sine(300.0, 24_000, n * channels as usize, 0.4);
        // The server's 80 ms pre-skip (`encode` pads for the encoder's 6.5 ms): the end trim
        // stays within the last packet.
        x.resize(x.len() + (1920 - 156) * channels as usize, 0.0);
        let packets = encode(&x, channels as usize, 480);
        let l = Layout { pre_skip: 3840, ..Layout::new(channels, n) };
        let bytes = ogg_opus(&packets, &l);
        let file = decode_bytes(bytes.clone(), None).unwrap();
        let mono_file = to_mono(&file);
        let mut dec = OpusPacketDecoder::new(&OpusHead::parse(&head(&l)).unwrap());
        let mut stream = Vec::new();
        for p in OggPacketStream::new(1 << 16).push(&bytes).unwrap().iter().skip(2) {
            stream.extend_from_slice(dec.decode_mono(p).unwrap());
        }
        assert_eq!(mono_file.len(), n);
        assert_eq!(&stream[1920..1920 + n], &mono_file[..], "{channels} channel(s)");
    }
}

#[test]
fn output_gain_scales_the_same_packets() {
    let (_, packets, _, l) = mono_file(12_000, 5);
    let plain = decode_bytes(ogg_opus(&packets, &l), None).unwrap();
    let loud = decode_bytes(ogg_opus(&packets, &Layout { output_gain: 6 * 256, ..l.clone() }), None).unwrap();
    let g = 10f32.powf(6.0 / 20.0);
    assert_eq!(plain.samples.len(), loud.samples.len());
    // +6 dB on a 0.5 sine reaches full scale: the decoder clips there.
    for (p, q) in plain.samples.iter().zip(&loud.samples) {
        assert!(((p * g).clamp(-1.0, 1.0) - q).abs() <= 1e-6 * g, "{p} * {g} != {q}");
    }
    assert!(loud.samples.iter().any(|&q| q.abs() == 1.0), "some samples reach full scale");
}

#[test]
fn a_stream_starting_past_zero_and_a_one_page_stream_are_timed_from_their_granules() {
    let (bytes, packets, _, l) = mono_file(10_000, 4);
    let want = decode_bytes(bytes, None).unwrap();
    let later = ogg_opus(&packets, &Layout { granule_offset: 48_000 * 3600, ..l.clone() });
    assert_eq!(decode_bytes(later, None).unwrap(), want, "start offset");
    // Everything on one page: its granule position is less than the samples it holds.
    let one = ogg_opus(&packets, &Layout { per_page: 1000, ..l.clone() });
    assert_eq!(page_offsets(&one).len(), 3);
    assert_eq!(decode_bytes(one, None).unwrap(), want, "end trimming on a single page");
    // Per page, and with other frame sizes (packets of 2.5 ms up to 60 ms).
    for frame in [60usize, 240, 960, 1440] {
        let x = sine(440.0, 24_000, 5000, 0.5);
        let p = encode(&x, 1, frame);
        let a = decode_bytes(ogg_opus(&p, &Layout { frame, per_page: 1, ..Layout::new(1, 5000) }), None).unwrap();
        assert_eq!(a.samples.len(), 5000, "{frame}-sample packets");
        assert_eq!(packet_samples_48k(&p[0]), Some(2 * frame as u32));
    }
}

#[test]
fn truncated_files_keep_the_audio_before_the_cut() {
    let dir = TempDir::new("opus-cut");
    let (bytes, _, _, _) = mono_file(24_000, 3);
    let full = decode_bytes(bytes.clone(), None).unwrap().samples;
    let pages = page_offsets(&bytes);
    let cut = dir.file("cut.opus");
    for len in (1..bytes.len()).step_by(97).chain(pages.iter().copied()).chain([bytes.len() - 1]) {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        match decode_file(&cut) {
            Ok(a) => {
                assert!(len >= pages[3], "cut at {len}, before the first complete audio page, decoded");
                assert_eq!(&a.samples[..], &full[..a.samples.len()], "cut at {len}: the audio before the cut");
            }
            Err(e) => {
                assert!(e.to_string().contains("cut.opus"), "{e}");
                assert!(len < pages[3], "cut at {len} (first audio page ends at {}): {e:?}", pages[3]);
                if (4..pages[1]).contains(&len) {
                    assert!(matches!(e, AudioError::Truncated { .. }), "cut at {len}: {e:?}");
                } else if len >= pages[1] {
                    assert!(matches!(e, AudioError::NoAudio { .. }), "cut at {len}: {e:?}");
                }
            }
        }
    }
    // Cut at a page boundary: exactly the packets of the complete pages (3 × 480 each).
    std::fs::write(&cut, &bytes[..pages[6]]).unwrap();
    assert_eq!(decode_file(&cut).unwrap().samples.len(), 4 * 3 * 480 - 156);
}

#[test]
fn damaged_pages_and_packets_are_skipped_or_silenced() {
    let (bytes, packets, _, l) = mono_file(24_000, 3);
    let full = decode_bytes(bytes.clone(), None).unwrap().samples;
    // A bad checksum: that page's packets are lost, the rest decodes.
    let pages = page_offsets(&bytes);
    let mut bad = bytes.clone();
    bad[pages[10] + 40] ^= 0x5a;
    let a = decode_bytes(bad, None).unwrap();
    assert!(a.samples.len() < full.len() && a.samples.len() >= full.len() - 3 * 480, "{}", a.samples.len());
    assert_eq!(&a.samples[..1000], &full[..1000]);

    // A packet the decoder refuses (code 3, two VBR frames whose length runs past the end)
    // becomes silence of its nominal length: the timing of what follows is kept.
    let mut p = packets.clone();
    let refused = vec![0xfb, 0x82, 0xff, 0x01, 0x02];
    assert_eq!(packet_samples_48k(&refused), Some(1920));
    p[20] = refused;
    let a = decode_bytes(ogg_opus(&p, &l), None).unwrap();
    assert_eq!(a.samples.len(), full.len());
    let at = 20 * 480 - 156;
    assert!(a.samples[at..at + 960].iter().all(|&v| v == 0.0));
    assert_eq!(&a.samples[..at], &full[..at]);
    assert!(rms(&a.samples[at + 2400..]) > 0.2, "the audio after it decodes");

    // Nothing decodes: named as such.
    let junk: Vec<Vec<u8>> = packets.iter().map(|_| vec![0x03, 0x00]).collect();
    let e = decode_bytes(ogg_opus(&junk, &l), None).unwrap_err();
    assert!(matches!(e, AudioError::Undecodable { failed, .. } if failed == junk.len()), "{e:?}");
}

#[test]
fn bad_opus_heads_are_named() {
    let (_, packets, _, l) = mono_file(4800, 5);
    let with = |at: usize, v: u8| {
        let mut h = head(&l);
        h[at] = v;
        h
    };
    let mut family1 = with(18, 1);
    family1.extend([1, 0, 0]);
    let cases: [(Vec<u8>, &str, bool); 5] = [
        (family1, "channel mapping family 1", true),
        (with(8, 0x10), "version 16", true),
        (with(9, 0), "0 channels", false),
        (with(9, 3), "3 channels", false),
        (head(&l)[..14].to_vec(), "14 bytes", false),
    ];
    for (h, says, unsupported) in cases {
        let e = decode_bytes(ogg_opus_with_head(&packets, &l, h), None).unwrap_err();
        assert!(e.to_string().contains(says) && e.to_string().contains("<memory buffer>"), "{e}");
        assert_eq!(matches!(e, AudioError::Unsupported { .. }), unsupported, "{e:?}");
        assert_eq!(matches!(e, AudioError::Malformed { .. }), !unsupported, "{e:?}");
    }
    // Only headers: no audio.
    let e = decode_bytes(ogg_opus(&[], &l), None).unwrap_err();
    assert!(matches!(e, AudioError::NoAudio { .. }), "{e:?}");
    // A chained second stream is ignored.
    let (a, _, _, _) = mono_file(4800, 5);
    let mut chained = a.clone();
    chained.extend(ogg_opus(&packets, &Layout { serial: 77, ..l.clone() }));
    assert_eq!(decode_bytes(chained, None).unwrap(), decode_bytes(a, None).unwrap());
}

/// Ogg that is not Opus still goes to symphonia (Vorbis), not to the Opus path.
#[test]
fn other_ogg_streams_are_not_taken_for_opus() {
    let mut w = ogg::PacketWriter::new(Vec::new());
    let mut id = b"\x01vorbis".to_vec();
    id.extend([0u8; 23]);
    w.write_packet(id, 1, ogg::PacketWriteEndInfo::EndStream, 0).unwrap();
    let e = decode_bytes(w.into_inner(), None).unwrap_err();
    assert!(!e.to_string().contains("Opus"), "{e}");
}

#[test]
fn mp4_aac_and_webm_are_named() {
    let dir = TempDir::new("containers");
    let mut m4a = b"\0\0\0\x20ftypM4A \0\0\0\0M4A mp42isom\0\0\0\x08free".to_vec();
    m4a.extend([0u8; 500]);
    let adts = |b1: u8| {
        let mut v = vec![0xff, b1, 0x50, 0x80, 0x2e, 0x7f, 0xfc];
        v.extend([0x21u8; 400]);
        v
    };
    let mut webm = vec![0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x86, 0x81, 0x01];
    webm.extend(b"\x42\x82\x84webm");
    webm.extend([0u8; 300]);
    for (name, bytes, says) in [
        ("voice.m4a", m4a, "MP4/AAC"),
        ("voice.aac", adts(0xf1), "AAC"),
        ("voice2.aac", adts(0xf9), "AAC"),
        ("chrome.webm", webm, "WebM/Matroska"),
    ] {
        let path = dir.file(name);
        std::fs::write(&path, &bytes).unwrap();
        let e = decode_file(&path).unwrap_err();
        assert!(matches!(e, AudioError::UnsupportedContainer { .. }), "{name}: {e:?}");
        let msg = e.to_string();
        assert!(msg.contains(name) && msg.contains(says), "{msg}");
        assert!(msg.contains("is not supported (convert it to wav, flac, mp3 or ogg)"), "{msg}");
    }
    let e = decode_file(&dir.file("voice.m4a")).unwrap_err().to_string();
    assert!(e.ends_with("voice.m4a: MP4/AAC audio is not supported (convert it to wav, flac, mp3 or ogg)"), "{e}");
    // An MP3 frame sync is not taken for ADTS.
    let mut mp3 = vec![0xff, 0xfb, 0x90, 0x00];
    mp3.extend([0u8; 400]);
    assert!(!matches!(decode_bytes(mp3, None), Err(AudioError::UnsupportedContainer { .. })));
}

/// `hello.opus`: assets/hello.wav (16 kHz, 59 736 samples) through libopus's `opusenc`
/// (tests/data/README.md). Its length at 24 kHz is the wav's × 1.5, its level and content the
/// wav's.
#[test]
fn the_opusenc_fixture_decodes_like_hello_wav() {
    let opus = load_mono_24k(&data("hello.opus")).unwrap();
    let wav = load_mono_24k(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/hello.wav")).unwrap();
    assert_eq!(wav.len(), 89_604);
    assert_eq!(opus.len(), wav.len(), "pre-skip and end trimming of a libopus file");
    let (ro, rw) = (rms(&opus), rms(&wav));
    assert!((ro / rw - 1.0).abs() < 0.2, "rms {ro} vs the wav's {rw}");
    let c = correlation(&opus, &wav);
    // 0.93 here; one sample of misalignment gives 0.81.
    assert!(c > 0.9, "correlation with hello.wav {c} (misaligned or not the same audio)");
}

/// RFC 6716 §3.2's framing and §3.4's rules, one case per rule (the fuzz target `opus_diff`
/// compares the verdicts with libopus's `opus_packet_parse` on fuzzed packets).
#[test]
fn opus_frame_sizes_follow_rfc_6716() {
    use moshi_engine::audio::opus::opus_frame_sizes;
    // Code 0: one frame, the rest of the packet; a TOC alone is one lost frame.
    assert_eq!(opus_frame_sizes(&[0x78, 1, 2, 3]), Ok(vec![3]));
    assert_eq!(opus_frame_sizes(&[0x78]), Ok(vec![0]));
    assert!(opus_frame_sizes(&[]).unwrap_err().contains("R1"));
    assert!(opus_frame_sizes(&[0x78; 1277]).unwrap_err().contains("R2"));
    // Code 1: two equal halves.
    assert_eq!(opus_frame_sizes(&[0x79, 1, 2, 3, 4]), Ok(vec![2, 2]));
    assert_eq!(opus_frame_sizes(&[0x79]), Ok(vec![0, 0]));
    assert!(opus_frame_sizes(&[0x79, 1, 2, 3]).unwrap_err().contains("R3"));
    // Code 2: a length, then the two frames; a TOC alone has no length byte.
    assert_eq!(opus_frame_sizes(&[0x7a, 2, 9, 9, 8]), Ok(vec![2, 1]));
    assert!(opus_frame_sizes(&[0x7a, 3, 9, 9]).unwrap_err().contains("R4"));
    assert!(opus_frame_sizes(&[0x6a]).is_err(), "code 2 TOC alone");
    let mut two_byte = vec![0x7a, 252, 1];
    two_byte.extend(vec![0u8; 256 + 5]);
    assert_eq!(opus_frame_sizes(&two_byte), Ok(vec![256, 5]));
    // Code 3: count byte, padding, CBR or VBR.
    assert_eq!(opus_frame_sizes(&[0x7b, 0x03, 1, 2, 3, 4, 5, 6]), Ok(vec![2, 2, 2]));
    assert!(opus_frame_sizes(&[0x7b, 0x03, 1, 2, 3, 4]).unwrap_err().contains("R6"));
    assert!(opus_frame_sizes(&[0x7b]).unwrap_err().contains("R6"));
    assert!(opus_frame_sizes(&[0x7b, 0x00]).unwrap_err().contains("R5"));
    assert!(opus_frame_sizes(&[0x7b, 0x07]).unwrap_err().contains("R5"), "7 × 20 ms is over 120 ms");
    assert_eq!(opus_frame_sizes(&[0x7b, 0x82, 1, 7, 8, 9]), Ok(vec![1, 2]));
    assert!(opus_frame_sizes(&[0x7b, 0x82, 5, 7, 8]).unwrap_err().contains("R7"));
    // Padding: 2 bytes of padding after one 1-byte frame; 255 continues the length (254 + …).
    assert_eq!(opus_frame_sizes(&[0x7b, 0x41, 2, 7, 0, 0]), Ok(vec![1]));
    assert!(opus_frame_sizes(&[0x7b, 0x41, 5, 7, 0]).unwrap_err().contains("R7"));
    let mut padded = vec![0x7b, 0x41, 255, 1];
    padded.extend(vec![0u8; 3 + 255]);
    assert_eq!(opus_frame_sizes(&padded), Ok(vec![3]));
    assert!(opus_frame_sizes(&[0x7b, 0x41, 255]).unwrap_err().contains("R7"));
}

/// Packets found by the `opus_diff` fuzz target (fuzz/regressions/opus_diff-unclamped/
/// opus_diff-value-celt-1e6, `OpusCase` format: a flags byte, bit 0 stereo, then length-prefixed
/// packets): libopus decodes the third to samples of 8e6 (opus-rs stays within ±1, so the case
/// needs the `libopus` build). The decoder hands on full scale at most.
#[cfg(feature = "libopus")]
#[test]
fn hostile_packets_decode_to_full_scale_at_most() {
    let data = std::fs::read(data("opus_diff_celt_overshoot.bin")).unwrap();
    let (stereo, mut rest) = (data[0] & 1 != 0, &data[1..]);
    let mut packets = Vec::new();
    while let Some((&l, more)) = rest.split_first() {
        let (len, more) = if l < 0xf0 { (l as usize, more) } else { ((((l & 0x0f) as usize) << 8) | more[0] as usize, &more[1..]) };
        let (p, more) = more.split_at(len.min(more.len()));
        packets.push(p.to_vec());
        rest = more;
    }
    assert_eq!(packets.len(), 4);
    let head = OpusHead { version: 1, channels: if stereo { 2 } else { 1 }, pre_skip: 0, input_rate: 48_000, output_gain: 0, mapping_family: 0 };
    // In order, and each packet from a fresh decoder (as the fuzz target had it after a reset).
    let mut dec = OpusPacketDecoder::new(&head);
    let mut peak = 0f32;
    for p in &packets {
        if let Ok(pcm) = dec.decode(p) {
            peak = pcm.iter().fold(peak, |m, x| m.max(x.abs()));
        }
        if let Ok(pcm) = OpusPacketDecoder::new(&head).decode(p) {
            peak = pcm.iter().fold(peak, |m, x| m.max(x.abs()));
        }
    }
    assert!(peak <= 1.0, "peak {peak}");
    assert!(peak > 0.5, "the case must still reach full scale ({peak})");
}

/// With `libopus`, client audio is decoded by libopus itself: a stream libopus encodes at 48 kHz,
/// VoIP, 10 ms frames at 8 kbit/s (where opus-rs's decoder differs from libopus's by up to full
/// scale: docs/fuzzing.md) decodes through `OpusPacketDecoder` exactly as through libopus.
#[cfg(feature = "libopus")]
#[test]
fn libopus_streams_decode_as_libopus_does() {
    use opusic_sys as sys;
    let (rate, frame) = (48_000usize, 480usize);
    let x: Vec<f32> = (0..rate).map(|i| 0.5 * (2.0 * std::f32::consts::PI * (200.0 + 3000.0 * i as f32 / rate as f32) * i as f32 / rate as f32).sin()).collect();
    let mut err = 0;
    // SAFETY: plain libopus calls on live objects with buffers of the sizes passed.
    let (enc, reference) = unsafe {
        let enc = sys::opus_encoder_create(rate as i32, 1, sys::OPUS_APPLICATION_VOIP, &mut err);
        assert_eq!(err, 0);
        sys::opus_encoder_ctl(enc, sys::OPUS_SET_BITRATE_REQUEST, 8000i32);
        (enc, sys::opus_decoder_create(24_000, 1, &mut err))
    };
    let head = OpusHead { version: 1, channels: 1, pre_skip: 0, input_rate: 48_000, output_gain: 0, mapping_family: 0 };
    let mut ours = OpusPacketDecoder::new(&head);
    let mut packet = vec![0u8; 1500];
    let mut compared = 0;
    for f in x.chunks_exact(frame) {
        // SAFETY: as above.
        let n = unsafe { sys::opus_encode_float(enc, f.as_ptr(), frame as i32, packet.as_mut_ptr(), 1500) };
        assert!(n > 0);
        let p = &packet[..n as usize];
        let mut want = vec![0f32; 2880];
        // SAFETY: as above.
        let m = unsafe { sys::opus_decode_float(reference, p.as_ptr(), p.len() as i32, want.as_mut_ptr(), 2880, 0) };
        let got = ours.decode(p).unwrap();
        assert_eq!(got.len(), m as usize);
        for (a, b) in got.iter().zip(&want) {
            assert_eq!(*a, b.clamp(-1.0, 1.0));
        }
        compared += got.len();
    }
    assert_eq!(compared, 24_000);
    // SAFETY: created above, destroyed once.
    unsafe {
        sys::opus_encoder_destroy(enc);
        sys::opus_decoder_destroy(reference);
    }
}

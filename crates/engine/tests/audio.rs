//! Tests for `moshi_engine::audio`. Every input file is generated here, into a unique folder
//! under the system temp dir: WAVs with hound (or by hand for 64-bit float), FLAC by a tiny
//! verbatim-subframe encoder (audio/flac.rs), Ogg Opus with opus-rs's encoder (audio/opus_util.rs,
//! tests in audio/opus.rs, plus one file made by libopus: tests/data/hello.opus). MP3 and
//! Ogg/Vorbis cannot be generated without an encoder, so those paths are not exercised here.

#[path = "audio/flac.rs"]
mod flac;
#[path = "audio/opus.rs"]
mod opus;
#[path = "audio/opus_util.rs"]
mod opus_util;
#[path = "audio/util.rs"]
mod util;

use std::path::PathBuf;

use flac::flac_bytes;
use util::{int_spec, max_err, random_bytes, raw_wav, sine, write_hound, TempDir};

use moshi_engine::audio::{
    decode_bytes, decode_file, frames, load_mono_24k, resample, to_mono, write_wav, write_wav_i16, Audio, AudioError,
    MIMI_FRAME_SIZE, MIMI_SAMPLE_RATE,
};

// ---------------------------------------------------------------------------------------------
// WAV decoding

#[test]
fn wav_i16_stereo_48k() {
    let dir = TempDir::new("i16");
    let path = dir.file("stereo.wav");
    let n = 4800;
    let left = sine(440.0, 48_000, n, 0.5);
    let right = sine(1000.0, 48_000, n, 0.25);
    let q = |x: f32| (x * 32767.0).round() as i16;
    let inter: Vec<i16> = left.iter().zip(&right).flat_map(|(&l, &r)| [q(l), q(r)]).collect();
    write_hound(&path, int_spec(2, 48_000, 16), &inter);

    let audio = decode_file(&path).unwrap();
    assert_eq!((audio.sample_rate, audio.channels, audio.samples.len()), (48_000, 2, 2 * n));
    for (got, &want) in audio.samples.iter().zip(&inter) {
        assert_eq!(*got, want as f32 / 32768.0);
    }
    let mono = to_mono(&audio);
    assert_eq!(mono.len(), n);
    assert!((mono[100] - (audio.samples[200] + audio.samples[201]) / 2.0).abs() < 1e-7);

    let m24 = load_mono_24k(&path).unwrap();
    assert_eq!(m24.len(), n / 2);
    let want: Vec<f32> =
        sine(440.0, 24_000, n / 2, 0.25).iter().zip(sine(1000.0, 24_000, n / 2, 0.125)).map(|(a, b)| a + b).collect();
    let err = max_err(&m24, &want, 100);
    assert!(err < 2e-3, "load_mono_24k vs direct 24 kHz mix: max err {err}");
}

#[test]
fn wav_f32_mono_24k_round_trip_is_exact() {
    let dir = TempDir::new("f32");
    let path = dir.file("mono.wav");
    let mut samples = sine(300.0, 24_000, 2400, 0.9);
    samples.extend([1.5, -2.0, 1e-30, -0.0, f32::MIN_POSITIVE, 0.123_456_79]);
    write_wav(&path, &samples, MIMI_SAMPLE_RATE).unwrap();
    let audio = decode_file(&path).unwrap();
    assert_eq!((audio.sample_rate, audio.channels), (24_000, 1));
    assert_eq!(audio.samples.len(), samples.len());
    for (a, b) in audio.samples.iter().zip(&samples) {
        assert_eq!(a.to_bits(), b.to_bits());
    }
    // At 24 kHz load_mono_24k is the identity.
    assert_eq!(load_mono_24k(&path).unwrap(), samples);
}

#[test]
fn wav_i24_i32_u8() {
    let dir = TempDir::new("ints");
    let x = sine(500.0, 16_000, 1600, 0.7);

    let p24 = dir.file("i24.wav");
    let s24: Vec<i32> = x.iter().map(|&v| (v as f64 * 8_388_607.0).round() as i32).collect();
    write_hound(&p24, int_spec(1, 16_000, 24), &s24);
    let a = decode_file(&p24).unwrap();
    assert_eq!((a.sample_rate, a.channels, a.samples.len()), (16_000, 1, x.len()));
    assert!(max_err(&a.samples, &x, 0) < 1e-6);

    let p32 = dir.file("i32.wav");
    let s32: Vec<i32> = x.iter().map(|&v| (v as f64 * 2_147_483_647.0).round() as i32).collect();
    write_hound(&p32, int_spec(1, 16_000, 32), &s32);
    assert!(max_err(&decode_file(&p32).unwrap().samples, &x, 0) < 1e-6);

    // hound writes 8-bit WAV as unsigned bytes from i8 samples (x + 128).
    let p8 = dir.file("u8.wav");
    let s8: Vec<i8> = x.iter().map(|&v| (v * 127.0).round() as i8).collect();
    write_hound(&p8, int_spec(1, 16_000, 8), &s8);
    let a8 = decode_file(&p8).unwrap();
    assert_eq!(a8.samples.len(), x.len());
    assert!(max_err(&a8.samples, &x, 0) < 1.5 / 128.0, "u8 error {}", max_err(&a8.samples, &x, 0));
}

#[test]
fn wav_f64_from_bytes() {
    let x: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.01).sin() * 0.8).collect();
    let data: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let audio = decode_bytes(raw_wav(3, 1, 22_050, 64, &data), Some("wav")).unwrap();
    assert_eq!((audio.sample_rate, audio.channels, audio.samples.len()), (22_050, 1, 1000));
    for (a, b) in audio.samples.iter().zip(&x) {
        assert_eq!(*a, *b as f32);
    }
    // Content wins over a wrong hint, and no hint works too.
    let again = decode_bytes(raw_wav(3, 1, 22_050, 64, &data), Some("mp3")).unwrap();
    assert_eq!(again, audio);
    assert_eq!(decode_bytes(raw_wav(3, 1, 22_050, 64, &data), None).unwrap(), audio);
}

// ---------------------------------------------------------------------------------------------
// Damaged and non-audio input

#[test]
fn missing_empty_and_directory() {
    let dir = TempDir::new("bad");
    let missing = dir.file("nope.wav");
    let e = decode_file(&missing).unwrap_err();
    assert!(matches!(e, AudioError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.wav"), "{e}");

    let empty = dir.file("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let e = decode_file(&empty).unwrap_err();
    assert!(matches!(e, AudioError::Empty { .. }), "{e:?}");
    assert!(e.to_string().contains("empty.wav") && e.to_string().contains("0 bytes"), "{e}");
    assert!(matches!(decode_bytes(Vec::new(), None), Err(AudioError::Empty { .. })));

    let e = decode_file(&dir.0).unwrap_err();
    assert!(matches!(e, AudioError::Io { .. }), "{e:?}");
}

#[test]
fn random_bytes_and_text_are_not_audio() {
    let dir = TempDir::new("rand");
    for seed in 1..20u64 {
        let bytes = random_bytes(64 * 1024, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if bytes[0] == 0xff {
            continue; // could be an MPEG sync word; other seeds cover this case
        }
        let path = dir.file("noise.mp3");
        std::fs::write(&path, &bytes).unwrap();
        let e = decode_file(&path).unwrap_err();
        assert!(matches!(e, AudioError::UnknownFormat { .. }), "seed {seed}: {e:?}");
        assert!(e.to_string().contains("noise.mp3"), "{e}");
        assert!(matches!(decode_bytes(bytes, Some("wav")), Err(AudioError::UnknownFormat { .. })));
    }
    let e = decode_bytes(b"hello, this is not a sound file\n".to_vec(), Some("wav")).unwrap_err();
    assert!(e.to_string().contains("<memory buffer>") && e.to_string().contains("68 65 6c 6c"), "{e}");
    assert!(matches!(decode_bytes(b"ab".to_vec(), None), Err(AudioError::UnknownFormat { .. })));
    // A correct magic followed by garbage must fail cleanly too (any error, no panic).
    for magic in [&b"RIFF"[..], b"fLaC", b"OggS", b"ID3\x03\x00\x00\x00\x00\x00\x10", b"\xff\xfb\x90\x00"] {
        let mut bytes = magic.to_vec();
        bytes.extend(random_bytes(4096, 42));
        assert!(decode_bytes(bytes, None).is_err(), "garbage after {magic:?} decoded");
    }
}

fn i16_wav(dir: &TempDir, channels: u16, n_frames: usize) -> (PathBuf, Vec<i16>) {
    let path = dir.file("full.wav");
    let samples: Vec<i16> = (0..n_frames * channels as usize).map(|i| ((i * 37) % 20_000) as i16 - 10_000).collect();
    write_hound(&path, int_spec(channels, 16_000, 16), &samples);
    (path, samples)
}

#[test]
fn wav_truncated_in_header_fails_clearly() {
    let dir = TempDir::new("trunc-hdr");
    let (full, _) = i16_wav(&dir, 1, 100);
    let bytes = std::fs::read(&full).unwrap();
    assert_eq!(bytes.len(), 44 + 200);
    let cut = dir.file("cut.wav");
    for len in 1..44 {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let e = decode_file(&cut).unwrap_err();
        if len >= 4 {
            assert!(matches!(e, AudioError::Truncated { .. }), "cut at {len}: {e:?}");
            assert!(e.to_string().contains("cut.wav") && e.to_string().contains("truncated"), "{e}");
        } else {
            assert!(matches!(e, AudioError::UnknownFormat { .. }), "cut at {len}: {e:?}");
        }
    }
    // Header complete, data chunk empty: "contains no audio".
    std::fs::write(&cut, &bytes[..44]).unwrap();
    let e = decode_file(&cut).unwrap_err();
    assert!(matches!(e, AudioError::NoAudio { .. }), "{e:?}");
    assert!(e.to_string().contains("contains no audio"), "{e}");
}

/// Decided behaviour: a WAV cut inside its data decodes every complete frame and succeeds
/// (with a tracing warning), dropping only the partial last frame.
#[test]
fn wav_truncated_mid_data_keeps_complete_frames() {
    let dir = TempDir::new("trunc-data");
    let (full, samples) = i16_wav(&dir, 2, 5000);
    let bytes = std::fs::read(&full).unwrap();
    let header = bytes.len() - samples.len() * 2;
    let cut = dir.file("cut.wav");
    for keep_frames in [1usize, 1000, 1152, 4999] {
        for extra in [0usize, 1, 3] {
            std::fs::write(&cut, &bytes[..header + keep_frames * 4 + extra]).unwrap();
            let a = decode_file(&cut).unwrap();
            assert_eq!(a.samples.len(), keep_frames * 2, "kept {keep_frames} frames + {extra} bytes");
            for (g, &w) in a.samples.iter().zip(&samples) {
                assert_eq!(*g, w as f32 / 32768.0);
            }
        }
    }
}

#[test]
fn wav_with_zero_samples_contains_no_audio() {
    let dir = TempDir::new("zero");
    let path = dir.file("silence.wav");
    write_hound::<i16>(&path, int_spec(1, 24_000, 16), &[]);
    let e = decode_file(&path).unwrap_err();
    assert!(matches!(e, AudioError::NoAudio { .. }), "{e:?}");
    assert!(e.to_string().contains("silence.wav"), "{e}");
    let path = dir.file("empty-f32.wav");
    write_wav(&path, &[], 24_000).unwrap();
    assert!(matches!(decode_file(&path), Err(AudioError::NoAudio { .. })));
}

// ---------------------------------------------------------------------------------------------
// Writing

#[test]
fn non_finite_samples_are_rejected_on_write() {
    let dir = TempDir::new("nonfinite");
    for (bad, idx) in [(f32::NAN, 3usize), (f32::INFINITY, 0), (f32::NEG_INFINITY, 9)] {
        let mut x = vec![0.1f32; 10];
        x[idx] = bad;
        let path = dir.file("bad.wav");
        let e = write_wav(&path, &x, 24_000).unwrap_err();
        assert!(matches!(e, AudioError::NonFiniteSample { index, .. } if index == idx), "{e:?}");
        assert!(e.to_string().contains(&format!("index {idx}")) && e.to_string().contains("bad.wav"), "{e}");
        assert!(!path.exists(), "a file was written despite the error");
        let e = write_wav_i16(&path, &x, 24_000).unwrap_err();
        assert!(matches!(e, AudioError::NonFiniteSample { index, .. } if index == idx), "{e:?}");
        assert!(!path.exists());
    }
    assert!(matches!(write_wav(&dir.file("r0.wav"), &[0.0], 0), Err(AudioError::Write { .. })));
    let e = write_wav(&dir.file("no/such/dir.wav"), &[0.0], 24_000).unwrap_err();
    assert!(matches!(e, AudioError::Write { .. }) && e.to_string().contains("dir.wav"), "{e:?}");
}

#[test]
fn write_i16_clamps_and_reads_back() {
    let dir = TempDir::new("i16w");
    let path = dir.file("out.wav");
    let x = [0.0f32, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0, 1e-6];
    write_wav_i16(&path, &x, 16_000).unwrap();
    let a = decode_file(&path).unwrap();
    assert_eq!((a.sample_rate, a.channels), (16_000, 1));
    let want: Vec<f32> =
        [0i16, 16384, -16384, 32767, -32767, 32767, -32767, 0].iter().map(|&v| v as f32 / 32768.0).collect();
    assert_eq!(a.samples, want);
}

// ---------------------------------------------------------------------------------------------
// Resampling, mono, frames

#[test]
fn resample_48k_to_24k_is_phase_aligned() {
    let x = sine(1000.0, 48_000, 48_000, 0.5);
    let y = resample(&x, 48_000, 24_000).unwrap();
    assert_eq!(y.len(), 24_000);
    let err = max_err(&y, &sine(1000.0, 24_000, 24_000, 0.5), 240);
    assert!(err < 1e-4, "48k->24k max err {err}");
}

#[test]
fn resample_16k_to_24k_length_and_frequency() {
    let n = 2 * 16_000 + 123;
    let x = sine(440.0, 16_000, n, 0.8);
    let y = resample(&x, 16_000, 24_000).unwrap();
    assert_eq!(y.len(), ((n as f64) * 1.5).round() as usize);
    // Frequency: count upward zero crossings over the central second.
    let mid = &y[2400..2400 + 24_000];
    let ups = mid.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
    assert!((439..=441).contains(&ups), "{ups} upward crossings in 1 s, want 440");
    let err = max_err(&y, &sine(440.0, 24_000, y.len(), 0.8), 240);
    assert!(err < 1e-3, "16k->24k max err {err}");
}

#[test]
fn resample_other_rates_are_aligned() {
    for (from, to, f) in
        [(44_100u32, 24_000u32, 2000.0), (24_000, 48_000, 3000.0), (8_000, 24_000, 700.0), (22_050, 24_000, 5000.0)]
    {
        let x = sine(f, from, from as usize, 0.5);
        let y = resample(&x, from, to).unwrap();
        assert_eq!(y.len(), to as usize);
        let err = max_err(&y, &sine(f, to, to as usize, 0.5), to as usize / 100);
        assert!(err < 2e-3, "{from}->{to} at {f} Hz: max err {err}");
    }
}

#[test]
fn resample_lengths_identity_and_bad_rates() {
    for n in [0usize, 1, 2, 3, 7, 1919, 1920, 10_001] {
        for (from, to) in [(48_000u32, 24_000u32), (44_100, 24_000), (16_000, 24_000), (24_000, 44_100)] {
            let y = resample(&vec![0.25; n], from, to).unwrap();
            let want = (n as f64 * to as f64 / from as f64 + 0.5).floor() as usize;
            assert_eq!(y.len(), want, "n={n} {from}->{to}");
        }
    }
    let x = sine(100.0, 24_000, 999, 0.3);
    assert_eq!(resample(&x, 24_000, 24_000).unwrap(), x);
    for (from, to) in [(0u32, 24_000u32), (24_000, 0), (0, 0)] {
        let e = resample(&x, from, to).unwrap_err();
        assert!(matches!(e, AudioError::InvalidSampleRate { .. }), "{e:?}");
    }
    // Strong energy above the new Nyquist is removed, not aliased.
    let hi = resample(&sine(20_000.0, 48_000, 48_000, 0.5), 48_000, 24_000).unwrap();
    let peak = hi[1000..23_000].iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(peak < 1e-3, "20 kHz leaked through as {peak}");
}

#[test]
fn to_mono_and_frames() {
    let a = Audio { samples: vec![1.0, 0.0, 0.5, -0.5, -1.0, -0.5], sample_rate: 8000, channels: 2 };
    assert_eq!(to_mono(&a), vec![0.5, 0.0, -0.75]);
    assert_eq!((a.num_frames(), a.duration_s()), (3, 3.0 / 8000.0));
    let m = Audio { samples: vec![0.1, 0.2], sample_rate: 8000, channels: 1 };
    assert_eq!(to_mono(&m), m.samples);

    let x: Vec<f32> = (0..2 * MIMI_FRAME_SIZE + 5).map(|i| i as f32).collect();
    let fr: Vec<Vec<f32>> = frames(&x, MIMI_FRAME_SIZE).collect();
    assert_eq!(fr.len(), 3);
    assert!(fr.iter().all(|f| f.len() == MIMI_FRAME_SIZE));
    assert_eq!(fr[1][0], MIMI_FRAME_SIZE as f32);
    assert_eq!(&fr[2][..5], &x[2 * MIMI_FRAME_SIZE..]);
    assert!(fr[2][5..].iter().all(|&v| v == 0.0));
    assert_eq!(frames(&x[..MIMI_FRAME_SIZE], MIMI_FRAME_SIZE).count(), 1);
    assert_eq!(frames(&[], MIMI_FRAME_SIZE).count(), 0);
}

// ---------------------------------------------------------------------------------------------
// FLAC, built in code (see audio/flac.rs)

#[test]
fn flac_built_in_code_decodes() {
    let dir = TempDir::new("flac");
    let n = 24_000 + 77;
    let x = sine(1000.0, 24_000, n, 0.6);
    let right = sine(250.0, 24_000, n, 0.3);
    let q = |v: f32| (v * 32767.0).round() as i16;
    let mono: Vec<i16> = x.iter().map(|&v| q(v)).collect();
    let bytes = flac_bytes(&mono, 1, 24_000, 1024);

    let a = decode_bytes(bytes.clone(), Some("flac")).unwrap();
    assert_eq!((a.sample_rate, a.channels, a.samples.len()), (24_000, 1, n));
    for (g, &w) in a.samples.iter().zip(&mono) {
        assert_eq!(*g, w as f32 / 32768.0);
    }
    let path = dir.file("tone.flac");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(decode_file(&path).unwrap(), a);

    let stereo: Vec<i16> = x.iter().zip(&right).flat_map(|(&l, &r)| [q(l), q(r)]).collect();
    let path = dir.file("stereo48.flac");
    let up: Vec<i16> = stereo.iter().map(|&s| s / 2).collect();
    std::fs::write(&path, flac_bytes(&up, 2, 48_000, 4096)).unwrap();
    let s = decode_file(&path).unwrap();
    assert_eq!((s.sample_rate, s.channels, s.samples.len()), (48_000, 2, 2 * n));
    assert_eq!(s.samples[1], up[1] as f32 / 32768.0);
    assert_eq!(load_mono_24k(&path).unwrap().len(), n.div_ceil(2));

    // A FLAC cut mid-stream keeps what it can or fails clearly; it never panics.
    for cut in [bytes.len() / 2, bytes.len() - 1, 50] {
        match decode_bytes(bytes[..cut].to_vec(), Some("flac")) {
            Ok(a) => assert!(!a.samples.is_empty() && a.samples.len() < n),
            Err(e) => assert!(e.to_string().contains("<memory buffer>"), "{e}"),
        }
    }
}

//! `moshi-rs run` and `moshi-rs codec roundtrip` on an Ogg Opus file (the libopus-made fixture
//! crates/engine/tests/data/hello.opus, assets/hello.wav through `opusenc`), on the embedded tiny
//! model: the file is read, and the output has the length its audio implies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moshi-rs-opus-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moshi-rs")).args(args).output().expect("run moshi-rs")
}

fn wav_len(p: &Path) -> usize {
    let r = hound::WavReader::open(p).unwrap();
    assert_eq!((r.spec().sample_rate, r.spec().channels), (24_000, 1));
    r.len() as usize
}

/// hello.wav holds 59 736 samples at 16 kHz; the Opus file decodes to the same duration at
/// 24 kHz: 89 604 samples, 47 frames of 1920.
const OPUS_SAMPLES_24K: usize = 89_604;

fn opus() -> PathBuf {
    repo().join("crates/engine/tests/data/hello.opus")
}

#[test]
fn codec_roundtrip_reads_ogg_opus() {
    let out = tmp("rt.wav");
    let o = run(&["codec", "roundtrip", opus().to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(wav_len(&out), OPUS_SAMPLES_24K);
}

#[test]
fn run_reads_ogg_opus() {
    let out = tmp("reply.wav");
    let o = run(&["run", "--input", opus().to_str().unwrap(), "--output", out.to_str().unwrap(), "--model", "tiny"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let frames = OPUS_SAMPLES_24K.div_ceil(1920);
    // The input's frames, then 2 s of silence (25 frames).
    assert_eq!(wav_len(&out), (frames + 25) * 1920);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
    assert_eq!(summary["input_frames"].as_u64().unwrap() as usize, frames);
}

#[test]
fn an_m4a_file_is_named_as_unsupported() {
    let m4a = tmp("voice.m4a");
    let mut bytes = b"\0\0\0\x20ftypM4A \0\0\0\0M4A mp42isom".to_vec();
    bytes.extend([0u8; 200]);
    std::fs::write(&m4a, bytes).unwrap();
    let o = run(&["codec", "roundtrip", m4a.to_str().unwrap(), tmp("x.wav").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("voice.m4a") && err.contains("MP4/AAC audio is not supported"), "{err}");
}

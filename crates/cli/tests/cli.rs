//! The `moshi-rs` binary end to end on the embedded tiny model: the README's first command,
//! encode + decode equal to the round trip, and clear errors (never a panic) on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moshi-rs"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moshi-rs-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run moshi-rs")
}

fn wav_samples(p: &Path) -> Vec<f32> {
    hound::WavReader::open(p).unwrap().into_samples::<f32>().map(|s| s.unwrap()).collect()
}

#[test]
fn roundtrip_writes_24khz_wav_of_the_input_length_and_matches_encode_decode() {
    let input = repo().join("assets/hello.wav");
    let (rt, codes, dec) = (tmp("rt.wav"), tmp("codes.safetensors"), tmp("dec.wav"));
    let out = run(&["codec", "roundtrip", input.to_str().unwrap(), rt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spec = hound::WavReader::open(&rt).unwrap().spec();
    assert_eq!((spec.sample_rate, spec.channels), (24_000, 1));
    let input_len = hound::WavReader::open(&input).unwrap().len() as usize; // 16 kHz mono
    assert_eq!(wav_samples(&rt).len(), (input_len * 3).div_ceil(2));

    assert!(run(&["codec", "encode", input.to_str().unwrap(), codes.to_str().unwrap()]).status.success());
    let out = run(&["codec", "decode", codes.to_str().unwrap(), dec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wav_samples(&rt), wav_samples(&dec), "encode+decode must equal roundtrip");
}

fn assert_clean_failure(args: &[&str], must_mention: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert!(err.contains(must_mention), "error for {args:?} should mention {must_mention:?}: {err}");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let empty = tmp("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let junk = tmp("junk.wav");
    std::fs::write(&junk, (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>()).unwrap();
    let truncated = tmp("truncated.wav");
    let bytes = std::fs::read(repo().join("assets/hello.wav")).unwrap();
    std::fs::write(&truncated, &bytes[..30]).unwrap();
    let out = tmp("out.wav");
    let o = out.to_str().unwrap();
    assert_clean_failure(&["codec", "roundtrip", empty.to_str().unwrap(), o], "empty.wav");
    assert_clean_failure(&["codec", "roundtrip", junk.to_str().unwrap(), o], "junk.wav");
    assert_clean_failure(&["codec", "roundtrip", truncated.to_str().unwrap(), o], "truncated.wav");
    assert_clean_failure(&["codec", "roundtrip", "/nonexistent/x.wav", o], "x.wav");
    assert_clean_failure(&["codec", "decode", junk.to_str().unwrap(), o], "junk.wav");
    let hello = repo().join("assets/hello.wav");
    assert_clean_failure(&["codec", "roundtrip", hello.to_str().unwrap(), o, "--model", "/nonexistent"], "/nonexistent");
}

#[test]
fn lm_check_reports_the_layout_or_names_the_problem() {
    let lm = repo().join("golden/lm_tiny");
    let (weights, config) = (lm.join("model.safetensors"), lm.join("config.json"));
    let out = run(&["lm", "check", weights.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("PyTorch layout: all 95 tensors"));
    // The tiny file against the 7B config: the first tensor is named with both shapes.
    assert_clean_failure(&["lm", "check", weights.to_str().unwrap()], "depformer.layers.0.gating.0.linear_in.weight` has shape [176, 32], expected [5632, 1024]");
    let mimi = repo().join("golden/mimi_tiny/model.safetensors");
    assert_clean_failure(&["lm", "check", mimi.to_str().unwrap()], "looks like a Mimi checkpoint");
}

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

fn summary(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The README's first command: `run` on the embedded tiny Moshi. Same seed → byte-identical
/// reply (same SHA-256 in the summary, same wav bytes); another seed → another reply.
#[test]
fn run_is_deterministic_for_a_seed_and_writes_reply_and_summary() {
    let input = repo().join("assets/hello.wav");
    let go = |name: &str, seed: &str| {
        let out = tmp(name);
        let o = run(&["run", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "--model", "tiny", "--seed", seed]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (out.clone(), summary(&out.with_extension("json")), String::from_utf8_lossy(&o.stdout).to_string())
    };
    let (a, sa, ta) = go("reply_a.wav", "3");
    let (b, sb, tb) = go("reply_b.wav", "3");
    let (_, sc, _) = go("reply_c.wav", "4");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(sa["output_pcm_sha256"], sb["output_pcm_sha256"]);
    assert_ne!(sa["output_pcm_sha256"], sc["output_pcm_sha256"]);
    assert_eq!(ta, tb);
    assert_eq!(sa["transcript"].as_str().unwrap().trim(), ta.trim());
    // 16 kHz input of N samples → ceil(1.5 N / 1920) frames, then 2 s of silence (25 frames).
    let n = hound::WavReader::open(&input).unwrap().len() as usize;
    let frames = (n * 3).div_ceil(2).div_ceil(1920);
    assert_eq!(sa["input_frames"].as_u64().unwrap() as usize, frames);
    assert_eq!(sa["frames"].as_u64().unwrap() as usize, frames + 25);
    assert_eq!(wav_samples(&a).len(), (frames + 25) * 1920);
    assert_eq!(sa["lm_steps"].as_u64().unwrap() as usize, frames + 26, "the first frame is given twice");
}

#[test]
fn run_rejects_bad_inputs_cleanly() {
    let empty = tmp("run_empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let out = tmp("run_out.wav");
    let o = out.to_str().unwrap();
    assert_clean_failure(&["run", "--input", empty.to_str().unwrap(), "--output", o, "--model", "tiny"], "run_empty.wav");
    let hello = repo().join("assets/hello.wav");
    let h = hello.to_str().unwrap();
    assert_clean_failure(&["run", "--input", h, "--output", o, "--model", "/nonexistent/folder"], "/nonexistent/folder");
    // A folder without config.json or the released files says so.
    let dir = tmp("empty_model_dir");
    std::fs::create_dir_all(&dir).unwrap();
    assert_clean_failure(&["run", "--input", h, "--output", o, "--model", dir.to_str().unwrap()], "no config.json");
    // The tiny LM with the real Mimi config: Mimi's weights do not fit.
    let lm = repo().join("golden/moshi_tiny");
    let args = [
        "run", "--input", h, "--output", o,
        "--lm-weights", lm.join("model.safetensors").to_str().unwrap(),
        "--config", lm.join("config.json").to_str().unwrap(),
        "--mimi-weights", repo().join("golden/mimi_tiny/model.safetensors").to_str().unwrap(),
        "--tokenizer", repo().join("golden/lm_tiny/tokenizer.model").to_str().unwrap(),
    ].map(|s| s.to_string());
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    assert_clean_failure(&args, "encoder.model.0.conv.conv.weight");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// `verify golden` passes on the committed traces, and on a copy whose tiny LM has one weight
/// matrix off by 0.1% it fails, naming the LM's first stage (Mimi's checks still pass).
#[test]
fn verify_golden_passes_and_names_the_first_broken_stage() {
    let golden = repo().join("golden");
    let out = run(&["verify", "golden", "--golden", golden.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("all 50 checks passed"), "{table}");

    let broken = tmp("golden_broken");
    copy_dir(&golden, &broken);
    let path = broken.join("lm_tiny/model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let name = "transformer.layers.1.gating.linear_out.weight";
    let w = (t[name].clone() * 1.001).unwrap();
    t.insert(name.to_string(), w);
    candle_core::safetensors::save(&t, &path).unwrap();
    let out = run(&["verify", "golden", "--golden", broken.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the first is `lm teacher-forced` / `transformer_out`"), "{err}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().filter(|l| l.starts_with("mimi")).all(|l| l.ends_with("ok")), "{table}");
}

/// `verify model` on the CPU against itself passes with zero error; with a 1% fault injected into
/// temporal layer 1 on the device side it fails and names that layer first.
#[test]
fn verify_model_names_the_faulty_layer() {
    // 15 whole-sequence checks, 4 per streamed KV cache kind, then `lm sampled` (one row on the
    // CPU: device vs host sampler; CUDA adds the graph row), then `lm q8` (11).
    let ok = run(&["verify", "model", "--model", "tiny", "--frames", "4", "--kv-cache", "model,int8"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    // … and the `lm q8` group: 2 layers, out_norm, 2 heads, 2 agreements; streamed, 4.
    assert!(stdout.contains("all 35 checks passed") && stdout.contains("lm sampled") && stdout.contains("lm q8 streamed"), "{stdout}");
    assert!(stdout.contains("lm streamed, 8-bit KV cache") && stdout.contains("lm streamed, model-dtype KV cache"), "{stdout}");
    let bad = run(&["verify", "model", "--model", "tiny", "--frames", "4", "--inject-fault-layer", "1"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("the first is `lm temporal` / `layer 1`"), "{err}");
    let bf16 = run(&["verify", "model", "--model", "tiny", "--frames", "4", "--dtype", "bf16"]);
    assert!(bf16.status.success(), "bf16 within its tolerance: {}", String::from_utf8_lossy(&bf16.stdout));
}

/// `bench` on the tiny Moshi, batch 2: the JSON line has every stage's percentiles and the
/// real-time factor; the plot is drawn.
#[test]
fn bench_reports_stages_and_real_time_factor() {
    let out = run(&["bench", "--model", "tiny", "--frames", "12", "--warmup", "1", "--batch", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for stage in ["encode_ms", "lm_ms", "decode_ms", "total_ms"] {
        let s = &json[stage];
        let (m, p90, p99) = (s["median"].as_f64().unwrap(), s["p90"].as_f64().unwrap(), s["p99"].as_f64().unwrap());
        assert!(m > 0.0 && m <= p90 && p90 <= p99, "{stage}: {s}");
    }
    assert_eq!(json["batch"], 2);
    assert!(json["real_time_factor"].as_f64().unwrap() > 0.0);
    assert!(stdout.contains("80.0 ms -"), "the real-time budget line: {stdout}");
}

/// `verify ops` passes on the CPU; with a fault injected into softmax it fails naming softmax.
#[test]
fn verify_ops_names_the_faulty_op() {
    let ok = run(&["verify", "ops"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = run(&["verify", "ops", "--inject-fault", "softmax"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("the first is `softmax f32`"), "{err}");
    assert_clean_failure(&["verify", "ops", "--inject-fault", "no_such_op"], "no_such_op");
}

/// A Hugging Face repo id resolved from the standard cache layout under HF_HOME with
/// HF_HUB_OFFLINE=1 (no network): the tiny Moshi's files under the released names, with a
/// Kyutai config.json, in `hub/models--test--tiny-moshi/snapshots/<rev>/`. Missing repos name
/// themselves.
#[test]
fn run_resolves_a_repo_from_the_hf_cache_offline() {
    let home = tmp("hf_home");
    let repo_dir = home.join("hub/models--test--tiny-moshi");
    let snap = repo_dir.join("snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), "0123456789abcdef0123456789abcdef01234567").unwrap();
    let g = repo().join("golden");
    std::fs::copy(g.join("moshi_tiny/model.safetensors"), snap.join("model.safetensors")).unwrap();
    std::fs::copy(g.join("mimi_tiny/model.safetensors"), snap.join("tokenizer-e351c8d8-checkpoint125.safetensors")).unwrap();
    std::fs::copy(g.join("lm_tiny/tokenizer.model"), snap.join("tokenizer_spm_32k_3.model")).unwrap();
    std::fs::copy(g.join("mimi_tiny/config.json"), snap.join("mimi_config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(g.join("moshi_tiny/config.json")).unwrap()).unwrap();
    cfg["mimi_name"] = "tokenizer-e351c8d8-checkpoint125.safetensors".into();
    cfg["tokenizer_name"] = "tokenizer_spm_32k_3.model".into();
    cfg["mimi_config_name"] = "mimi_config.json".into();
    std::fs::write(snap.join("config.json"), cfg.to_string()).unwrap();

    let input = repo().join("assets/hello.wav");
    let (a, b) = (tmp("hf_reply.wav"), tmp("tiny_reply.wav"));
    let go = |model: &str, out: &Path| {
        bin()
            .args(["run", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "--model", model, "--greedy", "--max-steps", "20"])
            .env("HF_HOME", &home)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let o = go("test/tiny-moshi", &a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(go("tiny", &b).status.success());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "the cached repo is the tiny Moshi");
    let missing = go("test/not-there", &a);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("HF_HUB_OFFLINE=1 and") && err.contains("of test/not-there is not in the local Hugging Face cache"), "{err}");
}

/// A float tensor of a safetensors file (header parsed here: the tests need no tensor crate).
fn safetensors_f32(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[name];
    assert_eq!(t["dtype"], "F32");
    let (a, b) = (t["data_offsets"][0].as_u64().unwrap() as usize, t["data_offsets"][1].as_u64().unwrap() as usize);
    bytes[8 + n + a..8 + n + b].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn run_with_a_persona_and_a_voice_gives_the_personaplex_reference_wav() {
    let dir = repo().join("golden/personaplex_tiny");
    let (out_wav, out_json) = (tmp("pp.wav"), tmp("pp.json"));
    let out = run(&[
        "run", "--model", dir.to_str().unwrap(), "--greedy", "--silence", "0",
        "--text-prompt", "You are a helpful assistant named Ada.",
        "--voice-prompt", "voice", "--voice-prompt-dir", dir.to_str().unwrap(),
        "--summary", out_json.to_str().unwrap(),
        dir.join("user.wav").to_str().unwrap(), out_wav.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out_json);
    assert_eq!((s["prompt"]["frames"].as_u64(), s["prompt"]["text_tokens"].as_u64()), (Some(77), Some(38)));
    assert_eq!(s["prompt"]["prefilled_frames"].as_u64(), Some(76), "all but the last prompt frame in one forward");
    // The fork's offline wav: its 24 decoded frames trimmed to the input's 44544 samples.
    let want = safetensors_f32(&dir.join("io.safetensors"), "greedy.decoded_pcm");
    let got = wav_samples(&out_wav);
    assert_eq!(got.len(), 44544);
    let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 2e-6, "reply differs from the reference's wav by {worst}");
}

#[test]
fn run_refuses_prompts_it_cannot_honour() {
    let dir = repo().join("golden/personaplex_tiny");
    let input = repo().join("assets/hello.wav");
    let o = tmp("refused.wav");
    let (i, o) = (input.to_str().unwrap(), o.to_str().unwrap());
    // Kyutai's Moshi has no prompt training: refused, not ignored.
    assert_clean_failure(&["run", "--model", "tiny", "--text-prompt", "You are Ada.", i, o], "no prompt training");
    assert_clean_failure(&["run", "--model", dir.to_str().unwrap(), "--voice-prompt", "NOPE", "--voice-prompt-dir", dir.to_str().unwrap(), i, o], "NOPE.pt");
}

/// `quantize` writes the tiny LM as Kyutai's q8 GGUF; `run` with it and `run --weights q8` on the
/// safetensors give the same reply, bit for bit, and it differs from the float model's; bad
/// arguments are named.
#[test]
fn quantize_then_run_equals_weights_q8() {
    let (input, tiny) = (repo().join("assets/hello.wav"), repo().join("golden/moshi_tiny"));
    let gguf = tmp("tiny.q8.gguf");
    let q = run(&["quantize", tiny.join("model.safetensors").to_str().unwrap(), gguf.to_str().unwrap(), "--config", tiny.join("config.json").to_str().unwrap()]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let report: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&q.stdout).trim()).unwrap();
    assert_eq!((report["tensors"].as_u64(), report["q8_tensors"].as_u64()), (Some(151), Some(96)), "{report}");
    let sha = |extra: &[&str], name: &str| {
        let out = tmp(name);
        let mut args = vec!["run", input.to_str().unwrap(), out.to_str().unwrap(), "--model", tiny.to_str().unwrap(), "--max-steps", "20"];
        args.extend_from_slice(extra);
        let r = run(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
        (j["output_pcm_sha256"].as_str().unwrap().to_string(), j["weights"].as_str().unwrap().to_string())
    };
    let from_gguf = sha(&["--lm-weights", gguf.to_str().unwrap()], "g.wav");
    let on_load = sha(&["--weights", "q8"], "q.wav");
    let float = sha(&[], "f.wav");
    assert_eq!(from_gguf, on_load);
    assert_eq!((from_gguf.1.as_str(), float.1.as_str()), ("q8", "model"));
    assert_ne!(from_gguf.0, float.0);
    let bad = run(&["quantize", tiny.join("model.safetensors").to_str().unwrap(), tmp("x.bin").to_str().unwrap()]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("must end in .gguf"));
    let wrong = run(&["quantize", tiny.join("model.safetensors").to_str().unwrap(), tmp("y.gguf").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && err.contains("has shape") && err.contains("expected"), "{err}");
}

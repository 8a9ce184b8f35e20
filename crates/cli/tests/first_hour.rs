//! What a new user meets in the first hour (issue 12): the CLI fails fast with the bad value or
//! path named, speaks Kyutai's `run_inference.py` flags, follows a repo's config.json, and writes
//! output people can read. All on the embedded tiny model and local files (a fake Hugging Face
//! endpoint on loopback for the download errors).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moshi-rs"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn hello() -> String {
    repo().join("assets/hello.wav").display().to_string()
}

fn golden(p: &str) -> String {
    repo().join("golden").join(p).display().to_string()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moshi-rs-first-hour-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run moshi-rs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[track_caller]
fn fails_with(args: &[&str], must_mention: &str) -> String {
    let o = run(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert!(err.contains(must_mention), "error for {args:?} should mention {must_mention:?}: {err}");
    err
}

/// A folder whose config.json names weights that do not exist: any attempt to load the model
/// fails with "LM weights file is not there". Errors about paths must come before that.
fn unloadable_model() -> String {
    let dir = tmp("unloadable_model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), std::fs::read(golden("moshi_tiny/config.json")).unwrap()).unwrap();
    s(&dir)
}

#[test]
fn paths_are_checked_before_any_model_loads() {
    let m = unloadable_model();
    let out = s(&tmp("out.wav"));
    fails_with(&["run", "/no/such/input.wav", &out, "--model", &m], "input /no/such/input.wav: no such file");
    fails_with(&["run", &hello(), "/no/such/folder/out.wav", "--model", &m], "the folder /no/such/folder does not exist");
    fails_with(&["run", "--input", &hello(), "--output", &hello(), "--model", &m], "is the input file");
    let dir = tmp("a_folder");
    std::fs::create_dir_all(&dir).unwrap();
    fails_with(&["run", &hello(), &s(&dir), "--model", &m], "is a folder");
    fails_with(&["run", &hello(), &out, "--summary", &hello(), "--model", &m], "would overwrite the input");
    // codec: the same checks, before the Mimi loads.
    fails_with(&["codec", "roundtrip", &hello(), &hello(), "--model", &m], "is the input file");
    fails_with(&["codec", "encode", "/no/such/input.wav", &out, "--model", &m], "no such file");
    // The paths are fine: now the model's error comes.
    fails_with(&["run", &hello(), &out, "--model", &m], "LM weights file is not there");
}

#[test]
fn flag_values_are_validated_as_the_server_validates_them() {
    let out = s(&tmp("v.wav"));
    for (flag, value, says) in [
        ("--temperature", "-1", "finite and ≥ 0"),
        ("--temperature", "NaN", "finite and ≥ 0"),
        ("--text-temperature", "inf", "finite and ≥ 0"),
        ("--top-k", "0", "at least 1"),
        ("--silence", "-2", "finite and ≥ 0"),
        ("--max-steps", "0", "at least 1"),
    ] {
        let err = fails_with(&["run", &hello(), &out, flag, value], says);
        assert!(err.contains(flag), "{flag} named: {err}");
    }
    fails_with(&["bench", "--batch", "0"], "--batch");
    fails_with(&["bench", "--batch", "1,0"], "--batch");
    fails_with(&["codec", "bench", "--frames", "0"], "--frames");
    fails_with(&["lm", "bench", "--steps", "0"], "--steps");
}

#[test]
fn errors_have_no_backtrace_and_logs_no_colour_off_a_terminal() {
    let o = bin().args(["run", "/no/such.wav", "/tmp/x.wav"]).env("RUST_BACKTRACE", "1").output().unwrap();
    let err = stderr(&o);
    assert!(err.starts_with("error: input /no/such.wav: no such file"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    let out = tmp("log.wav");
    let o = bin().args(["run", &hello(), &s(&out), "--max-steps", "3"]).env("RUST_LOG", "info").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains('\u{1b}'), "no ANSI escapes when stderr is a pipe: {err:?}");
    for what in ["reading the input", "decoded", "resampling", "loading"] {
        assert!(err.contains(what), "RUST_LOG=info logs {what:?}: {err}");
    }
}

#[test]
fn a_closed_stdout_ends_quietly_and_the_reply_is_still_written() {
    let out = tmp("pipe.wav");
    let _ = std::fs::remove_file(&out);
    let mut child = bin()
        .args(["run", &hello(), &s(&out), "--silence", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 4];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout); // as `| head -c 4` does
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{err}");
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
    assert!(out.is_file() && out.with_extension("json").is_file(), "the reply and the summary are written");
}

#[test]
fn a_folder_without_config_json_says_so_and_shape_errors_name_their_file() {
    let empty = tmp("no_config");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(&["run", &hello(), &s(&tmp("o.wav")), "--model", &s(&empty)], "has no config.json");
    // A config whose LM is wider than its weights: the error names the tensor, both shapes and the file.
    let dir = tmp("wrong_shape");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(golden(&format!("moshi_tiny/{f}")), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["dim"] = serde_json::json!(cfg["dim"].as_u64().unwrap() * 2);
    cfg["mimi_name"] = serde_json::json!(golden("mimi_tiny/model.safetensors"));
    cfg["mimi_config_name"] = serde_json::json!(golden("mimi_tiny/config.json"));
    cfg["tokenizer_name"] = serde_json::json!(golden("lm_tiny/tokenizer.model"));
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = fails_with(&["run", &hello(), &s(&tmp("o.wav")), "--model", &s(&dir)], "model.safetensors: ");
    assert!(err.contains("has shape") || err.contains("shape"), "{err}");
}

/// The tiny Moshi's files under the given names in a Hugging Face cache snapshot (HF_HOME layout).
fn cached_repo(home: &Path, repo: &str, names: [&str; 4], with_config: bool) {
    let dir = home.join(format!("hub/models--{}", repo.replace('/', "--")));
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let snap = dir.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), rev).unwrap();
    let [lm, mimi, tok, mimi_cfg] = names;
    for (from, to) in [("moshi_tiny/model.safetensors", lm), ("mimi_tiny/model.safetensors", mimi), ("lm_tiny/tokenizer.model", tok), ("mimi_tiny/config.json", mimi_cfg)] {
        std::fs::copy(golden(from), snap.join(to)).unwrap();
    }
    if with_config {
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(golden("moshi_tiny/config.json")).unwrap()).unwrap();
        cfg["moshi_name"] = lm.into();
        cfg["mimi_name"] = mimi.into();
        cfg["tokenizer_name"] = tok.into();
        cfg["mimi_config_name"] = mimi_cfg.into();
        std::fs::write(snap.join("config.json"), cfg.to_string()).unwrap();
    }
}

fn reply(args: &[&str], env: &[(&str, &Path)], out: &Path) -> Vec<u8> {
    let mut c = bin();
    c.args(args).args([s(out).as_str(), "--greedy", "--max-steps", "12"]).env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    std::fs::read(out).unwrap()
}

#[test]
fn kyutai_forms_and_config_json_names_give_the_tiny_models_reply() {
    let home = tmp("hf_home_names");
    // Not the released names: the repo's config.json is what says where each file is.
    cached_repo(&home, "test/renamed", ["lm.safetensors", "mimi.safetensors", "text.model", "mimi.json"], true);
    let h = hello();
    let tiny = reply(&["run", "--model", "tiny", "--input", &h, "--output"], &[], &tmp("t.wav"));
    let env = [("HF_HOME", home.as_path())];
    assert_eq!(reply(&["run", &h, "--hf-repo", "test/renamed"], &env, &tmp("r1.wav")), tiny, "--hf-repo and the repo's file names");
    // run_inference.py's file flags, each file given.
    let (lm, cfg) = (golden("moshi_tiny/model.safetensors"), golden("moshi_tiny/config.json"));
    let (mimi, mimi_cfg, tok) = (golden("mimi_tiny/model.safetensors"), golden("mimi_tiny/config.json"), golden("lm_tiny/tokenizer.model"));
    let files = ["run", &h, "--moshi-weight", &lm, "--lm-config", &cfg, "--mimi-weight", &mimi, "--mimi-config", &mimi_cfg, "--tokenizer", &tok];
    assert_eq!(reply(&files, &[], &tmp("r2.wav")), tiny, "--moshi-weight --mimi-weight --tokenizer --lm-config");
    // A file flag replaces one file of the repo.
    assert_eq!(reply(&["run", &h, "--hf-repo", "test/renamed", "--moshi-weight", &lm], &env, &tmp("r3.wav")), tiny);
    let o = bin().args(["run", &h, &s(&tmp("r4.wav")), "--moshi-weight", &golden("mimi_tiny/model.safetensors"), "--hf-repo", "test/renamed"]).env("HF_HOME", &home).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("mimi_tiny/model.safetensors"), "the replaced file is the one named: {}", stderr(&o));

    // codec takes the same sources: the repo, the Moshi folder, the tiny model: the same round trip.
    let rt = |model: &str, name: &str| {
        let out = tmp(name);
        let o = bin().args(["codec", "roundtrip", &h, &s(&out), "--model", model]).env("HF_HOME", &home).env("HF_HUB_OFFLINE", "1").output().unwrap();
        assert!(o.status.success(), "codec --model {model}: {}", stderr(&o));
        std::fs::read(out).unwrap()
    };
    let snap = home.join("hub/models--test--renamed/snapshots/0123456789abcdef0123456789abcdef01234567");
    let t = rt("tiny", "c0.wav");
    assert_eq!(rt("test/renamed", "c1.wav"), t, "codec --model REPO");
    assert_eq!(rt(&s(&snap), "c2.wav"), t, "codec --model MOSHI_FOLDER");
}

/// A loopback HTTP server answering every request with `status`; the requests' first lines.
fn fake_hub(status: &'static str) -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string());
            let _ = write!(c, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, rx)
}

#[test]
fn missing_files_and_gated_repos_are_named_and_unsupported_layouts_refused() {
    let home = tmp("hf_home_missing");
    // The repo's config.json is cached and names a tokenizer that is not: the hub says 404.
    cached_repo(&home, "test/half", ["model.safetensors", "mimi.safetensors", "tok.model", "mimi.json"], true);
    let snap = home.join("hub/models--test--half/snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::remove_file(snap.join("tok.model")).unwrap();
    let (url, requests) = fake_hub("404 Not Found");
    let o = bin().args(["run", &hello(), &s(&tmp("m.wav")), "--model", "test/half"]).env("HF_HOME", &home).env("HF_ENDPOINT", &url).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("repo test/half has no file tok.model"), "{}", stderr(&o));
    assert!(requests.try_iter().any(|r| r.contains("/test/half/resolve/") && r.contains("tok.model")), "asked the hub for tok.model");

    let (url, _) = fake_hub("401 Unauthorized");
    let o = bin().args(["run", &hello(), &s(&tmp("m.wav")), "--model", "test/half"]).env("HF_HOME", &home).env("HF_ENDPOINT", &url).output().unwrap();
    assert!(stderr(&o).contains("HF_TOKEN"), "gated: {}", stderr(&o));

    for repo in ["kyutai/moshiko-mlx-q4", "kyutai/moshiko-candle-q8"] {
        fails_with(&["run", &hello(), &s(&tmp("m.wav")), "--model", repo], repo);
        fails_with(&["codec", "roundtrip", &hello(), &s(&tmp("m.wav")), "--model", repo], repo);
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[test]
fn output_is_a_plain_wav_and_json_uses_the_clis_spellings() {
    let (f, p) = (tmp("plain.wav"), tmp("pcm16.wav"));
    assert!(run(&["run", &hello(), &s(&f), "--max-steps", "30"]).status.success());
    assert!(run(&["run", &hello(), &s(&p), "--max-steps", "30", "--pcm16"]).status.success());
    let (fb, pb) = (std::fs::read(&f).unwrap(), std::fs::read(&p).unwrap());
    assert_eq!((&fb[12..16], le16(&fb, 20), le16(&fb, 34)), (&b"fmt "[..], 3, 32), "IEEE float, not WAVE_FORMAT_EXTENSIBLE");
    assert_eq!((le16(&pb, 20), le16(&pb, 34)), (1, 16), "16-bit PCM");
    let fs: Vec<f32> = hound::WavReader::open(&f).unwrap().into_samples::<f32>().map(Result::unwrap).collect();
    let ps: Vec<i16> = hound::WavReader::open(&p).unwrap().into_samples::<i16>().map(Result::unwrap).collect();
    assert_eq!(fs.len(), ps.len());
    assert!(fs.iter().zip(&ps).all(|(a, &b)| ((a.clamp(-1.0, 1.0) * 32767.0).round() as i16) == b));

    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f.with_extension("json")).unwrap()).unwrap();
    assert_eq!((j["device"].as_str(), j["dtype"].as_str(), j["kv_cache"].as_str()), (Some("cpu"), Some("f32"), Some("model")));
    let mut floats = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<f64>) {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => out.push(n.as_f64().unwrap()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    collect(&j, &mut floats);
    assert!(!floats.is_empty());
    for x in floats {
        assert!(format!("{x}").split('.').nth(1).is_none_or(|d| d.len() <= 4), "rounded: {x}");
    }
    let o = run(&["bench", "--model", "tiny", "--frames", "3", "--warmup", "0", "--json"]);
    let line: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    assert_eq!((line["device"].as_str(), line["dtype"].as_str(), line["kv_cache"].as_str()), (Some("cpu"), Some("f32"), Some("model")));
}

//! What the browser tests (browser.rs: Chromium over CDP; firefox.rs: Firefox over WebDriver
//! BiDi) share: the server they start, a [`Driver`] over either protocol, and the checks of the
//! page's behaviour that any browser can run (polling `window.moshiStatus` and the DOM).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moshi_engine::lm::{GenConfig, SamplingConfig};
use serde_json::Value;

/// The test server's sampling: not the defaults, so that the page is seen to take the server's.
pub const TEXT_TEMPERATURE: f64 = 0.55;
pub const TEXT_TOP_K: usize = 20;

/// The embedded tiny model on 127.0.0.1 (any port), one conversation slot (so that a second
/// client is refused), text sampled at 0.55 / top 20 and audio greedy. It runs on a runtime of
/// its own, so that [`TestServer::kill`] can make it vanish as a dying process would: every
/// socket closed at once, no close frames.
pub struct TestServer {
    server: Option<moshi_server::RunningServer>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn start_server() -> TestServer {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let moshi = moshi_engine::tiny::load_moshi(candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let cfg = moshi_server::ServerConfig {
            max_conversations: 1,
            // The insecure-origin check opens the page as http://moshi.test (mapped to 127.0.0.1).
            allowed_hosts: vec!["moshi.test".into()],
            defaults: GenConfig {
                text: SamplingConfig::sampled(TEXT_TEMPERATURE, TEXT_TOP_K),
                audio: SamplingConfig::greedy(),
            },
            ..moshi_server::ServerConfig::local_test()
        };
        tx.send(rt.block_on(moshi_server::start(cfg, moshi)).unwrap()).unwrap();
        let _ = stopped.recv(); // killed, or the test is over
        rt.shutdown_timeout(Duration::from_secs(2));
    });
    TestServer { server: Some(rx.recv().expect("the server starts")), stop: Some(stop), thread: Some(thread) }
}

impl TestServer {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().unwrap().addr()
    }

    pub fn active(&self) -> usize {
        self.server.as_ref().unwrap().active()
    }

    /// Gone at once: its runtime is dropped (the listener, every connection), then the batch
    /// thread is stopped.
    pub async fn kill(mut self) {
        drop(self.stop.take());
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap()).await.unwrap();
        self.server.take().unwrap().shutdown().await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// Standard base64 (what both protocols return screenshots in).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &d)| n | (d as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// One page in a browser, whatever the protocol.
pub trait Driver {
    /// Evaluate a JavaScript expression (a promise is awaited) and return its value as JSON
    /// (the expression's value goes through `JSON.stringify` in the page); Err: what it threw.
    async fn eval_js(&mut self, expr: &str) -> Result<Value, String>;
    async fn navigate(&mut self, url: &str);
    async fn screenshot(&mut self, path: &Path);
    /// Page exceptions and console errors seen so far, and the browser's stderr tail.
    fn diagnostics(&self) -> String;
}

/// `expr` wrapped so that its value comes back as a JSON string.
pub fn as_json(expr: &str) -> String {
    format!("(async () => JSON.stringify(await ({expr})))()")
}

/// [`Driver::eval_js`], panicking on a throw.
pub async fn eval<D: Driver>(d: &mut D, expr: &str) -> Value {
    match d.eval_js(expr).await {
        Ok(v) => v,
        Err(e) => panic!("evaluating `{expr}` threw: {e}\n{}", d.diagnostics()),
    }
}

pub async fn status<D: Driver>(d: &mut D) -> Value {
    d.eval_js("window.moshiStatus ?? null").await.unwrap_or(Value::Null)
}

pub async fn click<D: Driver>(d: &mut D, id: &str) {
    eval(d, &format!("(document.getElementById('{id}').click(), true)")).await;
}

/// A visible element's text ('' when hidden or missing).
pub async fn text<D: Driver>(d: &mut D, id: &str) -> String {
    let v = eval(
        d,
        &format!(
            "(() => {{ const e = document.getElementById('{id}'); return e && !e.hidden ? e.innerText : ''; }})()"
        ),
    )
    .await;
    v.as_str().unwrap_or("").to_string()
}

/// The status without its bulky parts, for messages.
pub fn brief(s: &Value) -> Value {
    let mut s = s.clone();
    if let Some(m) = s.as_object_mut() {
        for k in ["metadata", "info", "defaults", "session"] {
            m.remove(k);
        }
    }
    s
}

/// Poll `window.moshiStatus` every 100 ms until `ok` holds; panic after `within`, showing `what`.
pub async fn wait_for<D: Driver>(d: &mut D, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let s = status(d).await;
        if ok(&s) {
            return s;
        }
        if t0.elapsed() > within {
            panic!(
                "waited {:.1} s for {what}; last status: {:#}\n{}",
                within.as_secs_f64(),
                brief(&s),
                d.diagnostics()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn num(s: &Value, k: &str) -> f64 {
    s[k].as_f64().unwrap_or(0.0)
}

/// What a live conversation must have shown; the unmet conditions, named.
pub fn unmet(s: &Value) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if s["state"] != "live" || s["handshake"] != true {
        missing.push("live with a handshake");
    }
    if num(s, "sentAudioMessages") <= 10.0 {
        missing.push("more than 10 audio messages sent");
    }
    if num(s, "receivedAudioMessages") <= 10.0 {
        missing.push("more than 10 audio messages received");
    }
    if num(s, "decodedFrames") <= 0.0 {
        missing.push("decoded frames");
    }
    if num(s, "playedSamples") <= 0.0 {
        missing.push("played samples");
    }
    if s["transcript"].as_str().unwrap_or("").is_empty() {
        missing.push("a transcript");
    }
    missing
}

/// Wait until the page (opened with `?autoconnect=1`) is live, has sent and received audio,
/// decoded and played it, and shows a transcript, without errors. Returns when it went live.
pub async fn live_conversation<D: Driver>(d: &mut D, within: Duration, shot: &Path) -> Instant {
    let t0 = Instant::now();
    let mut live_at = None;
    let mut last = Value::Null;
    while t0.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = status(d).await;
        if last.is_null() {
            continue;
        }
        if live_at.is_none() && last["state"] == "live" {
            println!("live after {:.1} s", t0.elapsed().as_secs_f64());
            live_at = Some(Instant::now());
            d.screenshot(shot).await;
        }
        let errors = last["errors"].as_array().map_or(0, |e| e.len());
        if errors > 0 || matches!(last["state"].as_str(), Some("error" | "closed" | "lost")) {
            panic!(
                "the page reports {} with errors {}\nlast status: {:#}\n{}",
                last["state"],
                last["errors"],
                brief(&last),
                d.diagnostics()
            );
        }
        if unmet(&last).is_empty() {
            return live_at.unwrap();
        }
    }
    panic!(
        "the page did not get there in {} s; unmet: {:?}\nlast status: {:#}\n{}",
        within.as_secs(),
        unmet(&last),
        brief(&last),
        d.diagnostics()
    );
}

/// The form shows the server's defaults (from /api/info), nothing was sent in the query string,
/// the conversation's settings (the metadata message) are shown, and so is the tiny-model note.
pub async fn check_defaults_and_model<D: Driver>(d: &mut D) {
    let form = eval(
        d,
        "['text_temperature', 'text_topk', 'audio_temperature', 'audio_topk'].map((id) => document.getElementById(id).value)",
    )
    .await;
    assert_eq!(
        form,
        serde_json::json!([TEXT_TEMPERATURE.to_string(), TEXT_TOP_K.to_string(), "0", "1"]),
        "the form shows the server's defaults"
    );
    let s = status(d).await;
    assert_eq!(s["chatQuery"], "", "unchanged settings are not sent: {}", s["chatQuery"]);
    assert_eq!(s["info"]["text"]["temperature"].as_f64(), Some(TEXT_TEMPERATURE), "{}", s["info"]);
    assert_eq!(s["info"]["audio"]["greedy"], true, "{}", s["info"]);
    assert_eq!(s["metadata"]["text_temperature"].as_f64(), Some(TEXT_TEMPERATURE), "{}", s["metadata"]);
    let session = text(d, "session").await;
    let want = format!("temperature {TEXT_TEMPERATURE}, top-k {TEXT_TOP_K}");
    assert!(session.contains(&want) && session.contains("greedy"), "the conversation's settings: {session:?}");
    assert!(!session.contains("asked for"), "{session:?}");
    let model = text(d, "model").await;
    assert!(model.contains("tiny"), "the model is named: {model:?}");
    assert_eq!(s["tinyModel"], true);
    let note = text(d, "model-note").await;
    assert!(note.contains("random weights") && note.contains("does not speak"), "the tiny model's note: {note:?}");
    assert_eq!(s["webcodecs"], "ok");
    let hint = text(d, "text-hint").await;
    assert_eq!(hint, want, "the form's hint");
}

/// The favicon is linked and served as SVG; /api/info answers.
pub async fn check_routes<D: Driver>(d: &mut D) {
    let fav = eval(
        d,
        "fetch('/favicon.svg').then(async (r) => ({ status: r.status, type: r.headers.get('content-type'), \
         body: (await r.text()).slice(0, 4), link: document.querySelector('link[rel=icon]').getAttribute('href') }))",
    )
    .await;
    assert_eq!(
        fav,
        serde_json::json!({ "status": 200, "type": "image/svg+xml", "body": "<svg", "link": "favicon.svg" })
    );
    let info = eval(d, "fetch('/api/info').then((r) => r.json())").await;
    assert!(info["model"].as_str().unwrap_or("").starts_with("tiny"), "{info}");
    assert_eq!(info["text"]["top_k"], TEXT_TOP_K, "{info}");
}

/// Mute: the page marks it, the audio sent is silence (its level exactly 0) while audio messages
/// keep going out; unmuted, the level comes back.
pub async fn check_mute<D: Driver>(d: &mut D) {
    let s = wait_for(d, "a sent level above zero", Duration::from_secs(5), |s| num(s, "sentRms") > 0.0).await;
    assert_eq!(s["muted"], false);
    click(d, "mute").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = status(d).await;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        let s = status(d).await;
        assert_eq!(s["muted"], true);
        assert_eq!(num(&s, "sentRms"), 0.0, "muted, what is sent is silence: {}", brief(&s));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = status(d).await;
    assert!(
        num(&after, "sentAudioMessages") > num(&before, "sentAudioMessages") + 5.0,
        "muted, audio (silence) keeps being sent: {} then {}",
        before["sentAudioMessages"],
        after["sentAudioMessages"]
    );
    let marks = eval(
        d,
        "[document.getElementById('mute').getAttribute('aria-pressed'), document.getElementById('mute').textContent, \
          document.getElementById('mic-level').style.width]",
    )
    .await;
    assert_eq!(marks, serde_json::json!(["true", "Unmute", "0%"]), "the page shows it is muted");
    assert!(!text(d, "muted-badge").await.is_empty(), "the muted badge shows");
    click(d, "mute").await;
    wait_for(d, "the sent level back after unmuting", Duration::from_secs(5), |s| {
        s["muted"] == false && num(s, "sentRms") > 0.0
    })
    .await;
}

/// Hang up: closed (not an error), the meters and the speaking cue at zero, download offered.
/// Returns when the button was pressed.
pub async fn hang_up<D: Driver>(d: &mut D) -> Instant {
    let pressed = Instant::now();
    click(d, "connect").await;
    wait_for(d, "closed after hanging up", Duration::from_secs(5), |s| s["state"] == "closed").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // late worklet messages must not revive the meters
    let s2 = status(d).await;
    for k in ["micRms", "sentRms", "outRms"] {
        assert_eq!(num(&s2, k), 0.0, "{k} after hanging up: {}", brief(&s2));
    }
    assert_eq!(s2["speaking"], false);
    assert!(s2["errors"].as_array().unwrap().is_empty(), "{}", s2["errors"]);
    let widths = eval(
        d,
        "[document.getElementById('mic-level').style.width, document.getElementById('out-level').style.width, \
          String(document.getElementById('download').disabled)]",
    )
    .await;
    assert_eq!(widths, serde_json::json!(["0%", "0%", "false"]), "meters empty, download enabled");
    assert_eq!(text(d, "speaking").await, "", "no speaking cue after the call");
    pressed
}

/// The conversation's WAV as the page builds it (`window.moshiWav()`), read back in the page.
pub const WAV_SUMMARY_JS: &str = r#"(async () => {
  const blob = window.moshiWav();
  if (!blob) return null;
  const b = await blob.arrayBuffer();
  const v = new DataView(b);
  const tag = (o) => String.fromCharCode(...new Uint8Array(b, o, 4));
  const channels = v.getUint16(22, true), rate = v.getUint32(24, true), bits = v.getUint16(34, true);
  const pcm = new Int16Array(b, 44, v.getUint32(40, true) / 2);
  const frames = pcm.length / channels;
  let l = 0, r = 0, run = 0, maxRun = 0;
  for (let i = 0; i < frames; i++) {
    const a = pcm[2 * i], c = pcm[2 * i + 1];
    l += a * a; r += c * c;
    if (a === 0) { run++; maxRun = Math.max(maxRun, run); } else run = 0;
  }
  return { riff: tag(0), wave: tag(8), type: blob.type, channels, rate, bits, seconds: frames / rate,
    leftRms: Math.sqrt(l / frames) / 32768, rightRms: Math.sqrt(r / frames) / 32768,
    longestLeftSilence: maxRun / rate };
})()"#;

/// The WAV: stereo 24 kHz 16-bit, as long as the call (within a second), both sides non-silent,
/// and the muted stretch (1.5 s) silent on the user's side.
pub async fn check_wav<D: Driver>(d: &mut D, call_seconds: f64) -> Value {
    let w = eval(d, WAV_SUMMARY_JS).await;
    println!("wav: {w}");
    assert_eq!(
        (&w["riff"], &w["wave"], &w["type"]),
        (&Value::from("RIFF"), &Value::from("WAVE"), &Value::from("audio/wav"))
    );
    assert_eq!((w["channels"].as_u64(), w["rate"].as_u64(), w["bits"].as_u64()), (Some(2), Some(24000), Some(16)));
    let secs = num(&w, "seconds");
    assert!((secs - call_seconds).abs() < 1.0, "the recording lasts {secs:.2} s, the call {call_seconds:.2} s");
    assert!(num(&w, "leftRms") > 1e-4, "the user's side has sound: {w}");
    assert!(num(&w, "rightRms") > 1e-4, "Moshi's side has sound: {w}");
    assert!(num(&w, "longestLeftSilence") >= 1.0, "the muted stretch is silent on the user's side: {w}");
    w
}

/// The server gone under a live call: the page says the connection is lost, offers to reconnect,
/// and the meters stop; reconnecting says the server cannot be reached.
pub async fn check_lost<D: Driver>(d: &mut D, server: TestServer) {
    tokio::time::timeout(Duration::from_secs(10), server.kill()).await.expect("the server goes within 10 s");
    let s = wait_for(d, "the lost-connection state", Duration::from_secs(10), |s| s["state"] == "lost").await;
    let message = text(d, "message").await;
    assert!(message.contains("Reconnect"), "the page offers to reconnect: {message:?}");
    assert_eq!(text(d, "connect").await, "Reconnect");
    assert_eq!(text(d, "status").await, "connection lost");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s2 = status(d).await;
    for k in ["micRms", "sentRms", "outRms"] {
        assert_eq!(num(&s2, k), 0.0, "{k} after the connection was lost: {}", brief(&s2));
    }
    println!("lost: {message:?} (close code {})", s["closeCode"]);
    click(d, "connect").await;
    wait_for(d, "a failed reconnection", Duration::from_secs(10), |s| {
        s["state"] == "lost" && s["message"].as_str().unwrap_or("").contains("Cannot reach the server")
    })
    .await;
}

/// A headless browser process: killed, and its profile directory removed, when dropped (also on
/// panic). Its stderr is drained on a thread (a full pipe would block it), the last lines kept for
/// failure reports.
pub struct Browser {
    child: std::process::Child,
    profile: PathBuf,
    stderr_tail: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// A fresh profile directory for `name`.
    pub fn profile(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("moshi-{name}-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Start `cmd` (whose profile is `profile`) and wait up to `within` for the stderr line from
    /// which `endpoint` reads the browser's control URL.
    pub fn launch(
        mut cmd: std::process::Command,
        what: &str,
        profile: PathBuf,
        within: Duration,
        endpoint: impl Fn(&str) -> Option<String> + Send + 'static,
    ) -> (Self, String) {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let tail2 = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = endpoint(&line) {
                    let _ = tx.send(url);
                }
                let mut t = tail2.lock().unwrap();
                t.push(line);
                if t.len() > 50 {
                    t.remove(0);
                }
            }
        });
        let browser = Browser { child, profile, stderr_tail: tail };
        let url = rx.recv_timeout(within).unwrap_or_else(|_| {
            panic!("{what} printed no control URL within {within:?}; its stderr:\n{}", browser.stderr())
        });
        (browser, url)
    }

    pub fn stderr(&self) -> String {
        self.stderr_tail.lock().unwrap().join("\n")
    }
}

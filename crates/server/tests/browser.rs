//! The web page in a real browser: the server starts in-process (embedded tiny model, 127.0.0.1,
//! any port), headless Chromium opens `/?autoconnect=1` with a fake microphone playing
//! assets/hello.wav, and the test drives it over the Chrome DevTools Protocol (a WebSocket, spoken
//! with tokio-tungstenite), polling `window.moshiStatus` until the page is live, has sent and received
//! audio, decoded and played it, and shows a transcript, all without errors. Screenshots land in
//! `<target>/browser-artifacts/`.
//!
//! Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`); without it the
//! test fails unless `MOSHI_SKIP_BROWSER_TEST=1`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";
const TOTAL: Duration = Duration::from_secs(60);

/// The running browser: killed, and its profile directory removed, when dropped (also on panic).
struct Chromium {
    child: Child,
    profile: PathBuf,
    stderr_tail: Arc<Mutex<Vec<String>>>,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Chromium {
    /// Start headless Chromium; returns it and the browser's DevTools WebSocket URL.
    fn launch(fake_mic: &Path) -> (Self, String) {
        let profile = std::env::temp_dir().join(format!("moshi-browser-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--use-file-for-fake-audio-capture={}", fake_mic.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
        // Chromium announces its DevTools endpoint on stderr; keep draining stderr afterwards (a full
        // pipe would block it) and keep the last lines for failure reports.
        let stderr = child.stderr.take().unwrap();
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let tail2 = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("ws://") {
                    if line.contains("DevTools listening on") {
                        let _ = tx.send(line[i..].trim().to_string());
                    }
                }
                let mut t = tail2.lock().unwrap();
                t.push(line);
                if t.len() > 50 {
                    t.remove(0);
                }
            }
        });
        let browser = Chromium { child, profile, stderr_tail: tail };
        let url = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            panic!("Chromium printed no DevTools URL within 20 s; its stderr:\n{}", browser.stderr())
        });
        (browser, url)
    }

    fn stderr(&self) -> String {
        self.stderr_tail.lock().unwrap().join("\n")
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal CDP client: commands on one page session (flattened sessions over the browser socket);
/// events are ignored except page exceptions and console errors, kept for failure reports.
struct Cdp {
    ws: Ws,
    next_id: u64,
    session: Option<String>,
    page_log: Vec<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect to Chromium's DevTools socket");
        Cdp { ws, next_id: 0, session: None, page_log: Vec::new() }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.expect("send a CDP command");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await;
            let text = match next {
                Err(_) => panic!("CDP {method}: no answer within 15 s"),
                Ok(None) => panic!("CDP {method}: the DevTools socket closed"),
                Ok(Some(Err(e))) => panic!("CDP {method}: {e}"),
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
            };
            let v: Value = serde_json::from_str(&text).expect("CDP sends JSON");
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("CDP {method} failed: {e}");
                }
                return v["result"].clone();
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                let text = d["exception"]["description"].as_str().or(d["text"].as_str()).unwrap_or("?");
                self.page_log.push(format!("exception: {text}"));
            }
            Some("Runtime.consoleAPICalled") if matches!(p["type"].as_str(), Some("error" | "warning")) => {
                let args: Vec<String> =
                    p["args"].as_array().into_iter().flatten().map(|a| a["value"].to_string()).collect();
                self.page_log.push(format!("console.{}: {}", p["type"].as_str().unwrap(), args.join(" ")));
            }
            _ => {}
        }
    }

    /// Evaluate an expression in the page; its JSON value (null when it threw).
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true })).await;
        r["result"]["value"].clone()
    }

    async fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64_decode(r["data"].as_str().expect("screenshot data"));
        std::fs::write(path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
}

/// Standard base64 (what CDP returns screenshots in).
fn base64_decode(s: &str) -> Vec<u8> {
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

/// What the test waits for; the unmet conditions, named.
fn unmet(s: &Value) -> Vec<&'static str> {
    let n = |k: &str| s[k].as_f64().unwrap_or(0.0);
    let mut missing = Vec::new();
    if s["state"] != "live" || s["handshake"] != true {
        missing.push("live with a handshake");
    }
    if n("sentAudioMessages") <= 10.0 {
        missing.push("more than 10 audio messages sent");
    }
    if n("receivedAudioMessages") <= 10.0 {
        missing.push("more than 10 audio messages received");
    }
    if n("decodedFrames") <= 0.0 {
        missing.push("decoded frames");
    }
    if n("playedSamples") <= 0.0 {
        missing.push("played samples");
    }
    if s["transcript"].as_str().unwrap_or("").is_empty() {
        missing.push("a transcript");
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_talks_to_the_server_in_chromium() {
    if !Path::new(CHROMIUM).exists() {
        if std::env::var("MOSHI_SKIP_BROWSER_TEST").as_deref() == Ok("1") {
            println!("browser test skipped: {CHROMIUM} is missing and MOSHI_SKIP_BROWSER_TEST=1");
            return;
        }
        panic!(
            "{CHROMIUM} is missing: install it with `apt-get install -y chromium` \
             (or set MOSHI_SKIP_BROWSER_TEST=1 to skip this test)"
        );
    }
    let start = Instant::now();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("browser-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();

    // Chromium's fake microphone wants 16-bit PCM WAV (it loops the file).
    let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/hello.wav").canonicalize().unwrap();
    let spec = hound::WavReader::open(&wav).expect("assets/hello.wav").spec();
    assert_eq!((spec.bits_per_sample, spec.sample_format), (16, hound::SampleFormat::Int), "{spec:?}");

    let moshi = moshi_engine::tiny::load_moshi(candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let server = moshi_server::start(moshi_server::ServerConfig::local_test(), moshi).await.unwrap();
    let page_url = format!("http://{}/?autoconnect=1", server.addr());

    let (browser, devtools) = Chromium::launch(&wav);
    let mut cdp = Cdp::connect(&devtools).await;
    let target = cdp.call("Target.createTarget", json!({ "url": "about:blank" })).await;
    let attached = cdp
        .call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }))
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    cdp.call("Runtime.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    cdp.call("Page.navigate", json!({ "url": page_url })).await;
    println!("page {page_url} opened after {:.1} s", start.elapsed().as_secs_f64());

    let mut last = Value::Null;
    let mut live_shot = false;
    let mut outcome: Result<(), String> = Err("timed out".into());
    while start.elapsed() < TOTAL {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let text = cdp.eval("window.moshiStatus ? JSON.stringify(window.moshiStatus) : null").await;
        let Some(text) = text.as_str() else { continue };
        last = serde_json::from_str(text).unwrap();
        if !live_shot && last["state"] == "live" {
            println!("live after {:.1} s", start.elapsed().as_secs_f64());
            cdp.screenshot(&artifacts.join("browser-live.png")).await;
            live_shot = true;
        }
        let errors = last["errors"].as_array().map_or(0, |e| e.len());
        if errors > 0 || last["state"] == "error" || last["state"] == "closed" {
            outcome = Err(format!("the page reports {} with errors {}", last["state"], last["errors"]));
            break;
        }
        if unmet(&last).is_empty() {
            outcome = Ok(());
            break;
        }
    }
    // MOSHI_BROWSER_TEST_HOLD_S=N: once the checks pass, keep the conversation going N more seconds
    // (printing the status each second) before the final screenshot, to watch the steady state.
    let hold: u64 = std::env::var("MOSHI_BROWSER_TEST_HOLD_S").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if outcome.is_ok() {
        for _ in 0..hold {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let text = cdp.eval("JSON.stringify(window.moshiStatus)").await;
            last = serde_json::from_str(text.as_str().unwrap()).unwrap();
            let f = |k: &str| last[k].clone();
            println!(
                "{:.1} s: state {} sent {} received {} decoded {} played {} underruns {} dropped {} buffered {:.0} ms errors {}",
                start.elapsed().as_secs_f64(), f("state"), f("sentAudioMessages"), f("receivedAudioMessages"),
                f("decodedFrames"), f("playedSamples"), f("underruns"), f("droppedSamples"),
                last["bufferedMs"].as_f64().unwrap_or(0.0), f("errors")
            );
        }
    }
    cdp.screenshot(&artifacts.join("browser-end.png")).await;
    let elapsed = start.elapsed().as_secs_f64();
    let mut shown = last.clone();
    if let Some(m) = shown.as_object_mut() {
        m.remove("metadata");
    }
    println!("after {elapsed:.1} s: {shown}");
    if let Err(why) = outcome {
        panic!(
            "the page did not get there in {} s ({why}); unmet: {:?}\nlast status: {shown:#}\npage log: {:#?}\n\
             chromium stderr (tail):\n{}",
            TOTAL.as_secs(),
            unmet(&last),
            cdp.page_log,
            browser.stderr()
        );
    }
    assert!(cdp.page_log.iter().all(|l| !l.starts_with("exception")), "page exceptions: {:#?}", cdp.page_log);
    drop(browser);
    server.shutdown().await;
}

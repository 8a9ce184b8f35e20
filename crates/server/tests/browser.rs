//! The web page in a real browser: the server starts in-process (embedded tiny model, 127.0.0.1,
//! any port, one conversation slot, non-default sampling), headless Chromium opens
//! `/?autoconnect=1` with a fake microphone playing assets/hello.wav, and the test drives it over
//! the Chrome DevTools Protocol (a WebSocket, spoken with tokio-tungstenite), polling
//! `window.moshiStatus` and the DOM. In order, it checks (tests/page/mod.rs has the shared ones):
//! - the call goes live, sends and receives audio, decodes and plays it, shows a transcript, no errors;
//! - the form shows the server's sampling defaults and the page sends none of them; the
//!   conversation's settings (the metadata message), the model's name and the tiny model's note show;
//! - /favicon.svg and /api/info answer;
//! - mute: marked, the sent audio's level is exactly 0 while audio messages keep going; unmute;
//! - hanging up: closed, the meters at zero; the download button saves a stereo 24 kHz WAV as long
//!   as the call (read back with hound), and the page's own WAV has both sides and the muted gap;
//! - microphone permission denied (getUserMedia rejecting with NotAllowedError): the page says what to do;
//! - an insecure origin (http://moshi.test, mapped to 127.0.0.1), a browser without WebCodecs
//!   audio, and one whose WebCodecs lacks Opus (both simulated by a script run before the page's):
//!   each named on the page, Connect disabled;
//! - a full server (a test client holds the only slot): the capacity message once, not repeated;
//!   then a call with `?text_topk=7` sends that stream's settings only;
//! - the server gone under a live call (its runtime dropped, every socket closed as when the process
//!   dies): "connection lost", Reconnect offered, meters at zero; reconnecting: cannot reach it.
//!
//! Screenshots and the downloaded WAV land in `<target>/browser-artifacts/`.
//!
//! Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`); without it the
//! test fails unless `MOSHI_SKIP_BROWSER_TEST=1`.

mod page;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use page::{click, eval, status, text, wait_for, Driver};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";
const LIVE_WITHIN: Duration = Duration::from_secs(60);
/// Resolved to 127.0.0.1 by Chromium: a plain-HTTP origin that is not localhost (insecure).
const INSECURE_HOST: &str = "moshi.test";

/// Headless Chromium (tests/page's `Browser`) and its DevTools WebSocket URL.
fn launch_chromium(fake_mic: &Path) -> (page::Browser, String) {
    let profile = page::Browser::profile("browser");
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
            "--remote-debugging-port=0",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
        ])
        .arg(format!("--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--use-file-for-fake-audio-capture={}", fake_mic.display()));
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
    page::Browser::launch(cmd, "Chromium", profile, Duration::from_secs(20), |line| {
        let i = line.find("ws://")?;
        line.contains("DevTools listening on").then(|| line[i..].trim().to_string())
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal CDP client: commands on one page session (flattened sessions over the browser socket);
/// events are ignored except page exceptions and console errors, kept for failure reports.
struct Cdp {
    ws: Ws,
    next_id: u64,
    session: Option<String>,
    page_log: Vec<String>,
    browser: page::Browser,
}

impl Cdp {
    async fn connect(url: &str, browser: page::Browser) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect to Chromium's DevTools socket");
        Cdp { ws, next_id: 0, session: None, page_log: Vec::new(), browser }
    }

    /// A command to the page session (or to the browser, before attaching).
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
}

impl Driver for Cdp {
    async fn eval_js(&mut self, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": page::as_json(expr), "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(d) = r.get("exceptionDetails") {
            return Err(d["exception"]["description"].as_str().or(d["text"].as_str()).unwrap_or("?").to_string());
        }
        match r["result"]["value"].as_str() {
            Some(json) => Ok(serde_json::from_str(json).unwrap()),
            None => Ok(Value::Null), // undefined
        }
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    async fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        std::fs::write(path, page::base64_decode(r["data"].as_str().expect("screenshot data"))).unwrap();
        println!("screenshot: {}", path.display());
    }

    fn diagnostics(&self) -> String {
        format!("page log: {:#?}\nchromium stderr (tail):\n{}", self.page_log, self.browser.stderr())
    }
}

/// A plain client that takes the server's only conversation slot (and drains what it is sent)
/// until told to let go.
async fn hold_the_slot(addr: std::net::SocketAddr) -> tokio::sync::oneshot::Sender<()> {
    let t0 = Instant::now();
    loop {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/chat")).await.expect("connect");
        // Metadata (4), then the handshake (0); an error (5) while the page's slot is being freed.
        let mut joined = false;
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m {
                match b.first() {
                    Some(0) => {
                        joined = true;
                        break;
                    }
                    Some(5) => break,
                    _ => {}
                }
            }
        }
        if joined {
            let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        m = ws.next() => if m.is_none() { return },
                    }
                }
                let _ = ws.close(None).await;
            });
            return tx;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the test client could not take the slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The page's notice about the browser, once `status.webcodecs` says `want`.
async fn support_note(cdp: &mut Cdp, url: &str, want: &str) -> String {
    cdp.navigate(url).await;
    wait_for(cdp, &format!("webcodecs {want}"), Duration::from_secs(10), |s| s["webcodecs"] == want).await;
    let note = text(cdp, "support-note").await;
    let disabled = eval(cdp, "document.getElementById('connect').disabled").await;
    assert_eq!(disabled, true, "Connect is disabled ({want})");
    note
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
    let artifacts = page::artifacts();
    let step = |what: &str| println!("{:6.1} s  {what}", start.elapsed().as_secs_f64());

    // Chromium's fake microphone wants 16-bit PCM WAV (it loops the file).
    let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/hello.wav").canonicalize().unwrap();
    let spec = hound::WavReader::open(&wav).expect("assets/hello.wav").spec();
    assert_eq!((spec.bits_per_sample, spec.sample_format), (16, hound::SampleFormat::Int), "{spec:?}");

    let server = page::start_server();
    let addr = server.addr();
    let base = format!("http://{addr}");

    let (browser, devtools) = launch_chromium(&wav);
    let mut cdp = Cdp::connect(&devtools, browser).await;
    let downloads = artifacts.join(format!("downloads-{}", page::unique()));
    std::fs::create_dir_all(&downloads).unwrap();
    cdp.call(
        "Browser.setDownloadBehavior",
        json!({ "behavior": "allow", "downloadPath": downloads.display().to_string() }),
    )
    .await;
    let target = cdp.call("Target.createTarget", json!({ "url": "about:blank" })).await;
    let attached = cdp.call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true })).await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    cdp.call("Runtime.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    cdp.navigate(&format!("{base}/?autoconnect=1")).await;
    step("page opened");

    // A live call, the server's defaults, the model.
    let live_at = page::live_conversation(&mut cdp, LIVE_WITHIN, &artifacts.join("browser-live.png")).await;
    step("live: audio both ways, decoded, played, a transcript");
    // MOSHI_BROWSER_TEST_HOLD_S=N: keep the conversation going N more seconds (printing the status
    // each second), to watch the steady state.
    let hold: u64 = std::env::var("MOSHI_BROWSER_TEST_HOLD_S").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    for _ in 0..hold {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = status(&mut cdp).await;
        let f = |k: &str| s[k].clone();
        println!(
            "{:.1} s: state {} sent {} received {} decoded {} played {} underruns {} dropped {} \
             buffered {:.0} ms mic rms {} out rms {} errors {}",
            start.elapsed().as_secs_f64(),
            f("state"),
            f("sentAudioMessages"),
            f("receivedAudioMessages"),
            f("decodedFrames"),
            f("playedSamples"),
            f("underruns"),
            f("droppedSamples"),
            s["bufferedMs"].as_f64().unwrap_or(0.0),
            f("micRms"),
            f("outRms"),
            f("errors")
        );
    }
    page::check_defaults_and_model(&mut cdp).await;
    page::check_routes(&mut cdp).await;
    step("the server's defaults in the form, none sent; the conversation's settings, the model, its note; favicon");

    page::check_mute(&mut cdp).await;
    step("mute: marked, silence sent, then unmuted");
    let s = status(&mut cdp).await;
    assert!(s["speakingEpisodes"].as_f64().unwrap_or(0.0) > 0.0, "the speaking cue showed: {}", page::brief(&s));
    cdp.screenshot(&artifacts.join("browser-end.png")).await;

    // Hang up; the conversation as a WAV, in the page and through the download button.
    let call_seconds = (page::hang_up(&mut cdp).await - live_at).as_secs_f64();
    step("hung up: closed, meters at zero");
    let w = page::check_wav(&mut cdp, call_seconds).await;
    click(&mut cdp, "download").await;
    let t0 = Instant::now();
    let file = loop {
        let found = std::fs::read_dir(&downloads).unwrap().filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.extension().is_some_and(|e| e == "wav")
                && p.file_name().unwrap().to_string_lossy().starts_with("moshi-conversation-")
        });
        if let Some(f) = found {
            break f;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no WAV in {} after 10 s", downloads.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // let the browser finish writing
    let reader = hound::WavReader::open(&file).expect("the downloaded WAV");
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (2, 24000, 16), "{spec:?}");
    let seconds = reader.duration() as f64 / 24000.0;
    assert!(
        (seconds - w["seconds"].as_f64().unwrap()).abs() < 0.01,
        "downloaded {seconds} s, the page {}",
        w["seconds"]
    );
    let s = status(&mut cdp).await;
    assert_eq!(s["downloads"], 1);
    step(&format!("download: {} ({seconds:.1} s, stereo 24 kHz)", file.display()));

    // Microphone permission denied. (Chromium's --use-fake-ui-for-media-stream grants whatever a
    // CDP permission override says, so getUserMedia is made to fail as a denial does.)
    let deny = "navigator.mediaDevices.getUserMedia = () => \
                Promise.reject(new DOMException('Permission denied', 'NotAllowedError'))";
    eval(&mut cdp, &format!("({deny}, true)")).await;
    click(&mut cdp, "connect").await;
    let s =
        wait_for(&mut cdp, "the page to give up on the microphone", Duration::from_secs(10), |s| s["state"] == "error")
            .await;
    let message = text(&mut cdp, "message").await;
    assert!(message.contains("permission was denied") && message.contains("Allow"), "{message:?} ({})", s["errors"]);
    step("microphone denied: the page says what to do");

    // An insecure origin; no WebCodecs audio; WebCodecs without Opus.
    let note = support_note(&mut cdp, &format!("http://{INSECURE_HOST}:{}/", addr.port()), "insecure").await;
    assert!(note.contains("HTTPS") && note.contains("localhost"), "{note:?}");
    for (script, want, says) in [
        ("delete window.AudioEncoder; delete window.AudioDecoder;", "missing", "lacks WebCodecs"),
        ("AudioEncoder.isConfigSupported = async (config) => ({ supported: false, config });", "no-opus", "Opus"),
    ] {
        let id = cdp.call("Page.addScriptToEvaluateOnNewDocument", json!({ "source": script })).await;
        let note = support_note(&mut cdp, &format!("{base}/"), want).await;
        assert!(note.contains(says), "{want}: {note:?}");
        cdp.call("Page.removeScriptToEvaluateOnNewDocument", json!({ "identifier": id["identifier"] })).await;
    }
    step("insecure origin, no WebCodecs, no Opus: each named, Connect disabled");

    // A full server: the capacity message once. Then a call with one setting changed.
    let holder = hold_the_slot(addr).await;
    cdp.navigate(&format!("{base}/?text_topk=7")).await;
    wait_for(&mut cdp, "the form", Duration::from_secs(10), |s| s["webcodecs"] == "ok" && !s["defaults"].is_null())
        .await;
    assert_eq!(
        eval(&mut cdp, "document.getElementById('text_topk').value").await,
        "7",
        "the URL's setting is in the form"
    );
    click(&mut cdp, "connect").await;
    let s = wait_for(&mut cdp, "refused: the server is full", Duration::from_secs(10), |s| s["state"] == "error").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s2 = status(&mut cdp).await;
    assert_eq!(s2["state"], "error", "no retry behind the user's back");
    assert_eq!(s2["errors"].as_array().unwrap().len(), 1, "one error: {}", s2["errors"]);
    assert!(s2["errors"][0].as_str().unwrap().contains("capacity"), "{}", s2["errors"]);
    assert_eq!(s["closeCode"], 1013);
    let shown = eval(&mut cdp, "document.body.innerText.split('capacity').length - 1").await;
    assert_eq!(shown, 1, "the capacity message shows once; message: {:?}", text(&mut cdp, "message").await);
    cdp.screenshot(&artifacts.join("browser-full.png")).await;
    let _ = holder.send(());
    let t0 = Instant::now();
    while server.active() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the test client's slot was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    step("server full: said once");
    click(&mut cdp, "connect").await;
    let s = wait_for(&mut cdp, "live again", Duration::from_secs(20), |s| {
        s["state"] == "live" && s["receivedAudioMessages"].as_f64().unwrap_or(0.0) > 2.0 && !s["metadata"].is_null()
    })
    .await;
    assert_eq!(
        s["chatQuery"],
        format!("text_temperature={}&text_topk=7", page::TEXT_TEMPERATURE),
        "only the changed stream is sent"
    );
    let session = text(&mut cdp, "session").await;
    let reported = s["metadata"]["text_topk"].clone();
    if reported == 7 {
        assert!(session.contains("top-k 7") && !session.contains("asked for"), "{session:?}");
    } else {
        // The server's metadata reported something else: the page must say what it asked for.
        assert!(
            session.contains("asked for text_topk=7"),
            "metadata says text_topk {reported}; the page shows {session:?}"
        );
    }
    step(&format!("reconnected with text_topk=7 (the server's metadata reports text_topk {reported})"));

    // The server goes away under a live call.
    page::check_lost(&mut cdp, server).await;
    cdp.screenshot(&artifacts.join("browser-lost.png")).await;
    step("server gone: connection lost, Reconnect offered, then cannot reach the server");

    assert!(cdp.page_log.iter().all(|l| !l.starts_with("exception")), "page exceptions: {:#?}", cdp.page_log);
    let _ = std::fs::remove_dir_all(&downloads);
    println!("browser test passed in {:.1} s", start.elapsed().as_secs_f64());
}

//! The web page in Firefox: the same server as browser.rs (tests/page/mod.rs), headless Firefox
//! driven over WebDriver BiDi (the protocol Firefox speaks on `--remote-debugging-port`; it no
//! longer speaks CDP), with Firefox's fake microphone (a tone: `media.navigator.streams.fake`) and
//! its mock audio backend (`media.cubeb.force_mock_context`: without a sound server an
//! AudioContext never starts in a headless container). Checks: the call goes live with audio both
//! ways, decoded (Firefox's WebCodecs decodes Opus at 48 kHz), played, and a transcript; the
//! server's defaults in the form and the conversation's settings and the model's note shown; the
//! favicon; mute; hanging up (meters at zero) and the conversation's WAV; the server gone under a
//! live call (connection lost, Reconnect offered; reconnecting: cannot reach it).
//!
//! Needs Debian's firefox-esr (`apt-get install -y firefox-esr`; checked with 153 ESR) at
//! /usr/bin/firefox-esr or /usr/bin/firefox (tools/test.sh installs firefox-esr); without it the
//! test fails unless `MOSHI_SKIP_BROWSER_TEST=1`.

mod page;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use page::{status, Driver};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const FIREFOXES: [&str; 2] = ["/usr/bin/firefox-esr", "/usr/bin/firefox"];
const LIVE_WITHIN: Duration = Duration::from_secs(60);

/// The profile's preferences: a fake microphone without a permission prompt, the mock audio
/// backend, audio allowed to start without a user gesture, and no first-run noise.
const USER_JS: &str = r#"
user_pref("media.navigator.streams.fake", true);
user_pref("media.navigator.permission.disabled", true);
user_pref("media.cubeb.force_mock_context", true);
user_pref("media.autoplay.default", 0);
user_pref("media.autoplay.block-webaudio", false);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.disabledForTesting", true);
"#;

/// Headless Firefox (tests/page's `Browser`) and its WebDriver BiDi URL.
fn launch_firefox(binary: &str) -> (page::Browser, String) {
    let profile = page::Browser::profile("firefox");
    std::fs::write(profile.join("user.js"), USER_JS).unwrap();
    let mut cmd = Command::new(binary);
    cmd.args(["--headless", "--no-remote", "--remote-debugging-port=0", "--profile"]).arg(&profile).arg("about:blank");
    // "WebDriver BiDi listening on ws://127.0.0.1:PORT"
    page::Browser::launch(cmd, "Firefox", profile, Duration::from_secs(30), |line| {
        let i = line.find("ws://")?;
        line.contains("WebDriver BiDi listening on").then(|| format!("{}/session", line[i..].trim()))
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal WebDriver BiDi client on one browsing context; `log.entryAdded` events (page
/// errors, console warnings and errors) are kept for failure reports.
struct Bidi {
    ws: Ws,
    next_id: u64,
    context: String,
    page_log: Vec<String>,
    browser: page::Browser,
}

impl Bidi {
    async fn connect(url: &str, browser: page::Browser) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect to Firefox's WebDriver BiDi socket");
        let mut b = Bidi { ws, next_id: 0, context: String::new(), page_log: Vec::new(), browser };
        b.call("session.new", json!({ "capabilities": {} })).await;
        b.call("session.subscribe", json!({ "events": ["log.entryAdded"] })).await;
        let tree = b.call("browsingContext.getTree", json!({})).await;
        b.context = tree["contexts"][0]["context"].as_str().expect("a browsing context").to_string();
        b
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::text(msg.to_string())).await.expect("send a BiDi command");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let text = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("BiDi {method}: no answer within 15 s"),
                Ok(None) => panic!("BiDi {method}: the socket closed"),
                Ok(Some(Err(e))) => panic!("BiDi {method}: {e}"),
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
            };
            let v: Value = serde_json::from_str(&text).expect("BiDi sends JSON");
            if v["type"] == "event" {
                if v["method"] == "log.entryAdded" && matches!(v["params"]["level"].as_str(), Some("error" | "warn")) {
                    self.page_log
                        .push(format!("{} {}: {}", v["params"]["type"], v["params"]["level"], v["params"]["text"]));
                }
                continue;
            }
            if v["id"].as_u64() == Some(id) {
                if v["type"] == "error" {
                    panic!("BiDi {method} failed: {} {}", v["error"], v["message"]);
                }
                return v["result"].clone();
            }
        }
    }
}

impl Driver for Bidi {
    async fn eval_js(&mut self, expr: &str) -> Result<Value, String> {
        let target = json!({ "context": self.context });
        let r = self
            .call(
                "script.evaluate",
                json!({
                    "expression": page::as_json(expr),
                    "target": target,
                    "awaitPromise": true,
                    "resultOwnership": "none",
                }),
            )
            .await;
        if r["type"] == "exception" {
            return Err(r["exceptionDetails"]["text"].as_str().unwrap_or("?").to_string());
        }
        match r["result"]["value"].as_str() {
            Some(json) => Ok(serde_json::from_str(json).unwrap()),
            None => Ok(Value::Null), // undefined
        }
    }

    async fn navigate(&mut self, url: &str) {
        let context = self.context.clone();
        self.call("browsingContext.navigate", json!({ "context": context, "url": url, "wait": "interactive" })).await;
    }

    async fn screenshot(&mut self, path: &Path) {
        let context = self.context.clone();
        let r = self.call("browsingContext.captureScreenshot", json!({ "context": context })).await;
        std::fs::write(path, page::base64_decode(r["data"].as_str().expect("screenshot data"))).unwrap();
        println!("screenshot: {}", path.display());
    }

    fn diagnostics(&self) -> String {
        format!("page log: {:#?}\nfirefox stderr (tail):\n{}", self.page_log, self.browser.stderr())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_talks_to_the_server_in_firefox() {
    let Some(binary) = FIREFOXES.iter().copied().find(|p| Path::new(p).exists()) else {
        if std::env::var("MOSHI_SKIP_BROWSER_TEST").as_deref() == Ok("1") {
            println!("firefox test skipped: no {} and MOSHI_SKIP_BROWSER_TEST=1", FIREFOXES.join(" or "));
            return;
        }
        panic!(
            "no {}: install Debian's firefox-esr (`apt-get install -y firefox-esr`; tools/test.sh does) \
             or set MOSHI_SKIP_BROWSER_TEST=1 to skip the browser tests",
            FIREFOXES.join(" or ")
        );
    };
    let start = Instant::now();
    let artifacts = page::artifacts();
    let step = |what: &str| println!("{:6.1} s  {what}", start.elapsed().as_secs_f64());

    let server = page::start_server();
    let (browser, url) = launch_firefox(binary);
    let mut ff = Bidi::connect(&url, browser).await;
    let version = ff.eval_js("navigator.userAgent").await.unwrap();
    step(&format!("{binary}: {version}"));
    ff.navigate(&format!("http://{}/?autoconnect=1", server.addr())).await;
    step("page opened");

    let live_at = page::live_conversation(&mut ff, LIVE_WITHIN, &artifacts.join("firefox-live.png")).await;
    step("live: audio both ways, decoded, played, a transcript");
    page::check_defaults_and_model(&mut ff).await;
    page::check_routes(&mut ff).await;
    step("the server's defaults, the conversation's settings, the model's note; favicon, /api/info");
    page::check_mute(&mut ff).await;
    step("mute");
    let call_seconds = (page::hang_up(&mut ff).await - live_at).as_secs_f64();
    page::check_wav(&mut ff, call_seconds).await;
    step("hung up: meters at zero; the conversation's WAV");

    page::click(&mut ff, "connect").await;
    page::wait_for(&mut ff, "live again", Duration::from_secs(20), |s| s["state"] == "live").await;
    page::check_lost(&mut ff, server).await;
    ff.screenshot(&artifacts.join("firefox-lost.png")).await;
    step("server gone: connection lost, Reconnect offered, then cannot reach the server");
    let s = status(&mut ff).await;
    println!("firefox test passed in {:.1} s; context rate {}", start.elapsed().as_secs_f64(), s["contextRate"]);
}

//! `moshi-rs serve` as a process (the embedded tiny model): SIGTERM drains it (the contract a
//! load balancer relies on: `/ready` 503 `draining` at once, new WebSocket upgrades 503, the
//! running conversation goes on and is ended with an error message and close 1001 after
//! `--drain-seconds`, exit status 0); a second signal cuts the drain short; binding beyond
//! loopback without keys prints a warning; a bad key file is named before any model loads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use moshi_server::protocol::{decode, Decoded, Message};
use tokio_tungstenite::tungstenite::Message as Ws;

/// A running `moshi-rs serve` and its stderr lines as they come.
struct Serve {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

fn serve(extra: &[&str]) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moshi-rs"))
        .args(["serve", "--model", "tiny", "--port", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut s = Serve { child, port: 0, lines, seen: Vec::new() };
    let l = s.wait_line("moshi-rs serving on", Duration::from_secs(60));
    s.port = l.rsplit(':').next().unwrap().split(' ').next().unwrap().parse().unwrap();
    s
}

impl Serve {
    fn wait_line(&mut self, want: &str, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            let left = limit.checked_sub(t.elapsed()).unwrap_or_else(|| panic!("no {want:?} in stderr:\n{}", self.seen.join("\n")));
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(want) {
                        return l;
                    }
                }
                Err(_) => panic!("no {want:?} in stderr:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([format!("-{name}"), self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -{name}");
    }

    /// The exit status within `limit`.
    fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running after {limit:?}:\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One HTTP request's status line and body.
    fn get(&self, path: &str, extra: &str) -> (String, String) {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{extra}Connection: close\r\n\r\n", self.port).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        let status = out.lines().next().unwrap_or("").to_string();
        (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Socket) -> Result<Message, Option<(u16, String)>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("an answer within 20 s") {
            Some(Ok(Ws::Binary(b))) => match decode(&b, 1 << 22).unwrap() {
                Decoded::Message(m) => return Ok(m),
                Decoded::Unknown(t) => panic!("unknown type {t}"),
            },
            Some(Ok(Ws::Close(c))) => return Err(c.map(|c| (u16::from(c.code), c.reason.to_string()))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

#[test]
fn sigterm_drains_then_exits_0() {
    let mut s = serve(&["--drain-seconds", "2", "--idle-timeout", "60", "--max-conversations", "2"]);
    assert_eq!(s.get("/ready", ""), ("HTTP/1.1 200 OK".into(), "ready".into()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("ws://127.0.0.1:{}/api/chat", s.port);
    let mut ws = rt.block_on(async { tokio_tungstenite::connect_async(url).await.unwrap().0 });
    rt.block_on(async {
        assert!(matches!(next(&mut ws).await, Ok(Message::Metadata(_))));
        assert!(matches!(next(&mut ws).await, Ok(Message::Handshake { .. })));
    });
    let t = Instant::now();
    s.signal("TERM");
    s.wait_line("SIGTERM: draining", Duration::from_secs(5));
    assert_eq!(s.get("/ready", ""), ("HTTP/1.1 503 Service Unavailable".into(), "draining".into()));
    assert!(s.get("/health", "").0.contains("200"), "/health stays liveness");
    let (refused, _) = s.get("/api/chat", UPGRADE);
    assert!(refused.contains("503"), "a new upgrade: {refused}");
    // The running conversation goes on, then is ended by name after --drain-seconds.
    let end = rt.block_on(async {
        let mut audio = 0;
        loop {
            match next(&mut ws).await {
                Ok(Message::Audio(_)) => audio += 1,
                Ok(Message::Text(_)) => {}
                Ok(Message::Error(e)) => break (audio, e, next(&mut ws).await),
                other => panic!("{other:?}"),
            }
        }
    });
    let (audio, error, close) = end;
    assert!(audio >= 15, "only {audio} audio messages while draining");
    assert!(error.contains("shutting down"), "{error}");
    assert!(matches!(close, Err(Some((1001, _)))), "{close:?}");
    assert!(t.elapsed() >= Duration::from_millis(1900), "ended before --drain-seconds: {:?}", t.elapsed());
    let st = s.exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", s.seen.join("\n"));
}

#[test]
fn a_second_signal_cuts_the_drain_short_and_an_idle_server_exits_at_once() {
    let mut s = serve(&["--drain-seconds", "600"]);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(c, "GET /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n{UPGRADE}\r\n").unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    std::thread::sleep(Duration::from_millis(300));
    s.signal("INT");
    s.wait_line("SIGINT: draining", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.child.try_wait().unwrap().is_none(), "a conversation is running: the drain waits");
    let t = Instant::now();
    s.signal("TERM");
    assert_eq!(s.exit(Duration::from_secs(10)).code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(6));
    drop(c);
    // Nothing running: the drain ends at once.
    let mut s = serve(&["--drain-seconds", "600"]);
    let t = Instant::now();
    s.signal("TERM");
    assert_eq!(s.exit(Duration::from_secs(10)).code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn beyond_loopback_without_keys_is_warned_and_key_files_are_checked() {
    let s = serve(&["--host", "0.0.0.0"]);
    assert!(s.seen.iter().any(|l| l.contains("WARNING") && l.contains("WITHOUT API KEYS")), "{}", s.seen.join("\n"));
    drop(s);
    let dir = std::env::temp_dir().join(format!("moshi-serve-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, "# clients\nk-1\n").unwrap();
    let mut s = serve(&["--host", "0.0.0.0", "--api-key-file", keys.to_str().unwrap()]);
    assert!(!s.seen.iter().any(|l| l.contains("WITHOUT API KEYS")), "{}", s.seen.join("\n"));
    assert!(s.get("/api/info", "").0.contains("401"));
    assert!(s.get("/api/info", "kyutai-api-key: k-1\r\n").0.contains("200"));
    s.signal("TERM");
    assert_eq!(s.exit(Duration::from_secs(10)).code(), Some(0));
    std::fs::write(&keys, "\n# none\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moshi-rs")).args(["serve", "--model", "tiny", "--api-key-file", keys.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-key-file") && err.contains("no key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

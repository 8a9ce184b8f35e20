//! Scale-out behind an existing load balancer (docs/deploy.md): two `moshi-rs serve` processes
//! (the embedded tiny model, 2 slots each) behind Debian's HAProxy (`balance leastconn`, active
//! health checks on `/ready`), every conversation a WebSocket client through HAProxy:
//! - conversations 1–4 spread 2+2 (each one's metadata names the instance it landed on,
//!   `--instance-name`; each instance's `/metrics` gauge says 2);
//! - a full instance answers `/ready` 503 `full`, so HAProxy takes it out; with both full the
//!   fifth client gets HAProxy's HTTP 503 before any upgrade;
//! - SIGTERM on the first instance: its `/ready` says `draining`, so even with a slot free again
//!   HAProxy sends the next conversation to the second; of the first's running conversations one
//!   finishes normally, the other goes on until `--drain-seconds` ends it with an error message
//!   and close 1001; the process exits 0;
//! - no audio message is lost: each conversation's Ogg page sequence numbers are contiguous, the
//!   stream decodes to 1920 samples per message, a conversation that ends normally got a reply for
//!   every frame it sent, and the servers dropped no output frame.
//!
//! Needs `haproxy` (`apt-get install haproxy`; tools/test.sh installs it): without it the test
//! fails saying so, unless MOSHI_SKIP_HAPROXY_TEST=1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use moshi_server::audio_io::OpusInput;
use moshi_server::ogg_stream::{opus_head, opus_tags};
use moshi_server::protocol::{decode, Decoded, Message};
use ogg::{PacketWriteEndInfo, PacketWriter};
use opus_rs::{Application, OpusEncoder};
use tokio_tungstenite::tungstenite::{self, Message as Ws};

/// Seconds the first instance drains for; the steps between its SIGTERM and the end of the drain
/// take well under a second on a quiet machine, this leaves room for a slow one.
const DRAIN_SECONDS: u64 = 8;

/// Frames (80 ms) every conversation sends at least.
const MIN_FRAMES: usize = 25;

/// Anything the test waits for (a slow 2-core CI machine: generous).
const PATIENCE: Duration = Duration::from_secs(60);

/// A child process and its stderr lines as they come.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Proc { name: name.into(), child, lines, seen: Arc::default() }
    }

    /// Takes in what was printed so far.
    fn drain_lines(&self) {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(self.lines.try_iter());
    }

    fn log(&self) -> String {
        self.drain_lines();
        format!("--- {} stderr:\n{}", self.name, self.seen.lock().unwrap().join("\n"))
    }

    fn wait_line(&self, want: &str) -> String {
        let t = Instant::now();
        loop {
            let left = PATIENCE.checked_sub(t.elapsed()).unwrap_or_else(|| panic!("no {want:?}\n{}", self.log()));
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.lock().unwrap().push(l.clone());
                    if l.contains(want) {
                        return l;
                    }
                }
                Err(_) => panic!("no {want:?}\n{}", self.log()),
            }
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([format!("-{name}"), self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -{name} {}", self.name);
    }

    fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(t.elapsed() < limit, "{} still running after {limit:?}\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moshi-rs serve` on a free port; returns it with its port.
fn serve(instance: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moshi-rs"));
    cmd.args(["serve", "--model", "tiny", "--port", "0", "--max-conversations", "2", "--idle-timeout", "60"])
        .args(["--drain-seconds", &DRAIN_SECONDS.to_string(), "--instance-name", instance]);
    Proc::spawn(instance, &mut cmd)
}

fn port_of(p: &Proc) -> u16 {
    let l = p.wait_line("moshi-rs serving on");
    l.rsplit(':').next().unwrap().split(' ').next().unwrap().parse().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `haproxy` on PATH, or where Debian puts it (/usr/sbin is not on every user's PATH).
fn find_haproxy() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

/// The configuration docs/deploy.md shows, with test-sized check intervals.
fn haproxy_cfg(front: u16, stats: u16, servers: &[(&str, u16)]) -> String {
    let mut cfg = format!(
        "global
    maxconn 256

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    # an upgraded WebSocket is a tunnel: this is its idle timeout (moshi-rs sends audio every 80 ms)
    timeout tunnel 1h
    timeout client-fin 5s
    timeout http-request 10s

frontend moshi
    bind 127.0.0.1:{front}
    default_backend moshi

backend moshi
    balance leastconn
    # /ready: 200 ready; 503 full (every slot taken), draining (SIGTERM) or down
    option httpchk GET /ready
    http-check expect status 200
    default-server check inter 250ms fastinter 250ms downinter 250ms rise 1 fall 1
"
    );
    for (name, port) in servers {
        cfg += &format!("    server {name} 127.0.0.1:{port}\n");
    }
    cfg += &format!("\nlisten stats\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /stats\n");
    cfg
}

/// One HTTP/1.1 GET: the status line and the body.
fn get(port: u16, path: &str) -> (String, String) {
    try_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

fn try_get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out.lines().next().unwrap_or("").to_string();
    Ok((status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

/// A Prometheus value of an instance's /metrics.
fn metric(port: u16, name: &str) -> f64 {
    let (status, body) = get(port, "/metrics");
    assert!(status.contains("200"), "/metrics: {status}");
    let line = body.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name} in /metrics"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// HAProxy's view of a server of backend `moshi` (`UP`, `DOWN`, …; `INI` before its first
/// check), from its CSV stats page.
fn lb_status(stats: u16, server: &str) -> String {
    // Not listening yet (HAProxy starting): no status.
    let Ok((_, body)) = try_get(stats, "/stats;csv") else { return String::new() };
    // The body is chunked: the CSV starts at its header line.
    let mut lines = body.lines().skip_while(|l| !l.starts_with("# pxname"));
    let head: Vec<&str> = lines.next().unwrap_or("").trim_start_matches("# ").split(',').collect();
    let col = |name: &str| head.iter().position(|c| *c == name).unwrap_or_else(|| panic!("no {name} column in {body}"));
    let (status, check) = (col("status"), col("check_status"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"moshi") && f.get(1) == Some(&server))
        .map(|f| if f[check] == "INI" { "INI".to_string() } else { f[status].to_string() })
        .unwrap_or_default()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool, context: impl Fn() -> String) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < PATIENCE, "waited {PATIENCE:?} for {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `samples` (24 kHz mono) as the Ogg pages Kyutai's web client sends (opus-recorder): OpusHead,
/// OpusTags, then one page of two 20 ms packets per message.
fn client_pages(samples: &[f32]) -> Vec<Vec<u8>> {
    let mut enc = OpusEncoder::new(24_000, 1, Application::Voip).unwrap();
    let mut w = PacketWriter::new(Vec::new());
    let serial = 0x10ad;
    w.write_packet(opus_head(3840, 24_000), serial, PacketWriteEndInfo::EndPage, 0).unwrap();
    let mut pages = vec![std::mem::take(w.inner_mut())];
    w.write_packet(opus_tags("haproxy test"), serial, PacketWriteEndInfo::EndPage, 0).unwrap();
    pages.push(std::mem::take(w.inner_mut()));
    let mut buf = vec![0u8; 4000];
    for (i, chunk) in samples.chunks(480).enumerate() {
        let mut frame = chunk.to_vec();
        frame.resize(480, 0.0);
        let n = enc.encode(&frame, 480, &mut buf).unwrap();
        let last = i % 2 == 1;
        let end = if last { PacketWriteEndInfo::EndPage } else { PacketWriteEndInfo::NormalPacket };
        w.write_packet(buf[..n].to_vec(), serial, end, 960 * (i as u64 + 1)).unwrap();
        if last {
            pages.push(std::mem::take(w.inner_mut()));
        }
    }
    pages
}

/// The page sequence numbers of the Ogg pages in one audio message (which holds whole pages).
fn page_sequence(mut b: &[u8]) -> Vec<u32> {
    let mut seq = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 27 && &b[..4] == b"OggS", "an audio message that is not whole Ogg pages");
        let segments = b[26] as usize;
        let body: usize = b[27..27 + segments].iter().map(|&s| s as usize).sum();
        seq.push(u32::from_le_bytes(b[18..22].try_into().unwrap()));
        b = &b[27 + segments + body..];
    }
    seq
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a conversation ended, as its client saw it.
#[derive(Debug)]
struct Outcome {
    /// 80 ms frames of audio the client sent.
    frames_sent: usize,
    /// Audio messages the server sent (each one frame).
    audio: usize,
    /// None: the client ended it; else the server's error message and its close code.
    ended_by_server: Option<(String, Option<u16>)>,
}

/// A conversation in progress through the load balancer.
struct Conversation {
    instance: String,
    stop: Arc<AtomicBool>,
    /// Pages sent so far.
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Conversation {
    /// The client stops sending (after at least [`MIN_FRAMES`]) and ends it once it has a reply
    /// for every frame it sent.
    fn finish(self, rt: &tokio::runtime::Runtime) -> Outcome {
        wait_until("a conversation to send its first frames", || self.sent.load(Ordering::SeqCst) >= 2 + 2 * MIN_FRAMES, String::new);
        self.stop.store(true, Ordering::SeqCst);
        self.outcome(rt)
    }

    fn outcome(self, rt: &tokio::runtime::Runtime) -> Outcome {
        rt.block_on(async { tokio::time::timeout(PATIENCE, self.task).await.expect("the conversation ends").unwrap() })
    }
}

async fn next_message(ws: &mut futures_util::stream::SplitStream<Socket>) -> Result<Message, Option<u16>> {
    match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a message within 20 s") {
        Some(Ok(Ws::Binary(b))) => match decode(&b, 1 << 22).unwrap() {
            Decoded::Message(m) => Ok(m),
            Decoded::Unknown(t) => panic!("unknown message type {t}"),
        },
        Some(Ok(Ws::Close(c))) => Err(c.map(|c| u16::from(c.code))),
        Some(Ok(other)) => panic!("unexpected {other:?}"),
        Some(Err(_)) | None => Err(None),
    }
}

/// Connects through the load balancer, reads the metadata (where it landed) and the handshake,
/// then streams `pages` at real-time pace until told to stop, reading everything the server sends.
async fn open(url: &str, pages: Arc<Vec<Vec<u8>>>) -> Result<Conversation, tungstenite::Error> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut tx, mut rx) = ws.split();
    let instance = match next_message(&mut rx).await {
        Ok(Message::Metadata(m)) => m["instance_name"].as_str().expect("instance_name").to_string(),
        other => panic!("first message: {other:?}"),
    };
    assert!(matches!(next_message(&mut rx).await, Ok(Message::Handshake { .. })));
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let sent_pages = Arc::new(AtomicUsize::new(0));
    let counter = sent_pages.clone();
    let sender = tokio::spawn(async move {
        let mut sent = 0;
        for p in pages.iter() {
            if stopped.load(Ordering::SeqCst) {
                break;
            }
            let mut m = vec![1u8];
            m.extend_from_slice(p);
            if tx.send(Ws::Binary(m.into())).await.is_err() {
                break;
            }
            sent += 1;
            counter.store(sent, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        assert!(sent < pages.len(), "ran out of audio to send");
        (tx, sent)
    });
    let stop_on_error = stop.clone();
    let task = tokio::spawn(async move {
        let mut decoded = OpusInput::new(24_000 * 600, 1 << 17);
        let mut audio = 0usize;
        let mut last_page: Option<u32> = None;
        let mut on_audio = |a: &[u8], audio: &mut usize| {
            for s in page_sequence(a) {
                assert_eq!(s, last_page.map_or(0, |l| l + 1), "an Ogg page is missing (audio message {audio})");
                last_page = Some(s);
            }
            decoded.push(a).unwrap();
            *audio += 1;
            assert_eq!(decoded.available(), *audio * 1920, "one 80 ms frame per audio message");
            assert_eq!(decoded.bad_packets, 0);
        };
        let frames = |pages: usize| pages.saturating_sub(2).div_ceil(2);
        let t = Instant::now();
        loop {
            if sender.is_finished() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "a conversation ran past 120 s");
            match tokio::time::timeout(Duration::from_millis(100), rx.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(Ws::Binary(b)))) => match decode(&b, 1 << 22).unwrap() {
                    Decoded::Message(Message::Audio(a)) => on_audio(&a, &mut audio),
                    Decoded::Message(Message::Text(_)) => {}
                    Decoded::Message(Message::Error(e)) => {
                        let close = next_message(&mut rx).await.err().flatten();
                        stop_on_error.store(true, Ordering::SeqCst);
                        let (_, sent) = sender.await.unwrap();
                        return Outcome { frames_sent: frames(sent), audio, ended_by_server: Some((e, close)) };
                    }
                    other => panic!("unexpected {other:?}"),
                },
                Ok(other) => panic!("unexpected {other:?} before the end"),
            }
        }
        // The client stopped sending: a reply for each frame it sent, then its close.
        let (mut tx, sent) = sender.await.unwrap();
        while audio < frames(sent) {
            match next_message(&mut rx).await {
                Ok(Message::Audio(a)) => on_audio(&a, &mut audio),
                Ok(Message::Text(_)) => {}
                other => panic!("waiting for the last replies ({audio} of {}): {other:?}", frames(sent)),
            }
        }
        tx.send(Ws::Close(None)).await.unwrap();
        loop {
            match next_message(&mut rx).await {
                Ok(Message::Audio(a)) => on_audio(&a, &mut audio),
                Ok(Message::Text(_)) => {}
                Ok(other) => panic!("after our close: {other:?}"),
                Err(_) => break,
            }
        }
        Outcome { frames_sent: frames(sent), audio, ended_by_server: None }
    });
    Ok(Conversation { instance, stop, sent: sent_pages, task })
}

fn assert_finished(what: &str, o: &Outcome) {
    eprintln!("{what}: {o:?}");
    assert!(o.ended_by_server.is_none(), "{what} was ended by the server: {o:?}");
    assert!(o.frames_sent >= MIN_FRAMES && o.audio >= o.frames_sent, "{what}: {o:?}");
}

#[test]
fn haproxy_spreads_conversations_and_a_drain_moves_new_ones_to_the_other_instance() {
    let Some(haproxy) = find_haproxy() else {
        if std::env::var("MOSHI_SKIP_HAPROXY_TEST").as_deref() == Ok("1") {
            println!("haproxy_routing: skipped (MOSHI_SKIP_HAPROXY_TEST=1, no haproxy installed)");
            return;
        }
        panic!(
            "this test needs HAProxy: `apt-get install haproxy` (Debian; tools/test.sh installs it when missing), \
             or set MOSHI_SKIP_HAPROXY_TEST=1 to skip it"
        );
    };
    let mut servers = [serve("moshi-a"), serve("moshi-b")];
    let ports = [port_of(&servers[0]), port_of(&servers[1])];
    let (front, stats) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("moshi-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_cfg(front, stats, &[("moshi-a", ports[0]), ("moshi-b", ports[1])])).unwrap();
    let mut lb = Proc::spawn("haproxy", Command::new(&haproxy).arg("-f").arg(&cfg).arg("-db"));
    let names = ["moshi-a", "moshi-b"];
    let context = |lb: &Proc, servers: &[Proc]| {
        let csv = try_get(stats, "/stats;csv").map(|r| r.1).unwrap_or_else(|e| e.to_string());
        format!("{}\n{}\n{}\n--- stats:\n{csv}", lb.log(), servers[0].log(), servers[1].log())
    };
    let t = Instant::now();
    while !names.iter().all(|n| lb_status(stats, n) == "UP") {
        assert!(lb.running(), "haproxy exited:\n{}", lb.log());
        assert!(t.elapsed() < PATIENCE, "HAProxy does not see both instances UP\n{}", context(&lb, &servers));
        std::thread::sleep(Duration::from_millis(50));
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let hello = moshi_engine::audio::load_mono_24k(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/hello.wav"))).unwrap();
    // Enough audio for the longest conversation (the drained one, ~20 s on a quiet machine).
    let pages = Arc::new(client_pages(&hello.repeat((90.0 * 24_000.0 / hello.len() as f64).ceil() as usize)));
    let url = format!("ws://127.0.0.1:{front}/api/chat");

    // 1–4: leastconn spreads them 2+2 (one each, then one each again).
    let mut convs: Vec<Conversation> = (0..4).map(|_| rt.block_on(open(&url, pages.clone())).expect("conversations 1-4 are admitted")).collect();
    let landed: Vec<&str> = convs.iter().map(|c| c.instance.as_str()).collect();
    eprintln!("conversations 1-4 landed on {landed:?}");
    assert_ne!(landed[0], landed[1], "leastconn: the second conversation goes to the idle instance");
    for (i, n) in names.iter().enumerate() {
        assert_eq!(landed.iter().filter(|l| *l == n).count(), 2, "{n}: {landed:?}");
        assert_eq!(metric(ports[i], "moshi_active_conversations"), 2.0, "{n}'s gauge");
        assert_eq!(get(ports[i], "/ready"), ("HTTP/1.1 503 Service Unavailable".into(), "full".into()));
    }
    // Both full: HAProxy takes both out, and a fifth client gets its 503 before any upgrade.
    wait_until("HAProxy to take both full instances out", || names.iter().all(|n| lb_status(stats, n) == "DOWN"), || context(&lb, &servers));
    match rt.block_on(open(&url, pages.clone())) {
        Err(tungstenite::Error::Http(resp)) => {
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            eprintln!("the fifth client: HTTP {} {body:?}", resp.status());
            assert_eq!(resp.status(), 503, "{body}");
        }
        Err(e) => panic!("the fifth client: {e}"),
        Ok(c) => panic!("a fifth conversation was admitted on {}", c.instance),
    }

    // The first instance (where conversation 1 landed) is the one stopped; the other is `second`.
    let first = names.iter().position(|n| *n == landed[0]).unwrap();
    let second = 1 - first;
    let on = |convs: &mut Vec<Conversation>, inst: usize| {
        let i = convs.iter().position(|c| c.instance == names[inst]).unwrap();
        convs.remove(i)
    };
    let first_short = on(&mut convs, first); // conversation 1: ends during the drain
    let first_long = on(&mut convs, first); // runs into the drain's end
    // One conversation on the second instance ends: it has a slot again and HAProxy puts it back.
    let o = on(&mut convs, second).finish(&rt);
    assert_finished("a conversation on the second instance", &o);
    wait_until("HAProxy to put the second instance back", || lb_status(stats, names[second]) == "UP", || context(&lb, &servers));

    let t_term = Instant::now();
    servers[first].signal("TERM");
    servers[first].wait_line("SIGTERM: draining");
    // Conversation 1 ends normally during the drain: a slot is free, but the instance stays out.
    let o = first_short.finish(&rt);
    assert_finished("conversation 1 (ended by its client during the drain)", &o);
    wait_until("the first instance's gauge to drop to 1", || metric(ports[first], "moshi_active_conversations") == 1.0, || context(&lb, &servers));
    assert_eq!(get(ports[first], "/ready"), ("HTTP/1.1 503 Service Unavailable".into(), "draining".into()));
    assert_eq!(lb_status(stats, names[first]), "DOWN");
    let sixth = rt.block_on(open(&url, pages.clone())).expect("a new conversation during the drain");
    assert_eq!(sixth.instance, names[second], "a new conversation during the drain goes to the other instance");
    assert_eq!(metric(ports[first], "moshi_output_dropped_frames_total"), 0.0);
    assert_eq!(metric(ports[first], "moshi_input_dropped_samples_total"), 0.0);

    // The first instance's other conversation goes on until --drain-seconds, then is ended by name.
    let o = first_long.outcome(&rt);
    let drained_after = t_term.elapsed();
    eprintln!("the drained conversation: {o:?} after {drained_after:?}");
    let (error, close) = o.ended_by_server.clone().expect("the drain ends it");
    assert!(error.contains("shutting down"), "{error}");
    assert_eq!(close, Some(1001));
    assert!(drained_after >= Duration::from_millis(DRAIN_SECONDS * 1000 - 300), "ended before --drain-seconds: {drained_after:?}");
    // It got its audio all along: a reply for every frame but the last few in flight at the end.
    assert!(o.audio + 5 >= o.frames_sent, "{o:?}");
    assert!(o.audio as u64 >= DRAIN_SECONDS * 12, "too few frames during the drain: {o:?}");
    assert_eq!(servers[first].exit(Duration::from_secs(20)).code(), Some(0), "{}", servers[first].log());
    wait_until("HAProxy to see the stopped instance DOWN", || lb_status(stats, names[first]) == "DOWN", || context(&lb, &servers));
    assert!(!servers[first].running());

    // The second instance's conversations (one from before, the one that moved) end normally.
    let o = on(&mut convs, second).finish(&rt);
    assert_finished("the second instance's conversation from the start", &o);
    let o = sixth.finish(&rt);
    assert_finished("the conversation that moved", &o);
    assert_eq!(metric(ports[second], "moshi_output_dropped_frames_total"), 0.0);
    assert_eq!(metric(ports[second], "moshi_input_dropped_samples_total"), 0.0);
    wait_until("the second instance to be idle", || metric(ports[second], "moshi_active_conversations") == 0.0, || context(&lb, &servers));
    servers[second].signal("TERM");
    assert_eq!(servers[second].exit(Duration::from_secs(20)).code(), Some(0));
    assert!(lb.running(), "haproxy exited:\n{}", lb.log());
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

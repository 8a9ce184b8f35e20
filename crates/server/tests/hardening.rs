//! Issue 15's hostile-client findings, each over a real socket against the in-process server on
//! the tiny model (docs/serve.md's outcome table names these tests): DNS rebinding (F1), idle
//! connections, slowloris, keep-alive and silent conversations (F2), the connection cap, the
//! closing handshake (F4), messages above the transport cap (F5), bytes without Ogg pages (F6),
//! long pages (F7), security headers (F9); API keys, `/ready` and the drain.

mod common;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use moshi_server::guard::ApiKeys;
use moshi_server::protocol::{decode, Decoded, Message};
use moshi_server::{Phase, RunningServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn server(cfg: ServerConfig) -> RunningServer {
    moshi_server::start(cfg, common::tiny()).await.unwrap()
}

/// One raw request (`head`: the request line and headers, without the final blank line); the
/// whole answer (the server closes: `Connection: close`).
async fn raw(s: &RunningServer, head: &str) -> String {
    let mut c = TcpStream::connect(s.addr()).await.unwrap();
    c.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await.expect("an answer").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(s: &RunningServer, path: &str) -> String {
    raw(s, &format!("GET {path} HTTP/1.1\r\nHost: {}", s.addr())).await
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

/// The status line of an upgrade request of `/api/chat{query}` with `headers` (the server's
/// answer is read up to its blank line; a 101 is not followed by a close).
async fn upgrade_status(s: &RunningServer, query: &str, headers: &str) -> String {
    let mut c = TcpStream::connect(s.addr()).await.unwrap();
    let sep = if headers.is_empty() { "" } else { "\r\n" };
    c.write_all(format!("GET /api/chat{query} HTTP/1.1\r\n{headers}{sep}{UPGRADE}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await.expect("an answer").unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).lines().next().unwrap_or("").to_string()
}

async fn connect(s: &RunningServer, query: &str) -> Socket {
    tokio_tungstenite::connect_async(format!("ws://{}/api/chat{query}", s.addr())).await.unwrap().0
}

/// The next protocol message (skipping pings), or the close frame's code and reason.
async fn next(ws: &mut Socket) -> Result<Message, Option<(u16, String)>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("the server answers within 20 s") {
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

async fn start_conversation(ws: &mut Socket) {
    assert!(matches!(next(ws).await, Ok(Message::Metadata(_))));
    assert!(matches!(next(ws).await, Ok(Message::Handshake { .. })));
}

/// Skip audio and text; expect an error naming `want`, then a close with `code`.
async fn expect_end(ws: &mut Socket, want: &str, code: u16) {
    loop {
        match next(ws).await {
            Ok(Message::Audio(_)) | Ok(Message::Text(_)) => continue,
            Ok(Message::Error(e)) => {
                assert!(e.contains(want), "error {e:?} does not name {want:?}");
                break;
            }
            other => panic!("expected an error naming {want:?}, got {other:?}"),
        }
    }
    match next(ws).await {
        Err(Some((c, _))) => assert_eq!(c, code, "close code"),
        other => panic!("expected a close {code}, got {other:?}"),
    }
}

async fn wait_active(s: &RunningServer, n: usize) {
    let t = Instant::now();
    while s.active() != n {
        assert!(t.elapsed() < Duration::from_secs(5), "active conversations stayed {} (want {n})", s.active());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn audio_message(page: &[u8]) -> Ws {
    let mut m = vec![1u8];
    m.extend_from_slice(page);
    Ws::Binary(m.into())
}

/// F1: `Host: evil.example` with its own `Origin` got 101; so did no Host with `Origin: http://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_is_refused_on_every_request() {
    let s = server(ServerConfig { allowed_hosts: vec!["moshi.example.org".into()], ..ServerConfig::local_test() }).await;
    let port = s.addr().port();
    let evil = upgrade_status(&s, "", &format!("Host: evil.example:{port}\r\nOrigin: http://evil.example:{port}")).await;
    assert!(evil.contains("403"), "{evil}");
    let bare = upgrade_status(&s, "", "Origin: http://").await;
    assert!(bare.contains("403"), "{bare}");
    let page = raw(&s, &format!("GET / HTTP/1.1\r\nHost: evil.example:{port}")).await;
    assert!(page.starts_with("HTTP/1.1 403") && page.contains("--allow-host evil.example"), "{page}");
    // The names served: loopback, IP literals, --allow-host; an Origin must be the page's own.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("moshi.example.org:{port}")] {
        let ok = upgrade_status(&s, "", &format!("Host: {host}\r\nOrigin: http://{host}")).await;
        assert!(ok.contains("101"), "{host}: {ok}");
    }
    let other = upgrade_status(&s, "", &format!("Host: localhost:{port}\r\nOrigin: http://moshi.example.org:{port}")).await;
    assert!(other.contains("403"), "{other}");
    // Non-browsers (no Origin) and HTTP/1.0 health checks (no Host) pass.
    assert!(upgrade_status(&s, "", &format!("Host: 127.0.0.1:{port}")).await.contains("101"));
    assert!(raw(&s, "GET /ready HTTP/1.0").await.contains("200 OK"));
    assert!(s.metrics().errors.with_label_values(&["host"]).get() >= 2);
    s.shutdown().await;
}

/// F2: idle TCP, slowloris headers and keep-alive after a response stayed open (≥ 90 s seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_time_out() {
    let s = server(ServerConfig { header_timeout_s: 1.0, ..ServerConfig::local_test() }).await;
    async fn closed_within(c: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
        let t = Instant::now();
        let mut got = Vec::new();
        let r = tokio::time::timeout(limit, c.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "still open after {limit:?}");
        (t.elapsed(), got)
    }
    // Silent from the start.
    let mut idle = TcpStream::connect(s.addr()).await.unwrap();
    let (t, _) = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(t >= Duration::from_millis(800), "closed too early: {t:?}");
    // Slowloris: a header line every 300 ms, never the blank line.
    let mut slow = TcpStream::connect(s.addr()).await.unwrap();
    let t = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let mut open = true;
    while open && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        open = slow.write_all(b"X-a: b\r\n").await.is_ok();
        let mut b = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut b)).await {
            open = false;
        }
    }
    assert!(!open && t.elapsed() < Duration::from_secs(3), "slowloris still served after {:?}", t.elapsed());
    // Keep-alive: one answer, then closed when no next request comes.
    let mut ka = TcpStream::connect(s.addr()).await.unwrap();
    ka.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let (t, got) = closed_within(&mut ka, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "answered first");
    assert!(t < Duration::from_secs(3), "{t:?}");
    s.shutdown().await;
}

/// F2: a WebSocket that never sends audio held its slot for ever (4 such clients locked
/// everyone out). Now: a named error after `--idle-timeout`, close 1008, the slot free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_conversation_is_ended_by_name() {
    let s = server(ServerConfig { idle_timeout_s: 1.5, max_conversations: 1, ..ServerConfig::local_test() }).await;
    let mut ws = connect(&s, "").await;
    start_conversation(&mut ws).await;
    let t = Instant::now();
    // Pings and unknown messages are not audio.
    ws.send(Ws::Binary(vec![6u8].into())).await.unwrap();
    expect_end(&mut ws, "--idle-timeout", 1008).await;
    assert!(t.elapsed() >= Duration::from_millis(1400), "{:?}", t.elapsed());
    wait_active(&s, 0).await;
    assert_eq!(s.metrics().errors.with_label_values(&["idle"]).get(), 1);
    // A client that talks is not idle: 3 s of audio at real-time pace, no error.
    let mut ws = connect(&s, "").await;
    start_conversation(&mut ws).await;
    let (mut tx, mut rx) = ws.split();
    let pages = common::client_pages(&common::hello()[..72_000]);
    let sender = tokio::spawn(async move {
        for p in pages {
            tx.send(audio_message(&p)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        tx
    });
    while !sender.is_finished() {
        match tokio::time::timeout(Duration::from_secs(5), rx.next()).await.unwrap() {
            Some(Ok(Ws::Binary(b))) => assert!(!matches!(decode(&b, 1 << 22).unwrap(), Decoded::Message(Message::Error(_)))),
            other => panic!("{other:?}"),
        }
    }
    drop(sender.await.unwrap());
    s.shutdown().await;
}

/// F2: 117 idle sockets under `ulimit -n 128` made /health and new conversations time out. The
/// cap answers one connection too many at once; a freed place is usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped() {
    let s = server(ServerConfig { max_connections: 3, ..ServerConfig::local_test() }).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(s.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let over = get(&s, "/health").await;
    assert!(over.starts_with("HTTP/1.1 503") && over.contains("--max-connections"), "{over}");
    assert!(s.metrics().errors.with_label_values(&["connections"]).get() >= 1);
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(get(&s, "/health").await.starts_with("HTTP/1.1 200"));
    // A conversation holds its place while it lasts (2 held + 1 WebSocket).
    let mut ws = connect(&s, "").await;
    start_conversation(&mut ws).await;
    assert!(get(&s, "/health").await.starts_with("HTTP/1.1 503"));
    drop(ws);
    s.shutdown().await;
}

/// F4: the server never answered a client's close frame: every clean close looked abnormal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_close_frame_is_answered() {
    let s = server(ServerConfig::local_test()).await;
    let mut ws = connect(&s, "").await;
    start_conversation(&mut ws).await;
    ws.send(Ws::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() }))).await.unwrap();
    let t = Instant::now();
    let reply = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("an answer") {
            Some(Ok(Ws::Close(c))) => break c,
            Some(Ok(_)) => continue,
            other => panic!("no close frame in answer: {other:?}"),
        }
    };
    assert_eq!(reply.map(|c| u16::from(c.code)), Some(1000));
    assert!(t.elapsed() < Duration::from_secs(2));
    wait_active(&s, 0).await;
    s.shutdown().await;
}

/// F5: a message above the transport's cap dropped the TCP connection with no message and no
/// close frame. F6: bytes without `OggS` were dropped for ever (a 3.4 GB flood kept its slot).
/// F7: a valid page longer than 2 s closed the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_pageless_and_long_audio_messages() {
    let s = server(ServerConfig { max_message_bytes: 4096, ..ServerConfig::local_test() }).await;
    // 4096 < 100 kB > the transport's cap (64 KiB here).
    let mut ws = connect(&s, "").await;
    start_conversation(&mut ws).await;
    ws.send(Ws::Binary(vec![1u8; 100_000].into())).await.unwrap();
    expect_end(&mut ws, "the limit is 4096 bytes", 1009).await;

    let s = {
        s.shutdown().await;
        server(ServerConfig::local_test()).await
    };
    let mut ws = connect(&s, "").await;
    start_conversation(&mut ws).await;
    for _ in 0..3 {
        ws.send(audio_message(&vec![0u8; 60_000])).await.unwrap();
    }
    expect_end(&mut ws, "without an Ogg page", 1007).await;

    // 5 s of speech on one page (sphn's layout for a file) in one message: taken, the newest
    // 2 s kept (the rest counted as dropped), and the conversation goes on.
    let mut ws = connect(&s, "").await;
    start_conversation(&mut ws).await;
    let speech: Vec<f32> = common::hello().repeat(2)[..120_000].to_vec();
    ws.send(audio_message(&one_page(&speech))).await.unwrap();
    let mut audio = 0;
    while audio < 10 {
        match next(&mut ws).await {
            Ok(Message::Audio(_)) => audio += 1,
            Ok(Message::Text(_)) => {}
            other => panic!("the conversation ended: {other:?}"),
        }
    }
    assert!(s.metrics().input_dropped_samples.get() >= 72_000, "{}", s.metrics().input_dropped_samples.get());
    s.shutdown().await;
}

/// `samples` as one Ogg Opus stream: the OpusHead and OpusTags pages, then one page of 20 ms
/// packets (at most 255).
fn one_page(samples: &[f32]) -> Vec<u8> {
    use moshi_server::ogg_stream::{opus_head, opus_tags};
    use ogg::PacketWriteEndInfo::{EndPage, NormalPacket};
    let mut enc = opus_rs::OpusEncoder::new(24_000, 1, opus_rs::Application::Voip).unwrap();
    enc.bitrate_bps = 32_000;
    let mut w = ogg::PacketWriter::new(Vec::new());
    w.write_packet(opus_head(3840, 24_000), 0x5eed, EndPage, 0).unwrap();
    w.write_packet(opus_tags("sphn"), 0x5eed, EndPage, 0).unwrap();
    let mut buf = vec![0u8; 4000];
    let n_packets = samples.len().div_ceil(480);
    assert!(n_packets <= 255);
    for (i, chunk) in samples.chunks(480).enumerate() {
        let mut frame = chunk.to_vec();
        frame.resize(480, 0.0);
        let n = enc.encode(&frame, 480, &mut buf).unwrap();
        assert!(n < 255, "one lacing value a packet");
        let end = if i + 1 == n_packets { EndPage } else { NormalPacket };
        w.write_packet(buf[..n].to_vec(), 0x5eed, end, 960 * (i as u64 + 1)).unwrap();
    }
    w.into_inner()
}

/// F9: no CSP, X-Content-Type-Options, frame-ancestors, Referrer-Policy, Cache-Control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_the_security_headers() {
    let s = server(ServerConfig::local_test()).await;
    let port = s.addr().port();
    let answers = [
        get(&s, "/").await,
        get(&s, "/app.js").await,
        get(&s, "/api/info").await,
        get(&s, "/health").await,
        get(&s, "/ready").await,
        get(&s, "/metrics").await,
        get(&s, "/no-such-page").await,
        raw(&s, &format!("GET / HTTP/1.1\r\nHost: evil.example:{port}")).await,
    ];
    for a in &answers {
        let head = a.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        for h in [
            "content-security-policy: default-src 'self';",
            "frame-ancestors 'none'",
            "x-content-type-options: nosniff",
            "x-frame-options: deny",
            "referrer-policy: no-referrer",
            "cache-control: ",
        ] {
            assert!(head.contains(h), "no {h:?} in\n{head}");
        }
        assert!(!head.contains("strict-transport-security"), "HSTS only under TLS (tests/tls.rs)");
    }
    assert!(answers[0].to_ascii_lowercase().contains("cache-control: no-cache"));
    assert!(answers[2].to_ascii_lowercase().contains("cache-control: no-store"));
    s.shutdown().await;
}

fn keyed() -> ServerConfig {
    ServerConfig { api_keys: Some(ApiKeys::new(&["k-alpha", "k-beta"]).unwrap()), ..ServerConfig::local_test() }
}

/// API keys as Kyutai's moshi-server takes them: the `kyutai-api-key` header, else `auth_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_the_conversation_info_and_metrics() {
    let s = server(keyed()).await;
    let host = format!("Host: {}", s.addr());
    assert!(upgrade_status(&s, "", &host).await.contains("401"));
    assert!(upgrade_status(&s, "?auth_id=nope", &host).await.contains("401"));
    assert!(upgrade_status(&s, "?auth_id=k-beta", &host).await.contains("101"));
    assert!(upgrade_status(&s, "", &format!("{host}\r\nkyutai-api-key: k-alpha")).await.contains("101"));
    // The header wins over the query, as in Kyutai's server.
    assert!(upgrade_status(&s, "?auth_id=k-alpha", &format!("{host}\r\nkyutai-api-key: wrong")).await.contains("401"));
    let refused = get(&s, "/api/info").await;
    assert!(refused.starts_with("HTTP/1.1 401") && refused.contains("kyutai-api-key") && refused.contains("auth_id"), "{refused}");
    assert!(get(&s, "/metrics").await.starts_with("HTTP/1.1 401"));
    assert!(get(&s, "/metrics?auth_id=k-alpha").await.starts_with("HTTP/1.1 200"));
    assert!(raw(&s, &format!("GET /api/info HTTP/1.1\r\n{host}\r\nkyutai-api-key: k-beta")).await.starts_with("HTTP/1.1 200"));
    // The page, its assets and the probes need no key (the page passes its URL's auth_id on).
    for path in ["/", "/app.js", "/health", "/ready"] {
        assert!(get(&s, path).await.starts_with("HTTP/1.1 200"), "{path}");
    }
    // A conversation with a key goes as any other.
    let mut ws = connect(&s, "?auth_id=k-alpha&text_topk=5").await;
    start_conversation(&mut ws).await;
    assert!(s.metrics().errors.with_label_values(&["auth"]).get() >= 5);
    s.shutdown().await;

    // --metrics-addr: /metrics on an address of its own, without a key; not on the main port.
    let s = server(ServerConfig { metrics_addr: Some("127.0.0.1:0".into()), ..keyed() }).await;
    let m = s.metrics_addr().unwrap();
    assert_ne!(m, s.addr());
    assert!(get(&s, "/metrics?auth_id=k-alpha").await.starts_with("HTTP/1.1 404"));
    let mut c = TcpStream::connect(m).await.unwrap();
    c.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {m}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("moshi_free_slots 4"), "{out}");
    s.shutdown().await;
}

/// `/ready` for a load balancer: `ready`, `full` while every slot is taken, `draining` after
/// SIGTERM (RunningServer::drain's first step), when new upgrades get 503 and running
/// conversations go on until they are ended (error message, close 1001).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_full_and_draining() {
    let s = server(ServerConfig { max_conversations: 1, ..ServerConfig::local_test() }).await;
    let body = |a: String| (a.lines().next().unwrap_or("").to_string(), a.split("\r\n\r\n").nth(1).unwrap_or("").to_string());
    assert_eq!(body(get(&s, "/ready").await), ("HTTP/1.1 200 OK".into(), "ready".into()));
    let mut ws = connect(&s, "").await;
    start_conversation(&mut ws).await;
    assert_eq!(body(get(&s, "/ready").await), ("HTTP/1.1 503 Service Unavailable".into(), "full".into()));
    let metrics = get(&s, "/metrics").await;
    assert!(metrics.contains("moshi_free_slots 0") && metrics.contains("moshi_draining 0"), "{metrics}");
    s.start_draining();
    assert_eq!(s.phase(), Phase::Draining);
    assert_eq!(body(get(&s, "/ready").await), ("HTTP/1.1 503 Service Unavailable".into(), "draining".into()));
    assert!(get(&s, "/health").await.starts_with("HTTP/1.1 200"), "/health stays liveness");
    assert!(get(&s, "/metrics").await.contains("moshi_draining 1"));
    let refused = upgrade_status(&s, "", &format!("Host: {}", s.addr())).await;
    assert!(refused.contains("503"), "{refused}");
    // The running conversation goes on.
    for _ in 0..5 {
        while !matches!(next(&mut ws).await, Ok(Message::Audio(_))) {}
    }
    s.stop_conversations();
    expect_end(&mut ws, "shutting down", 1001).await;
    wait_active(&s, 0).await;
    s.shutdown().await;
}

/// F3: a client that never reads was noticed after ~506 s with a 4 KiB receive buffer, and never
/// with the default one. Over a real socket with a 4 KiB receive buffer, sending audio in real time
/// and never reading: the server's capped send buffer (`listen::SEND_BUFFER`) fills, a send
/// outlasts `send_timeout_s`, and the conversation is closed and its slot freed, in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_over_a_real_socket() {
    let s = server(ServerConfig { send_timeout_s: 2.0, max_conversations: 1, ..ServerConfig::local_test() }).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(s.addr()).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/api/chat", s.addr()), stream).await.unwrap();
    start_conversation(&mut ws).await;
    let (mut tx, rx) = ws.split();
    let t = Instant::now();
    // Real-time audio (hello.wav over and over) until the server lets the conversation go.
    let pages = common::client_pages(&common::hello());
    let mut sent = 0usize;
    'outer: loop {
        for p in &pages {
            if s.active() == 0 || t.elapsed() > Duration::from_secs(180) {
                break 'outer;
            }
            // The server stops reading too once it has closed; a failed send ends the loop.
            if tokio::time::timeout(Duration::from_secs(1), tx.send(audio_message(p))).await.map_or(true, |r| r.is_err()) {
                break 'outer;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
    }
    let took = t.elapsed();
    wait_active(&s, 0).await;
    eprintln!("a client that never reads: closed after {took:?} ({sent} pages sent)");
    assert!(took < Duration::from_secs(120), "still open after {took:?}");
    assert_eq!(s.metrics().errors.with_label_values(&["send_timeout"]).get(), 1);
    drop(rx);
    s.shutdown().await;
}

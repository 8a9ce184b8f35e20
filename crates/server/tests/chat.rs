//! The server over a real socket (loopback, port 0) on the tiny model, driven by a WebSocket
//! client speaking Kyutai's protocol as their web client does: audio both ways, text, the
//! outcomes of over-capacity and bad input, /health and /metrics.

mod common;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use moshi_server::protocol::{decode, Decoded, Message};
use moshi_server::{RunningServer, ServerConfig};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server(cfg: ServerConfig) -> RunningServer {
    moshi_server::start(cfg, common::tiny()).await.unwrap()
}

async fn connect(s: &RunningServer, query: &str) -> Socket {
    let url = format!("ws://{}/api/chat{query}", s.addr());
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The next protocol message (skipping pings), or the close frame's code and reason.
async fn next(ws: &mut Socket) -> Result<Message, Option<(u16, String)>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("the server answers within 20 s") {
            Some(Ok(Ws::Binary(b))) => match decode(&b, 1 << 22).unwrap() {
                Decoded::Message(m) => return Ok(m),
                Decoded::Unknown(t) => panic!("the server sent unknown type {t}"),
            },
            Some(Ok(Ws::Close(c))) => return Err(c.map(|c| (u16::from(c.code), c.reason.to_string()))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Expect an error message naming `want`, then a close with `code`.
async fn expect_refusal(ws: &mut Socket, want: &str, code: u16) {
    match next(ws).await {
        Ok(Message::Error(e)) => assert!(e.contains(want), "error {e:?} does not name {want:?}"),
        other => panic!("expected an error naming {want:?}, got {other:?}"),
    }
    match next(ws).await {
        Err(Some((c, _))) => assert_eq!(c, code, "close code"),
        other => panic!("expected a close {code}, got {other:?}"),
    }
}

async fn start_conversation(ws: &mut Socket) {
    match next(ws).await {
        Ok(Message::Metadata(m)) => assert_eq!(m["instance_name"], "moshi-rs"),
        other => panic!("expected metadata first, got {other:?}"),
    }
    assert_eq!(next(ws).await, Ok(Message::Handshake { protocol_version: 0, model_version: 0 }));
}

async fn wait_active(s: &RunningServer, n: usize) {
    let t = Instant::now();
    while s.active() != n {
        assert!(t.elapsed() < Duration::from_secs(5), "active conversations stayed {} (want {n})", s.active());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The metadata message reports this conversation's settings: the query's values over the
/// server's defaults (greedy as temperature 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_reports_the_conversations_own_sampling() {
    let s = server(ServerConfig::local_test()).await;
    let mut ws = connect(&s, "?text_temperature=0.3&text_topk=9&audio_temperature=0").await;
    match next(&mut ws).await {
        Ok(Message::Metadata(m)) => {
            assert_eq!((m["text_temperature"].as_f64(), m["text_topk"].as_u64()), (Some(0.3), Some(9)), "{m}");
            assert_eq!(m["audio_temperature"].as_f64(), Some(0.0), "greedy audio: {m}");
        }
        other => panic!("expected metadata first, got {other:?}"),
    }
    let mut ws2 = connect(&s, "").await;
    match next(&mut ws2).await {
        Ok(Message::Metadata(m)) => {
            assert_eq!((m["text_temperature"].as_f64(), m["text_topk"].as_u64()), (Some(0.7), Some(25)), "the defaults: {m}");
        }
        other => panic!("expected metadata first, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_streams_audio_and_text_both_ways() {
    let s = server(ServerConfig::local_test()).await;
    let mut ws = connect(&s, "?text_temperature=0.7&text_topk=25&audio_temperature=0.8&audio_topk=250&pad_mult=0&text_seed=5&audio_seed=5&repetition_penalty_context=64&repetition_penalty=1.0").await;
    start_conversation(&mut ws).await;
    let (mut tx, mut rx) = ws.split();
    let pages = common::client_pages(&common::hello());
    let sent = pages.len();
    // Real-time pace, as a microphone: one 40 ms page per message.
    let sender = tokio::spawn(async move {
        for p in pages {
            let mut m = vec![1u8];
            m.extend(p);
            tx.send(Ws::Binary(m.into())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        tx
    });
    let mut audio = common::reader();
    let (mut audio_msgs, mut pieces) = (0usize, String::new());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) && !(sender.is_finished() && audio_msgs >= 20) {
        match tokio::time::timeout(Duration::from_secs(10), rx.next()).await.expect("a message within 10 s") {
            Some(Ok(Ws::Binary(b))) => match decode(&b, 1 << 22).unwrap() {
                Decoded::Message(Message::Audio(a)) => {
                    audio_msgs += 1;
                    audio.push(&a).unwrap();
                }
                Decoded::Message(Message::Text(t)) => pieces.push_str(&t),
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut tx = sender.await.unwrap();
    eprintln!("sent {sent} pages; got {audio_msgs} audio messages ({} samples), text {pieces:?}", audio.available());
    assert!(audio_msgs >= 20);
    // Every message is one 80 ms frame: two 40 ms Opus packets.
    assert_eq!(audio.available(), audio_msgs * 1920);
    assert_eq!(audio.bad_packets, 0);
    assert!(!pieces.is_empty(), "no transcript text arrived");
    tx.send(Ws::Close(None)).await.unwrap();
    wait_active(&s, 0).await;
    let m = s.metrics();
    assert!(m.frames_stepped.get() >= 20 && m.bytes_in.get() > 0 && m.bytes_out.get() > 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_is_refused_and_the_others_go_on() {
    let s = server(ServerConfig { max_conversations: 2, ..ServerConfig::local_test() }).await;
    let mut a = connect(&s, "").await;
    start_conversation(&mut a).await;
    let mut b = connect(&s, "").await;
    start_conversation(&mut b).await;
    // A flood of extra connections: each refused with an error message and a close, quickly.
    let t = Instant::now();
    let mut extra = Vec::new();
    for _ in 0..12 {
        extra.push(connect(&s, "").await);
    }
    for ws in extra.iter_mut() {
        expect_refusal(ws, "at capacity (2 conversations)", 1013).await;
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(s.metrics().errors.with_label_values(&["capacity"]).get(), 12);
    // The two admitted conversations still get their audio.
    for ws in [&mut a, &mut b] {
        let t = Instant::now();
        loop {
            if let Ok(Message::Audio(_)) = next(ws).await {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10));
        }
    }
    // One leaves abruptly (no close frame): its slot is free at once for a newcomer.
    drop(a);
    wait_active(&s, 1).await;
    let mut c = connect(&s, "").await;
    start_conversation(&mut c).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_error_message_and_a_close() {
    let s = server(ServerConfig { max_message_bytes: 4096, ..ServerConfig::local_test() }).await;
    let cases: Vec<(&str, Ws, &str, u16)> = vec![
        ("bad control byte", Ws::Binary(vec![3u8, 9].into()), "control message", 1007),
        ("invalid UTF-8 text", Ws::Binary(vec![2u8, 0xff, 0xfe].into()), "not valid UTF-8", 1007),
        ("oversized", Ws::Binary(vec![1u8; 5000].into()), "exceeds the limit of 4096", 1009),
        ("a text frame", Ws::Text("hello".into()), "text frames are not part of the protocol", 1003),
        ("vorbis, not opus", Ws::Binary(vorbis_page().into()), "not Ogg Opus", 1007),
    ];
    for (what, msg, want, code) in cases {
        let mut ws = connect(&s, "").await;
        start_conversation(&mut ws).await;
        ws.send(msg).await.unwrap();
        // Audio may already be on its way; the error follows it.
        loop {
            match next(&mut ws).await {
                Ok(Message::Audio(_)) | Ok(Message::Text(_)) => continue,
                Ok(Message::Error(e)) => {
                    assert!(e.contains(want), "{what}: {e:?} does not name {want:?}");
                    break;
                }
                other => panic!("{what}: expected an error, got {other:?}"),
            }
        }
        match next(&mut ws).await {
            Err(Some((c, _))) => assert_eq!(c, code, "{what}"),
            other => panic!("{what}: expected a close, got {other:?}"),
        }
    }
    // Unknown message types are ignored: the conversation goes on.
    let mut ws = connect(&s, "").await;
    start_conversation(&mut ws).await;
    ws.send(Ws::Binary(vec![42u8, 1, 2, 3].into())).await.unwrap();
    ws.send(Ws::Binary(vec![6u8].into())).await.unwrap();
    assert!(matches!(next(&mut ws).await, Ok(Message::Audio(_))));
    // Bad query parameters are refused by name.
    let mut ws = connect(&s, "?audio_topk=0").await;
    expect_refusal(&mut ws, "audio_topk", 1008).await;
    s.shutdown().await;
}

fn vorbis_page() -> Vec<u8> {
    let mut w = ogg::PacketWriter::new(Vec::new());
    w.write_packet(b"\x01vorbis\0\0\0\0\x01".to_vec(), 3, ogg::PacketWriteEndInfo::EndPage, 0).unwrap();
    let mut m = vec![1u8];
    m.extend(w.into_inner());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_are_refused_health_and_metrics_answer() {
    let s = server(ServerConfig { allowed_origins: vec!["https://friend.example".into()], ..ServerConfig::local_test() }).await;
    let url = format!("ws://{}/api/chat", s.addr());
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("Origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err().to_string();
    assert!(err.contains("403"), "{err}");
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("Origin", "https://friend.example".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    start_conversation(&mut ws).await;
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("Origin", format!("http://{}", s.addr()).parse().unwrap());
    tokio_tungstenite::connect_async(req).await.expect("the server's own page may connect");

    let health = http_get(&s, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\":\"ok\"") && health.contains("\"max_conversations\":4"), "{health}");
    let metrics = http_get(&s, "/metrics").await;
    for name in [
        "moshi_active_conversations",
        "moshi_frame_step_seconds_bucket",
        "moshi_frames_late_total",
        "moshi_bytes_in_total",
        "moshi_bytes_out_total",
        "moshi_errors_total{kind=\"origin\"} 1",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    let page = http_get(&s, "/").await;
    assert!(page.contains("text/html"), "{page}");
    let _ = CloseCode::Normal;
    s.shutdown().await;
}

async fn http_get(s: &RunningServer, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", s.addr()).as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

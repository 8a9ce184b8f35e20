//! PersonaPlex through the session loop (no network): a conversation with a persona and a preset
//! voice joins a batch where another conversation is talking; its slot's prompt is prefilled on
//! its own in chunks (`--prefill-positions`) while the other keeps getting a reply every frame,
//! and its handshake comes after the prompt, as NVIDIA's server sends it: frames after the join,
//! not the prompt's 77. A Moshi without prompt training refuses prompts.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use candle_core::{DType, Device};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use moshi_engine::exec::RunOptions;
use moshi_server::config::{PromptRequest, SessionParams};
use moshi_server::metrics::Metrics;
use moshi_server::protocol::{decode, Decoded, Message};
use moshi_server::scheduler::{self, SchedulerHandle};
use moshi_server::session::{run_session, End, SessionCtx, WsFrame};

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/personaplex_tiny")
}

fn ctx(s: &SchedulerHandle, metrics: &Metrics, prompt: Option<PromptRequest>) -> SessionCtx {
    SessionCtx {
        scheduler: s.clone(),
        metrics: metrics.clone(),
        params: Ok(SessionParams { gen: Default::default(), seed: 1, ignored: vec![], prompt }),
        metadata: serde_json::json!({"instance_name": "test"}),
        max_message_bytes: 1 << 16,
        send_timeout: Duration::from_secs(30),
        max_input_samples: 48_000,
        serial: 1,
        idle_timeout: Duration::from_secs(30),
        phase: tokio::sync::watch::channel(moshi_server::Phase::Serving).1,
    }
}

fn kind(f: &WsFrame) -> String {
    match f {
        WsFrame::Binary(b) => match decode(b, 1 << 22).unwrap() {
            Decoded::Message(Message::Metadata(_)) => "metadata".into(),
            Decoded::Message(Message::Handshake { .. }) => "handshake".into(),
            Decoded::Message(Message::Audio(_)) => "audio".into(),
            Decoded::Message(Message::Text(_)) => "text".into(),
            Decoded::Message(Message::Error(e)) => format!("error: {e}"),
            other => format!("{other:?}"),
        },
        WsFrame::Close(c) => format!("close {:?}", c.as_ref().map(|c| c.0)),
        other => format!("{other:?}"),
    }
}

fn limits(capacity: usize, max_output: usize, prefill_positions: usize) -> scheduler::BatchConfig {
    scheduler::BatchConfig { capacity, max_input: 48_000, max_output, prefill_positions }
}

fn persona() -> PromptRequest {
    PromptRequest { text: "You are a helpful assistant named Ada.".into(), voice: Some(golden().join("voice.pt")) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompted_conversation_joins_a_talking_batch_and_shakes_hands_after_its_prompt() {
    let moshi = moshi_engine::model_files::MoshiFiles::from_dir(&golden()).unwrap().load(DType::F32, &Device::Cpu).unwrap();
    let metrics = Metrics::new();
    // 32 positions per frame: the 76 prefilled positions take the join and two frames.
    let s = scheduler::spawn(moshi, RunOptions::default(), limits(2, 256, 32), metrics.clone()).unwrap();
    // A talks (no prompt), its audio streamed in.
    let (a_out, mut a_rx) = mpsc::channel::<WsFrame>(1024);
    let (mut a_in, a_in_rx) = mpsc::channel::<Result<WsFrame, String>>(1024);
    let a = tokio::spawn(run_session(a_out.sink_map_err(|e| e.to_string()), a_in_rx, ctx(&s, &metrics, None)));
    assert_eq!(kind(&a_rx.next().await.unwrap()), "metadata");
    assert_eq!(kind(&a_rx.next().await.unwrap()), "handshake");
    for page in common::client_pages(&common::hello()) {
        let mut m = vec![1u8];
        m.extend(page);
        a_in.send(Ok(WsFrame::Binary(m))).await.unwrap();
    }
    // The batch is deeper than B's prompt once 77 frames have run (a younger one with someone
    // talking makes the splice wait: tests/personaplex_engine.rs).
    while metrics.frames_stepped.get() < 80 {
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    while a_rx.try_recv().is_ok() {}
    // B joins with a persona and a voice: 77 prompt frames (26 + 1 voice, 2 × 6 silence, 38 text).
    let (b_out, mut b_rx) = mpsc::channel::<WsFrame>(1024);
    let (_b_in, b_in_rx) = mpsc::channel::<Result<WsFrame, String>>(8);
    let stepped = metrics.frames_stepped.get();
    let b = tokio::spawn(run_session(b_out.sink_map_err(|e| e.to_string()), b_in_rx, ctx(&s, &metrics, Some(persona()))));
    let first = tokio::time::timeout(Duration::from_secs(60), b_rx.next()).await.unwrap().unwrap();
    let prompt_frames = metrics.frames_stepped.get() - stepped;
    assert_eq!(kind(&first), "metadata");
    assert_eq!(kind(&b_rx.next().await.unwrap()), "handshake");
    assert!(
        (2..=3).contains(&prompt_frames),
        "the handshake came after {prompt_frames} frames: expected 2 (76 positions in chunks of 32, then the prompt's last frame)"
    );
    assert_eq!(metrics.prefill_positions.get(), 76);
    // A was answered every frame meanwhile.
    let mut a_audio = 0;
    while let Ok(f) = a_rx.try_recv() {
        a_audio += (kind(&f) == "audio") as usize;
    }
    assert!(a_audio as u64 + 2 >= prompt_frames, "A got {a_audio} replies in {prompt_frames} frames");
    // B's first reply is the prompt's last frame, then one per frame.
    let mut b_audio = 0;
    while b_audio < 3 {
        let f = tokio::time::timeout(Duration::from_secs(10), b_rx.next()).await.unwrap().unwrap();
        b_audio += (kind(&f) == "audio") as usize;
    }
    assert_eq!(s.active(), 2);
    drop(a_in);
    assert_eq!(a.await.unwrap(), End::ClientClosed);
    drop(_b_in);
    assert_eq!(b.await.unwrap(), End::ClientClosed);
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_prompt_training_refuses_a_prompt() {
    let metrics = Metrics::new();
    let s = scheduler::spawn(common::tiny(), RunOptions::default(), limits(1, 4, 256), metrics.clone()).unwrap();
    let (out_tx, out_rx) = mpsc::channel::<WsFrame>(8);
    let (_in_tx, in_rx) = mpsc::channel::<Result<WsFrame, String>>(1);
    let end = run_session(out_tx.sink_map_err(|e| e.to_string()), in_rx, ctx(&s, &metrics, Some(persona()))).await;
    assert!(matches!(end, End::Refused(ref e) if e.contains("no prompt training")), "{end:?}");
    let frames: Vec<String> = out_rx.map(|f| kind(&f)).collect().await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(frames[0].contains("no prompt training") && frames[1] == "close Some(1008)", "{frames:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.active(), 0, "the slot is free again");
    s.shutdown();
}

/// What the page's persona box reads: `/api/info` says whether the model takes prompts, and
/// `/api/voices` lists the `--voice-prompt-dir` presets (none for a model without prompt training).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_learns_of_prompts_and_voices() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn get_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text}");
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    }
    let moshi = moshi_engine::model_files::MoshiFiles::from_dir(&golden()).unwrap().load(DType::F32, &Device::Cpu).unwrap();
    let cfg = moshi_server::ServerConfig { voice_prompt_dir: Some(golden()), ..moshi_server::ServerConfig::local_test() };
    let s = moshi_server::start(cfg, moshi).await.unwrap();
    assert_eq!(get_json(s.addr(), "/api/info").await["prompts"], true);
    let v = get_json(s.addr(), "/api/voices").await;
    assert_eq!(v, serde_json::json!({ "prompts": true, "voices": ["voice.pt"] }));
    s.shutdown().await;

    let cfg = moshi_server::ServerConfig { voice_prompt_dir: Some(golden()), ..moshi_server::ServerConfig::local_test() };
    let s = moshi_server::start(cfg, common::tiny()).await.unwrap();
    assert_eq!(get_json(s.addr(), "/api/info").await["prompts"], false);
    assert_eq!(get_json(s.addr(), "/api/voices").await, serde_json::json!({ "prompts": false, "voices": [] }));
    s.shutdown().await;
}

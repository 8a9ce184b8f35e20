//! The socket loop without a network: `run_session` over in-memory channels (a sink and a stream
//! of frames), including a client that never reads and one that vanishes.

mod common;

use std::time::Duration;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use moshi_engine::exec::RunOptions;
use moshi_server::config::SessionParams;
use moshi_server::metrics::Metrics;
use moshi_server::protocol::{decode, Decoded, Message};
use moshi_server::scheduler::{self, SchedulerHandle};
use moshi_server::session::{run_session, End, SessionCtx, WsFrame};

fn batch(capacity: usize, metrics: &Metrics) -> SchedulerHandle {
    let limits = scheduler::BatchConfig { capacity, max_input: 48_000, max_output: 4, prefill_positions: 256 };
    scheduler::spawn(common::tiny(), RunOptions::default(), limits, metrics.clone()).unwrap()
}

fn ctx(s: &SchedulerHandle, metrics: &Metrics, timeout: Duration) -> SessionCtx {
    SessionCtx {
        scheduler: s.clone(),
        metrics: metrics.clone(),
        params: Ok(SessionParams { gen: Default::default(), seed: 1, ignored: vec![], prompt: None }),
        metadata: serde_json::json!({"instance_name": "test"}),
        max_message_bytes: 1 << 16,
        send_timeout: timeout,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_in_audio_out_then_the_client_leaves() {
    let metrics = Metrics::new();
    let s = batch(2, &metrics);
    let (out_tx, mut out_rx) = mpsc::channel::<WsFrame>(64);
    let (mut in_tx, in_rx) = mpsc::channel::<Result<WsFrame, String>>(64);
    let session = tokio::spawn(run_session(out_tx.sink_map_err(|e| e.to_string()), in_rx, ctx(&s, &metrics, Duration::from_secs(5))));
    assert_eq!(kind(&out_rx.next().await.unwrap()), "metadata");
    assert_eq!(kind(&out_rx.next().await.unwrap()), "handshake");
    for page in common::client_pages(&common::hello()[..24_000]) {
        let mut m = vec![1u8];
        m.extend(page);
        in_tx.send(Ok(WsFrame::Binary(m))).await.unwrap();
    }
    let mut audio = 0;
    while audio < 5 {
        if kind(&out_rx.next().await.unwrap()) == "audio" {
            audio += 1;
        }
    }
    assert_eq!(s.active(), 1);
    drop(in_tx); // the client vanishes
    assert_eq!(session.await.unwrap(), End::ClientClosed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.active(), 0, "the slot is freed when the session ends");
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_memory_stays_bounded() {
    let metrics = Metrics::new();
    let s = batch(1, &metrics);
    // A sink with room for 3 frames that nobody drains: the 4th send never completes.
    let (out_tx, _out_rx) = mpsc::channel::<WsFrame>(0);
    let (_in_tx, in_rx) = mpsc::channel::<Result<WsFrame, String>>(1);
    let end = run_session(out_tx.sink_map_err(|e| e.to_string()), in_rx, ctx(&s, &metrics, Duration::from_millis(500))).await;
    assert_eq!(end, End::SendTimeout);
    assert_eq!(metrics.errors.with_label_values(&["send_timeout"]).get(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.active(), 0);
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_parameters_end_before_joining() {
    let metrics = Metrics::new();
    let s = batch(1, &metrics);
    let (out_tx, out_rx) = mpsc::channel::<WsFrame>(8);
    let (_in_tx, in_rx) = mpsc::channel::<Result<WsFrame, String>>(1);
    let mut c = ctx(&s, &metrics, Duration::from_secs(1));
    c.params = Err("query parameter text_topk=\"0\": top-k must be at least 1".into());
    let end = run_session(out_tx.sink_map_err(|e| e.to_string()), in_rx, c).await;
    assert!(matches!(end, End::Refused(ref e) if e.contains("text_topk")), "{end:?}");
    let frames: Vec<String> = out_rx.map(|f| kind(&f)).collect().await;
    assert_eq!(frames, vec!["error: query parameter text_topk=\"0\": top-k must be at least 1".to_string(), "close Some(1008)".into()]);
    assert_eq!(s.active(), 0);
    s.shutdown();
}

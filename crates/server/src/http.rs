//! The HTTP side: routes (`/` and the page's assets, `/api/info`, `/api/chat`, `/metrics`,
//! `/health`), the origin check, optional TLS, and [`start`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use moshi_engine::conversation::Moshi;
use tokio::net::TcpListener;

use crate::config::{ServerConfig, SessionParams};
use crate::metrics::Metrics;
use crate::scheduler::{self, SchedulerHandle};
use crate::session::{input_samples, run_session, SessionCtx, WsFrame};
use crate::tls;

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const WORKLET_JS: &str = include_str!("../web/worklet.js");
const STYLE_CSS: &str = include_str!("../web/style.css");
const OGG_JS: &str = include_str!("../web/ogg.js");
const RECORDER_JS: &str = include_str!("../web/recorder.js");
const FAVICON_SVG: &str = include_str!("../web/favicon.svg");

struct AppState {
    cfg: ServerConfig,
    scheduler: SchedulerHandle,
    metrics: Metrics,
    metadata: serde_json::Value,
    text_vocab: usize,
    audio_vocab: usize,
    serial: AtomicU32,
}

/// A server started by [`start`].
pub struct RunningServer {
    addr: SocketAddr,
    tls: bool,
    scheduler: SchedulerHandle,
    metrics: Metrics,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port` (or https).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Conversations in progress.
    pub fn active(&self) -> usize {
        self.scheduler.active()
    }

    /// Stop accepting, end the batch thread, wait for the listener task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.scheduler.shutdown();
        let _ = self.task.await;
    }

    /// Run until the listener task ends (ctrl-c handling is the caller's).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Bind, start the batch thread over `moshi`, and serve in the background.
pub async fn start(cfg: ServerConfig, moshi: Moshi) -> anyhow::Result<RunningServer> {
    anyhow::ensure!(cfg.max_message_bytes >= 1024, "--max-message-bytes must be at least 1024");
    let metrics = Metrics::new();
    let lm = moshi.lm.config().clone();
    let metadata = serde_json::json!({
        "text_temperature": cfg.defaults.text.temperature.unwrap_or(0.0),
        "text_topk": cfg.defaults.text.top_k,
        "audio_temperature": cfg.defaults.audio.temperature.unwrap_or(0.0),
        "audio_topk": cfg.defaults.audio.top_k,
        "pad_mult": 0.0,
        "repetition_penalty_context": 64,
        "repetition_penalty": 1.0,
        "lm_model_file": cfg.model_name,
        "mimi_model_file": cfg.model_name,
        "instance_name": "moshi-rs",
        "build_info": { "name": "moshi-rs", "version": env!("CARGO_PKG_VERSION") },
    });
    let frame = moshi.frame_size();
    let max_input = input_samples(cfg.max_buffered_input_s).max(frame);
    let limits = scheduler::BatchConfig {
        capacity: cfg.max_conversations,
        max_input,
        max_output: cfg.max_queued_output_frames,
        prefill_positions: cfg.prefill_positions,
    };
    let scheduler = scheduler::spawn(moshi, cfg.options, limits, metrics.clone())?;
    let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    let tls_files = cfg.tls.clone();
    let tls = tls_files.is_some();
    let state = Arc::new(AppState {
        cfg,
        scheduler: scheduler.clone(),
        metrics: metrics.clone(),
        metadata,
        text_vocab: lm.text_card,
        audio_vocab: lm.card,
        serial: AtomicU32::new(1),
    });
    let app = router(state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = match tls_files {
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "server stopped");
            }
        }),
        Some((cert, key)) => {
            let listener = tls::TlsListener::new(listener, &cert, &key)?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                    tracing::error!(error = %e, "server stopped");
                }
            })
        }
    };
    tracing::info!(%addr, tls, "listening");
    Ok(RunningServer { addr, tls, scheduler, metrics, stop, task })
}

fn router(state: Arc<AppState>) -> Router {
    let asset = |ty: &'static str, body: &'static str| move || async move { ([(header::CONTENT_TYPE, ty)], body) };
    Router::new()
        .route("/", get(asset("text/html; charset=utf-8", INDEX_HTML)))
        .route("/app.js", get(asset("text/javascript; charset=utf-8", APP_JS)))
        .route("/worklet.js", get(asset("text/javascript; charset=utf-8", WORKLET_JS)))
        .route("/style.css", get(asset("text/css; charset=utf-8", STYLE_CSS)))
        .route("/ogg.js", get(asset("text/javascript; charset=utf-8", OGG_JS)))
        .route("/recorder.js", get(asset("text/javascript; charset=utf-8", RECORDER_JS)))
        .route("/favicon.svg", get(asset("image/svg+xml", FAVICON_SVG)))
        .route("/api/info", get(info))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/chat", get(chat))
        .with_state(state)
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    let alive = s.scheduler.is_alive();
    let body = serde_json::json!({
        "status": if alive { "ok" } else { "down" },
        "model": s.cfg.model_name,
        "active_conversations": s.scheduler.active(),
        "max_conversations": s.scheduler.capacity(),
    });
    let code = if alive { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// What the page needs before connecting: the model's name and the sampling a conversation gets
/// when its query string says nothing (`moshi-rs serve --temperature …`); a temperature of 0 is
/// greedy. Top-k values above the vocabulary sizes are clamped by the server.
async fn info(State(s): State<Arc<AppState>>) -> Response {
    let sampling = |c: &moshi_engine::lm::SamplingConfig| {
        let greedy = c.is_greedy();
        serde_json::json!({
            "temperature": if greedy { 0.0 } else { c.temperature.unwrap_or(0.0) },
            "top_k": c.top_k,
            "greedy": greedy,
        })
    };
    let body = serde_json::json!({
        "model": s.cfg.model_name,
        "version": env!("CARGO_PKG_VERSION"),
        "text": sampling(&s.cfg.defaults.text),
        "audio": sampling(&s.cfg.defaults.audio),
        "text_vocab": s.text_vocab,
        "audio_vocab": s.audio_vocab,
        "max_conversations": s.scheduler.capacity(),
    });
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body.to_string()).into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

/// Browsers send `Origin`; a page from another site must not drive a local Moshi unless allowed.
fn origin_allowed(cfg: &ServerConfig, headers: &HeaderMap) -> Result<(), String> {
    if cfg.allow_any_origin {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(()); // not a browser
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let own = ["http://", "https://"].iter().any(|scheme| origin == format!("{scheme}{host}"));
    if own || cfg.allowed_origins.iter().any(|o| o.trim_end_matches('/') == origin) {
        Ok(())
    } else {
        Err(format!("origin {origin} is not allowed (start the server with --allow-origin {origin})"))
    }
}

async fn chat(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(e) = origin_allowed(&s.cfg, &headers) {
        s.metrics.error("origin");
        tracing::warn!(%e, "refused a connection");
        return (StatusCode::FORBIDDEN, e).into_response();
    }
    s.metrics.connections.inc();
    let seed = rand::random::<u64>();
    let params = SessionParams::from_query(&q, &s.cfg.defaults, s.text_vocab, s.audio_vocab, seed).and_then(|mut p| {
        p.prompt = crate::config::PromptRequest::from_query(&q, s.cfg.voice_prompt_dir.as_deref())?;
        Ok(p)
    });
    if let Ok(p) = &params {
        if !p.ignored.is_empty() {
            tracing::warn!(ignored = ?p.ignored, "parameters accepted but not implemented");
        }
    }
    // The transport's own limit sits above ours, so that an oversized message gets our error
    // message (naming the limit) rather than a bare transport failure.
    let transport_cap = s.cfg.max_message_bytes.saturating_mul(2).max(1 << 16);
    ws.max_message_size(transport_cap).max_frame_size(transport_cap).on_upgrade(move |socket| conversation(s, socket, params))
}

fn to_frame(m: AxMessage) -> WsFrame {
    match m {
        AxMessage::Binary(b) => WsFrame::Binary(b.to_vec()),
        AxMessage::Text(t) => WsFrame::Text(t.to_string()),
        AxMessage::Ping(p) => WsFrame::Ping(p.to_vec()),
        AxMessage::Pong(p) => WsFrame::Pong(p.to_vec()),
        AxMessage::Close(c) => WsFrame::Close(c.map(|c| (c.code, c.reason.to_string()))),
    }
}

fn from_frame(f: WsFrame) -> AxMessage {
    match f {
        WsFrame::Binary(b) => AxMessage::Binary(b.into()),
        WsFrame::Text(t) => AxMessage::Text(t.into()),
        WsFrame::Ping(p) => AxMessage::Ping(p.into()),
        WsFrame::Pong(p) => AxMessage::Pong(p.into()),
        WsFrame::Close(c) => AxMessage::Close(c.map(|(code, reason)| CloseFrame { code, reason: reason.into() })),
    }
}

async fn conversation(s: Arc<AppState>, socket: WebSocket, params: Result<SessionParams, String>) {
    let (tx, rx) = socket.split();
    let tx = tx.with(|f: WsFrame| async move { Ok::<_, axum::Error>(from_frame(f)) });
    let rx = rx.map(|m| m.map(to_frame));
    let mut metadata = s.metadata.clone();
    if let Ok(p) = &params {
        // This conversation's own settings (the query's values over the server's defaults), in
        // the metadata's fields: temperature 0 means greedy.
        let t = |c: &moshi_engine::lm::SamplingConfig| if c.is_greedy() { 0.0 } else { c.temperature.unwrap_or(0.0) };
        metadata["text_temperature"] = serde_json::json!(t(&p.gen.text));
        metadata["text_topk"] = serde_json::json!(p.gen.text.top_k);
        metadata["audio_temperature"] = serde_json::json!(t(&p.gen.audio));
        metadata["audio_topk"] = serde_json::json!(p.gen.audio.top_k);
        metadata["ignored_parameters"] = serde_json::json!(p.ignored);
    }
    let ctx = SessionCtx {
        scheduler: s.scheduler.clone(),
        metrics: s.metrics.clone(),
        params,
        metadata,
        max_message_bytes: s.cfg.max_message_bytes,
        send_timeout: Duration::from_secs_f64(s.cfg.send_timeout_s),
        max_input_samples: input_samples(s.cfg.max_buffered_input_s),
        serial: s.serial.fetch_add(1, Ordering::Relaxed),
    };
    let end = run_session(Box::pin(tx), rx, ctx).await;
    tracing::info!(?end, "session ended");
}

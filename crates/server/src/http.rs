//! The HTTP side: routes (`/` and the page's assets, `/api/info`, `/api/chat`, `/metrics`,
//! `/health`, `/ready`), the request guards (`guard.rs`: hosts, origins, API keys, security
//! headers), the accept loop (`listen.rs`, with TLS), [`start`] and the drain.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use moshi_engine::conversation::Moshi;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::{ServerConfig, SessionParams};
use crate::guard::{self, HostList};
use crate::listen::{self, ListenOptions};
use crate::metrics::Metrics;
use crate::scheduler::{self, SchedulerHandle};
use crate::session::{input_samples, run_session, Phase, RecvError, SessionCtx, WsFrame};
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
    /// The model follows PersonaPlex's prompts (`text_prompt`, `voice_prompt`).
    prompts: bool,
    serial: AtomicU32,
    hosts: HostList,
    tls: bool,
    phase: watch::Sender<Phase>,
}

/// A server started by [`start`].
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when `--metrics-addr` gave it an address of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `http://host:port` (or https).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.state.tls { "https" } else { "http" }, self.addr)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// Conversations in progress.
    pub fn active(&self) -> usize {
        self.state.scheduler.active()
    }

    pub fn phase(&self) -> Phase {
        *self.state.phase.borrow()
    }

    /// Take no new conversation (`/ready` answers 503 `draining`, upgrades of `/api/chat` are
    /// refused with 503); those running go on.
    pub fn start_draining(&self) {
        self.set_phase(Phase::Draining);
    }

    /// End the conversations still running: each gets an error message and close 1001.
    pub fn stop_conversations(&self) {
        self.set_phase(Phase::Stopping);
    }

    fn set_phase(&self, p: Phase) {
        self.state.phase.send_if_modified(|now| {
            // Only forward: Serving → Draining → Stopping.
            let forward = (*now as u8) < (p as u8);
            if forward {
                *now = p;
            }
            forward
        });
        self.state.metrics.draining.set(i64::from(p != Phase::Serving));
    }

    /// SIGTERM's course: drain, let the running conversations go on for up to `drain_seconds`
    /// (or until `cut_short` resolves: a second signal), end those left, then stop.
    pub async fn drain(self, cut_short: impl std::future::Future<Output = ()>) {
        self.start_draining();
        let grace = Duration::from_secs_f64(self.state.cfg.drain_seconds);
        tracing::info!(active = self.active(), seconds = grace.as_secs_f64(), "draining");
        let wait_idle = async {
            while self.active() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(grace, wait_idle) => {}
            _ = cut_short => tracing::info!("drain cut short"),
        }
        if self.active() > 0 {
            tracing::info!(active = self.active(), "ending the conversations left");
            self.stop_conversations();
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                while self.active() > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            // Their error messages and close frames on their way (the sessions linger for the
            // clients' close frames).
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.shutdown().await;
    }

    /// Stop accepting, end the batch thread, wait for the listener tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.state.scheduler.shutdown();
        for t in self.tasks {
            let _ = t.await;
        }
        if !self.state.scheduler.stopped(Duration::from_secs(10)).await {
            tracing::warn!("the batch thread did not end within 10 s of the shutdown");
        }
    }

    /// Run until the listener tasks end (signal handling is the caller's).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Whether binding `host` keeps the server on this machine.
fn is_loopback(host: &str) -> bool {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn positive(name: &str, v: f64) -> anyhow::Result<()> {
    anyhow::ensure!(v.is_finite() && v > 0.0, "{name} must be a positive number of seconds, got {v}");
    Ok(())
}

/// Bind, start the batch thread over `moshi`, and serve in the background.
pub async fn start(cfg: ServerConfig, moshi: Moshi) -> anyhow::Result<RunningServer> {
    anyhow::ensure!(cfg.max_message_bytes >= 1024, "--max-message-bytes must be at least 1024");
    anyhow::ensure!(cfg.max_connections >= 1, "--max-connections must be at least 1");
    positive("--header-timeout", cfg.header_timeout_s)?;
    positive("--idle-timeout", cfg.idle_timeout_s)?;
    anyhow::ensure!(cfg.drain_seconds.is_finite() && cfg.drain_seconds >= 0.0, "--drain-seconds must be ≥ 0, got {}", cfg.drain_seconds);
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
        "instance_name": cfg.instance_name,
        "build_info": { "name": "moshi-rs", "version": env!("CARGO_PKG_VERSION") },
    });
    let tls = match &cfg.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    let frame = moshi.frame_size();
    let max_input = input_samples(cfg.max_buffered_input_s).max(frame);
    let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    let metrics_listener = match &cfg.metrics_addr {
        Some(a) => Some(TcpListener::bind(a.as_str()).await.map_err(|e| anyhow::anyhow!("--metrics-addr {a}: cannot listen: {e}"))?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    if !is_loopback(&cfg.host) && cfg.api_keys.is_none() {
        let line = "!".repeat(78);
        eprintln!(
            "{line}\n!! WARNING: moshi-rs serve is listening on {addr}, beyond this machine, WITHOUT API KEYS:\n\
             !! anyone who can reach it can talk to the model. Start it with --api-key-file FILE\n\
             !! (one key per line; clients send one in the kyutai-api-key header or ?auth_id=).\n{line}"
        );
        tracing::warn!(%addr, "listening beyond loopback without API keys (--api-key-file)");
    }
    let limits = scheduler::BatchConfig {
        capacity: cfg.max_conversations,
        max_input,
        max_output: cfg.max_queued_output_frames,
        prefill_positions: cfg.prefill_positions,
    };
    let scheduler = scheduler::spawn(moshi, cfg.options, limits, metrics.clone())?;
    let header_timeout = Duration::from_secs_f64(cfg.header_timeout_s);
    let connections = Arc::new(Semaphore::new(cfg.max_connections));
    let state = Arc::new(AppState {
        hosts: HostList::new(&cfg.allowed_hosts),
        tls: tls.is_some(),
        cfg,
        scheduler: scheduler.clone(),
        metrics: metrics.clone(),
        metadata,
        text_vocab: lm.text_card,
        audio_vocab: lm.card,
        prompts: lm.takes_prompts(),
        serial: AtomicU32::new(1),
        phase: watch::channel(Phase::Serving).0,
    });
    let (stop, stopped) = watch::channel(false);
    let opts = ListenOptions { header_timeout, connections, tls };
    let mut tasks = vec![tokio::spawn(listen::serve(listener, router(state.clone()), opts.clone(), metrics.clone(), stopped.clone()))];
    if let Some(l) = metrics_listener {
        let app = Router::new().route("/metrics", get(metrics_page)).layer(from_fn_with_state(state.clone(), guard_request)).with_state(state.clone());
        let opts = ListenOptions { connections: Arc::new(Semaphore::new(64)), tls: None, ..opts };
        tasks.push(tokio::spawn(listen::serve(l, app, opts, metrics.clone(), stopped)));
    }
    tracing::info!(%addr, tls = state.tls, keys = state.cfg.api_keys.as_ref().map_or(0, |k| k.len()), "listening");
    Ok(RunningServer { addr, metrics_addr, state, stop, tasks })
}

const ASSET_CACHE: &str = "no-cache";

fn router(state: Arc<AppState>) -> Router {
    let asset = |ty: &'static str, body: &'static str| move || async move { ([(header::CONTENT_TYPE, ty), (header::CACHE_CONTROL, ASSET_CACHE)], body) };
    // Behind the API key when the server has keys: the conversation, what the page reads before
    // it, and the metrics (unless they have their own address).
    let mut protected = Router::new().route("/api/info", get(info)).route("/api/voices", get(voices)).route("/api/chat", get(chat));
    if state.cfg.metrics_addr.is_none() {
        protected = protected.route("/metrics", get(metrics_page));
    }
    let protected = protected.route_layer(from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", get(asset("text/html; charset=utf-8", INDEX_HTML)))
        .route("/app.js", get(asset("text/javascript; charset=utf-8", APP_JS)))
        .route("/worklet.js", get(asset("text/javascript; charset=utf-8", WORKLET_JS)))
        .route("/style.css", get(asset("text/css; charset=utf-8", STYLE_CSS)))
        .route("/ogg.js", get(asset("text/javascript; charset=utf-8", OGG_JS)))
        .route("/recorder.js", get(asset("text/javascript; charset=utf-8", RECORDER_JS)))
        .route("/favicon.svg", get(asset("image/svg+xml", FAVICON_SVG)))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(protected)
        .layer(from_fn_with_state(state.clone(), guard_request))
        .with_state(state)
}

fn text(code: StatusCode, body: impl Into<String>) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

/// Every request: the `Host` allow-list first; every response: the security headers.
async fn guard_request(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let mut resp = match guard::check_host(&s.hosts, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            s.metrics.error("host");
            tracing::warn!(%e, "refused a request");
            text(StatusCode::FORBIDDEN, e)
        }
    };
    guard::add_security_headers(resp.headers_mut(), s.tls);
    resp
}

/// The API key of the routes that need one (Kyutai's header, or `auth_id` in the query).
async fn require_key(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(keys) = &s.cfg.api_keys {
        if let Err(e) = keys.check(req.headers(), req.uri().query()) {
            s.metrics.error("auth");
            tracing::info!(path = req.uri().path(), %e, "refused a request");
            return text(StatusCode::UNAUTHORIZED, e);
        }
    }
    next.run(req).await
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    let alive = s.scheduler.is_alive();
    let body = serde_json::json!({
        "status": if alive { "ok" } else { "down" },
        "model": s.cfg.model_name,
        "instance": s.cfg.instance_name,
        "active_conversations": s.scheduler.active(),
        "max_conversations": s.scheduler.capacity(),
        "draining": *s.phase.borrow() != Phase::Serving,
    });
    let code = if alive { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Readiness for a load balancer: `ready` (200), or 503 with `draining`, `full` or `down`.
async fn ready(State(s): State<Arc<AppState>>) -> Response {
    let (code, body) = if *s.phase.borrow() != Phase::Serving {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !s.scheduler.is_alive() {
        (StatusCode::SERVICE_UNAVAILABLE, "down")
    } else if s.scheduler.active() >= s.scheduler.capacity() {
        (StatusCode::SERVICE_UNAVAILABLE, "full")
    } else {
        (StatusCode::OK, "ready")
    };
    text(code, body)
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
        "prompts": s.prompts,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The preset voices a conversation may name in `voice_prompt` (the `.pt` files of
/// `--voice-prompt-dir`), and whether the model takes prompts at all.
async fn voices(State(s): State<Arc<AppState>>) -> Response {
    let listed = match (&s.cfg.voice_prompt_dir, s.prompts) {
        (Some(dir), true) => crate::config::voice_names(dir),
        _ => Ok(Vec::new()),
    };
    match listed {
        Ok(names) => {
            let body = serde_json::json!({ "prompts": s.prompts, "voices": names });
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Err(e) => {
            tracing::warn!(%e, "listing the voices failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

async fn metrics_page(State(s): State<Arc<AppState>>) -> Response {
    let m = &s.metrics;
    m.free_slots.set(s.scheduler.capacity().saturating_sub(s.scheduler.active()) as i64);
    m.draining.set(i64::from(*s.phase.borrow() != Phase::Serving));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()).into_response()
}

async fn chat(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(e) = guard::check_origin(&s.cfg.allowed_origins, s.cfg.allow_any_origin, &headers) {
        s.metrics.error("origin");
        tracing::warn!(%e, "refused a connection");
        return text(StatusCode::FORBIDDEN, e);
    }
    if *s.phase.borrow() != Phase::Serving {
        s.metrics.error("draining");
        return text(StatusCode::SERVICE_UNAVAILABLE, "the server is draining (shutting down): connect to another one");
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
    // The transport's own limit sits above ours, so that a message between the two gets our error
    // message naming the limit from the protocol decoder; one above it gets the same from the
    // session (RecvError::TooLarge).
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

/// The transport's size caps are named (an error message and close 1009 follow); anything else
/// is a socket failure.
fn recv_error(e: axum::Error) -> RecvError {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
            RecvError::TooLarge(format!("a message of {size} bytes or more exceeds the transport's cap of {max_size}"))
        }
        Some(WsError::Capacity(c)) => RecvError::TooLarge(c.to_string()),
        _ => RecvError::Socket(inner.to_string()),
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
    let rx = rx.map(|m| m.map(to_frame).map_err(recv_error));
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
        idle_timeout: Duration::from_secs_f64(s.cfg.idle_timeout_s),
        phase: s.phase.subscribe(),
    };
    let end = run_session(Box::pin(tx), rx, ctx).await;
    tracing::info!(?end, "session ended");
}

//! One connection's conversation, generic over any sink and stream of WebSocket frames (axum's
//! socket in the server, in-memory channels in the tests): join the batch, send the metadata and
//! the handshake, then move audio both ways until either side ends. Every way it can end is an
//! [`End`] with a defined message to the client:
//! - bad query parameters, a full server, a malformed or oversized message, audio that is not Ogg
//!   Opus, text frames: a type-5 error message naming the problem, then a close frame;
//! - the client closing or vanishing: the slot is freed at once (the [`Ticket`] is dropped);
//! - a client too slow to take a frame within `send_timeout_s`: closed;
//! - a client sending no audio for `idle_timeout`: an error message, close 1008;
//! - a message above the transport's own size cap: an error message, close 1009;
//! - the client's close frame: answered with one (RFC 6455 §5.5.1);
//! - the server stopping after its drain ([`Phase::Stopping`]): an error message, close 1001.
//!
//! After our own close frame the socket is kept a moment (until the client's close, at most
//! `LINGER`), so that the client reads our last messages before the connection goes.

use std::fmt::Display;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::watch;

use crate::audio_io::{OpusInput, OpusOutput, SAMPLE_RATE};
use crate::config::SessionParams;
use crate::metrics::Metrics;
use crate::protocol::{decode, Decoded, Message, ProtocolError};
use crate::scheduler::{JoinError, Reply, SchedulerHandle};

/// A WebSocket frame, whatever the transport.
#[derive(Debug, Clone, PartialEq)]
pub enum WsFrame {
    Binary(Vec<u8>),
    Text(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// WebSocket close codes we use (RFC 6455 §7.4.1).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TRY_LATER: u16 = 1013;
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The client closed the socket (or its stream ended).
    ClientClosed,
    /// The socket failed underneath (reset, broken pipe…).
    SocketError(String),
    /// Refused before the conversation started (parameters, capacity, model down).
    Refused(String),
    /// Ended by us because of what the client sent.
    BadInput(String),
    /// The client did not take our messages in time.
    SendTimeout,
    /// The model failed.
    Engine(String),
    /// No audio from the client for the idle timeout.
    Idle,
    /// The server stopped after its drain.
    Shutdown,
}

/// Where the server is in its life: conversations are taken while `Serving`; `Draining` (after
/// SIGTERM) refuses new ones and lets the others go on; `Stopping` ends those still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Draining,
    Stopping,
}

/// Why the transport stopped giving frames.
#[derive(Debug, Clone, PartialEq)]
pub enum RecvError {
    /// A message or frame above the transport's own cap (the bytes named).
    TooLarge(String),
    /// Anything else: reset, broken pipe, protocol violation…
    Socket(String),
}

impl From<String> for RecvError {
    fn from(s: String) -> Self {
        RecvError::Socket(s)
    }
}

/// How long the socket is kept after our close frame, waiting for the client's.
const LINGER: Duration = Duration::from_secs(1);

/// What a session needs from the server.
pub struct SessionCtx {
    pub scheduler: SchedulerHandle,
    pub metrics: Metrics,
    /// The conversation's settings, or why the query string was refused.
    pub params: Result<SessionParams, String>,
    /// Sent as the type-4 message before the handshake.
    pub metadata: serde_json::Value,
    pub max_message_bytes: usize,
    pub send_timeout: Duration,
    /// Samples of user audio held at most.
    pub max_input_samples: usize,
    /// Ogg stream serial of our audio.
    pub serial: u32,
    /// A conversation whose client sends no audio for this long is ended.
    pub idle_timeout: Duration,
    /// The server's [`Phase`] (a sender dropped counts as `Serving` for ever).
    pub phase: watch::Receiver<Phase>,
}

struct Conn<Tx> {
    tx: Tx,
    metrics: Metrics,
    timeout: Duration,
    /// Our close frame went out.
    closed: bool,
}

impl<Tx: Sink<WsFrame> + Unpin> Conn<Tx>
where
    Tx::Error: Display,
{
    async fn send(&mut self, frame: WsFrame) -> Result<(), End> {
        let n = match &frame {
            WsFrame::Binary(b) => b.len(),
            _ => 0,
        };
        match tokio::time::timeout(self.timeout, self.tx.send(frame)).await {
            Ok(Ok(())) => {
                self.metrics.bytes_out.inc_by(n as u64);
                Ok(())
            }
            Ok(Err(e)) => {
                self.metrics.error("socket");
                Err(End::SocketError(e.to_string()))
            }
            Err(_) => {
                self.metrics.error("send_timeout");
                Err(End::SendTimeout)
            }
        }
    }

    async fn message(&mut self, m: Message) -> Result<(), End> {
        self.send(WsFrame::Binary(m.encode())).await
    }

    /// The closing handshake: our close frame answers the client's, its code echoed. A transport
    /// that queued the answer itself when it read their frame (tungstenite refuses a second close)
    /// sends it on a flush.
    async fn answer_close(&mut self, c: Option<(u16, String)>) {
        let _ = tokio::time::timeout(self.timeout, async {
            if self.tx.send(WsFrame::Close(c)).await.is_err() {
                let _ = self.tx.flush().await;
            }
        })
        .await;
    }

    /// Send an error message and a close frame (best effort), and return `end`.
    async fn fail(&mut self, kind: &str, code: u16, text: String, end: End) -> End {
        self.metrics.error(kind);
        tracing::info!(kind, %text, "ending the session");
        if self.message(Message::Error(text.clone())).await.is_ok() {
            let mut reason = text;
            reason.truncate(120); // a close reason is at most 123 bytes
            while !reason.is_char_boundary(reason.len()) {
                reason.pop();
            }
            self.closed = self.send(WsFrame::Close(Some((code, reason)))).await.is_ok();
        }
        end
    }
}

/// Run one connection to its end.
pub async fn run_session<Tx, Rx, E>(tx: Tx, mut rx: Rx, ctx: SessionCtx) -> End
where
    Tx: Sink<WsFrame> + Unpin,
    Tx::Error: Display,
    Rx: Stream<Item = Result<WsFrame, E>> + Unpin,
    E: Into<RecvError>,
{
    let mut conn = Conn { tx, metrics: ctx.metrics.clone(), timeout: ctx.send_timeout, closed: false };
    let end = session(&mut conn, &mut rx, ctx).await;
    if conn.closed {
        // Until the client's close frame (or its socket's end), reading what is still in flight.
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(Ok(f)) = rx.next().await {
                if matches!(f, WsFrame::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    end
}

async fn session<Tx, Rx, E>(conn: &mut Conn<Tx>, rx: &mut Rx, mut ctx: SessionCtx) -> End
where
    Tx: Sink<WsFrame> + Unpin,
    Tx::Error: Display,
    Rx: Stream<Item = Result<WsFrame, E>> + Unpin,
    E: Into<RecvError>,
{
    if *ctx.phase.borrow() != Phase::Serving {
        let m = "the server is shutting down: try another one or later".to_string();
        return conn.fail("draining", close::TRY_LATER, m.clone(), End::Refused(m)).await;
    }
    let params = match ctx.params {
        Ok(p) => p,
        Err(e) => return conn.fail("params", close::POLICY, e.clone(), End::Refused(e)).await,
    };
    let mut ticket = match ctx.scheduler.join(params).await {
        Ok(t) => t,
        Err(e @ JoinError::Full(_)) => return conn.fail("capacity", close::TRY_LATER, e.to_string(), End::Refused(e.to_string())).await,
        Err(e @ JoinError::Prompt(_)) => return conn.fail("prompt", close::POLICY, e.to_string(), End::Refused(e.to_string())).await,
        Err(e) => return conn.fail("engine", close::INTERNAL, e.to_string(), End::Refused(e.to_string())).await,
    };
    tracing::info!(slot = ticket.slot, prompted = ticket.prompted, "conversation started");
    if ticket.prompted {
        // PersonaPlex: the handshake follows the prompt (the client sends audio only after it).
        match ticket.replies.recv().await {
            Some(Reply::Ready) => tracing::info!(slot = ticket.slot, "prompt fed"),
            Some(Reply::Error(e)) => return conn.fail("engine", close::INTERNAL, e.clone(), End::Engine(e)).await,
            other => {
                let m = format!("the model stopped before the prompt was fed ({other:?})");
                return conn.fail("engine", close::INTERNAL, m.clone(), End::Engine(m)).await;
            }
        }
    }
    if let Err(e) = conn.message(Message::Metadata(ctx.metadata)).await {
        return e;
    }
    if let Err(e) = conn.message(Message::Handshake { protocol_version: 0, model_version: 0 }).await {
        return e;
    }
    let mut input = OpusInput::new(ctx.max_input_samples, 1 << 17);
    let mut output = OpusOutput::new(ctx.serial);
    let idle = tokio::time::sleep(ctx.idle_timeout);
    tokio::pin!(idle);
    let mut phase_open = true;
    loop {
        tokio::select! {
            incoming = rx.next() => {
                let frame = match incoming {
                    None => return End::ClientClosed,
                    Some(Ok(WsFrame::Close(c))) => {
                        conn.answer_close(c).await;
                        return End::ClientClosed;
                    }
                    Some(Err(e)) => match e.into() {
                        RecvError::TooLarge(what) => {
                            let m = format!("malformed message: {what} (the limit is {} bytes)", ctx.max_message_bytes);
                            return conn.fail("protocol", close::TOO_BIG, m.clone(), End::BadInput(m)).await;
                        }
                        RecvError::Socket(e) => {
                            ctx.metrics.error("socket");
                            return End::SocketError(e);
                        }
                    },
                    Some(Ok(f)) => f,
                };
                let bytes = match frame {
                    WsFrame::Binary(b) => b,
                    WsFrame::Ping(_) | WsFrame::Pong(_) => continue,
                    WsFrame::Text(_) => {
                        let m = "text frames are not part of the protocol: send binary messages (first byte: the type)".to_string();
                        return conn.fail("protocol", close::UNSUPPORTED, m.clone(), End::BadInput(m)).await;
                    }
                    WsFrame::Close(_) => unreachable!("handled above"),
                };
                ctx.metrics.bytes_in.inc_by(bytes.len() as u64);
                let msg = match decode(&bytes, ctx.max_message_bytes) {
                    Ok(Decoded::Message(m)) => m,
                    Ok(Decoded::Unknown(t)) => {
                        tracing::debug!(kind = t, "ignoring a message of unknown type");
                        continue;
                    }
                    Err(e) => {
                        let code = if matches!(e, ProtocolError::TooLarge { .. }) { close::TOO_BIG } else { close::INVALID_PAYLOAD };
                        let m = format!("malformed message: {e}");
                        return conn.fail("protocol", code, m.clone(), End::BadInput(m)).await;
                    }
                };
                match msg {
                    Message::Audio(payload) => {
                        let dropped_before = input.dropped_samples + input.skipped_samples;
                        let pushed = input.push(&payload);
                        ctx.metrics.input_dropped_samples.inc_by(input.dropped_samples + input.skipped_samples - dropped_before);
                        if let Err(e) = pushed {
                            let m = format!("bad audio: {e}");
                            return conn.fail("audio", close::INVALID_PAYLOAD, m.clone(), End::BadInput(m)).await;
                        }
                        if let Some(samples) = input.take(input.available()) {
                            if !samples.is_empty() {
                                idle.as_mut().reset(tokio::time::Instant::now() + ctx.idle_timeout);
                            }
                            let dropped = ticket.io.push_input(&samples);
                            ctx.metrics.input_dropped_samples.inc_by(dropped as u64);
                        }
                    }
                    other => tracing::debug!(?other, "ignoring a client message"),
                }
            }
            reply = ticket.replies.recv() => {
                match reply {
                    Some(Reply::Audio(pcm)) => {
                        let bytes = match output.encode(&pcm) {
                            Ok(b) => b,
                            Err(e) => return conn.fail("engine", close::INTERNAL, e.clone(), End::Engine(e)).await,
                        };
                        if let Err(e) = conn.message(Message::Audio(bytes)).await {
                            return e;
                        }
                    }
                    Some(Reply::Text(t)) => {
                        if let Err(e) = conn.message(Message::Text(t)).await {
                            return e;
                        }
                    }
                    Some(Reply::Error(e)) => return conn.fail("engine", close::INTERNAL, e.clone(), End::Engine(e)).await,
                    Some(Reply::Ready) => {}
                    None => {
                        let m = "the model stopped".to_string();
                        return conn.fail("engine", close::INTERNAL, m.clone(), End::Engine(m)).await;
                    }
                }
            }
            () = &mut idle => {
                let m = format!("no audio received for {:.0} s: the conversation is over (the server's --idle-timeout)", ctx.idle_timeout.as_secs_f64());
                return conn.fail("idle", close::POLICY, m, End::Idle).await;
            }
            changed = ctx.phase.changed(), if phase_open => {
                match changed {
                    Err(_) => phase_open = false,
                    Ok(()) if *ctx.phase.borrow() == Phase::Stopping => {
                        let m = "the server is shutting down: this conversation has been ended".to_string();
                        return conn.fail("shutdown", close::GOING_AWAY, m, End::Shutdown).await;
                    }
                    Ok(()) => {}
                }
            }
        }
    }
}

/// Samples of user audio a session holds at most for `seconds`.
pub fn input_samples(seconds: f64) -> usize {
    (seconds.max(0.08) * SAMPLE_RATE as f64) as usize
}

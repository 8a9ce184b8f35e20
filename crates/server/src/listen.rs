//! The accept loop (in place of `axum::serve`, which has no timeouts): every connection, plain or
//! TLS, is served by hyper's HTTP/1 server with
//! - a cap on open connections (`--max-connections`): one more is answered `503` and closed
//!   within half a second (plain HTTP) or closed at once (TLS), so that idle sockets cannot use
//!   up the file descriptors that `/health` and conversations need;
//! - a TLS handshake timeout and a request-header timeout (`--header-timeout`): hyper's timer
//!   runs whenever a connection waits for a request head, so it bounds a silent TCP connection, a
//!   slowloris request and an idle keep-alive connection alike;
//! - a small kernel send buffer (`SEND_BUFFER`): a client that never reads fills it in seconds and
//!   the session's send timeout then ends it (with the kernel's autotuned buffer of megabytes, a
//!   conversation's 4 kB/s took many minutes to fill it, issue 15 F3).
//!
//! A WebSocket keeps its connection's place under the cap for as long as it is open: the permit
//! travels inside the connection's I/O object, which the upgraded socket owns.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Bytes of kernel send buffer per connection (Linux doubles it): about 15 s of a conversation's
/// audio, far more than a page asset needs in flight on a local network.
pub const SEND_BUFFER: usize = 32 * 1024;

/// How one listener serves its connections.
#[derive(Clone)]
pub struct ListenOptions {
    pub header_timeout: Duration,
    /// Open connections at most (shared by the listeners given the same semaphore).
    pub connections: Arc<Semaphore>,
    pub tls: Option<TlsAcceptor>,
}

/// An I/O object holding its connection's place under the cap.
struct Counted<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 52\r\nConnection: close\r\n\r\ntoo many open connections (--max-connections); retry";

/// Refused connections answered at once (beyond these, a refused connection is just closed).
const REFUSALS: usize = 32;
/// How long a refused connection is given to send its request before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// The `503` of a connection over the cap, closed gracefully: the answer, our half closed, then
/// the client's request read and dropped (briefly). Closing a socket whose request has not been
/// read makes the kernel send a reset, which can reach the client before it has read the answer.
async fn refuse(mut stream: tokio::net::TcpStream, _slot: OwnedSemaphorePermit) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(TOO_MANY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Accept until `stop` turns true; each connection in its own task.
pub async fn serve(listener: TcpListener, app: Router, opts: ListenOptions, metrics: Metrics, mut stop: watch::Receiver<bool>) {
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = opts.connections.clone().try_acquire_owned() else {
            metrics.error("connections");
            tracing::debug!(%peer, "refused a connection: at --max-connections");
            if opts.tls.is_none() {
                if let Ok(slot) = refusals.clone().try_acquire_owned() {
                    tokio::spawn(refuse(stream, slot));
                }
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        let (app, opts, stop) = (app.clone(), opts.clone(), stop.clone());
        tokio::spawn(async move {
            match &opts.tls {
                None => connection(Counted { io: stream, _permit: permit }, app, opts.header_timeout, stop).await,
                Some(acceptor) => match tokio::time::timeout(opts.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => connection(Counted { io: tls, _permit: permit }, app, opts.header_timeout, stop).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

/// One connection: HTTP/1.1 requests (keep-alive) until it closes, times out or upgrades.
async fn connection<T>(io: Counted<T>, app: Router, header_timeout: Duration, mut stop: watch::Receiver<bool>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| app.clone().oneshot(req.map(axum::body::Body::new)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

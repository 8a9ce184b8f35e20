//! `moshi-rs serve`: real-time Moshi over Kyutai's WebSocket protocol, many conversations batched
//! on one copy of the weights (docs/serve.md, docs/protocol.md).
//!
//! - [`protocol`]: the message codec; [`ogg_stream`] and [`audio_io`]: Ogg Opus in and out;
//! - [`scheduler`]: the batch thread stepping every conversation slot each 80 ms;
//! - [`session`]: one connection's loop, generic over any sink/stream of frames;
//! - [`http`]: routes, [`start`] and the drain; [`guard`]: hosts, origins, API keys, security
//!   headers; [`listen`]: the accept loop (timeouts, connection cap, TLS: [`tls`]); [`metrics`];
//! - [`load`]: the loopback load generator behind `moshi-rs loadtest`.

pub mod audio_io;
pub mod config;
pub mod guard;
pub mod http;
pub mod listen;
pub mod load;
pub mod metrics;
pub mod ogg_stream;
pub mod protocol;
pub mod scheduler;
pub mod session;
pub mod tls;

pub use config::{ServerConfig, SessionParams};
pub use http::{start, RunningServer};
pub use session::Phase;

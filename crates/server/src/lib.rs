//! `moshi-rs serve` (issue 5, in progress): Kyutai's WebSocket protocol (`protocol`); the server,
//! the Ogg/Opus audio path and the batched scheduler come next (see docs/protocol.md).

pub mod protocol;

//! `moshi-rs serve` (issue 5, in progress): Kyutai's WebSocket protocol (`protocol`) and its Ogg
//! framing (`ogg_stream`); the server, the Opus codec and the batched scheduler come next (see
//! docs/protocol.md).

pub mod audio_io;
pub mod ogg_stream;
pub mod protocol;

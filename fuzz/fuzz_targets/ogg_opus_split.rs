//! The Ogg/Opus input path on arbitrary bytes split into several audio messages:
//! `OpusInput::new(max_pcm, max_ogg)` then `push(piece)` for each piece.
//!
//! Input: `[max_pcm/max_ogg selector][n][n × u16 LE piece lengths][stream]` (see
//! `moshi_server_fuzz::split_input`); run with `-max_len=70000` so that whole 64 KiB pages fit.
//! Properties: see `moshi_server_fuzz::drive_opus_input` (no panic escapes, the sample buffer
//! bound holds after every accepted message, errors are values); the Ogg buffer bound is checked
//! by `OggPacketStream` itself (an `Overflow` error) and memory overall by `-rss_limit_mb`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moshi_server_fuzz::{drive_opus_input, install_panic_hook, split_input};

fuzz_target!(init: install_panic_hook(), |data: &[u8]| {
    let (max_pcm, max_ogg, pieces) = split_input(data);
    drive_opus_input("ogg_opus_split", data, max_pcm, max_ogg, &pieces);
});

//! Fuzzed Opus packets inside a valid Ogg Opus stream (OpusHead on the BOS page, OpusTags, one
//! or several packets per page), so that every input reaches the Opus decoder (opus-rs) through
//! `OpusInput`. Input format: `moshi_server_fuzz::OpusCase`. Properties as for `ogg_opus_split`;
//! decoder panics are contained by `OpusInput` and recorded (FUZZ_CONTAINED_PANICS_DIR).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moshi_server_fuzz::{drive_opus_input, install_panic_hook, OpusCase};

fuzz_target!(init: install_panic_hook(), |data: &[u8]| {
    let case = OpusCase::parse(data);
    let stream = case.ogg_stream();
    let pieces: Vec<&[u8]> = match case.chunk() {
        None => vec![&stream[..]],
        Some(k) => stream.chunks(k).collect(),
    };
    drive_opus_input("opus_packets", data, 24_000, 1 << 17, &pieces);
});

//! opus-rs against libopus on fuzzed Opus packets (`moshi_server_fuzz::opus_diff`): the same
//! packets, in order, into both; a divergence (structure verdict, sample count, refusal of a
//! valid packet, a decoded sample further than the tolerance from libopus's) aborts, as a crash.
//! Input format: `moshi_server_fuzz::OpusCase` (bit 0 of the flags: stereo).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moshi_server_fuzz::opus_diff::{Outcome, Pair};
use moshi_server_fuzz::OpusCase;

fuzz_target!(|data: &[u8]| {
    let case = OpusCase::parse(data);
    let mut pair = Pair::new(if case.flags & 1 != 0 { 2 } else { 1 });
    for (i, p) in case.packets.iter().enumerate() {
        if let Outcome::Diverged(why) = pair.decode(p) {
            panic!("packet {i} ({} bytes, TOC {:02x?}): {why}", p.len(), p.first());
        }
    }
});

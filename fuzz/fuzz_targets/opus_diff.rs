//! opus-rs against libopus on fuzzed Opus packets (`moshi_server_fuzz::opus_diff`): the same
//! packets, in order, into both. A divergence in structure, sample count, refusal of a valid
//! packet or finiteness aborts, as a crash; a decoded sample further than the tolerance from
//! libopus's, and a contained opus-rs panic, are noted once per mode and size
//! (FUZZ_CONTAINED_PANICS_DIR) and counted. Input format: `moshi_server_fuzz::OpusCase` (bit 0 of
//! the flags: stereo).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moshi_server_fuzz::opus_diff::{mode, Divergence, Outcome, Pair};
use moshi_server_fuzz::{install_panic_hook, note, take_contained_panics, OpusCase};

fuzz_target!(init: install_panic_hook(), |data: &[u8]| {
    let case = OpusCase::parse(data);
    let mut pair = Pair::new(if case.flags & 1 != 0 { 2 } else { 1 });
    for (i, p) in case.packets.iter().enumerate() {
        match pair.decode(p) {
            Outcome::Diverged(Divergence::Value { diff }, why) => {
                // The size class: the power of ten of the largest difference.
                let exp = diff.log10().floor() as i32;
                note("opus_diff", &format!("value-{}-1e{exp}", mode(p)), data, &format!("packet {i}: {why}"));
            }
            Outcome::Diverged(Divergence::Panic, why) => {
                let at = take_contained_panics().join("; ");
                note("opus_diff", &format!("panic-{}", mode(p)), data, &format!("packet {i}: {why}: {at}"));
            }
            Outcome::Diverged(kind, why) => panic!("packet {i} ({} bytes, TOC {:02x?}): {kind:?}: {why}", p.len(), p.first()),
            _ => {}
        }
    }
    let _ = take_contained_panics();
});

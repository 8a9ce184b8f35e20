//! Runs the differential check (`moshi_server_fuzz::opus_diff`) over OpusCase files, printing
//! each file's outcome counts and the largest difference between decoded samples:
//! `cargo run --release --example opus_diff_seeds -- seeds/opus_packets/*`.

use moshi_server_fuzz::opus_diff::{Outcome, Pair};
use moshi_server_fuzz::OpusCase;

fn main() {
    let mut worst = 0f32;
    for path in std::env::args().skip(1) {
        let case = OpusCase::parse(&std::fs::read(&path).expect("readable file"));
        let mut pair = Pair::new(if case.flags & 1 != 0 { 2 } else { 1 });
        let (mut decoded, mut concealed, mut malformed, mut max_diff) = (0, 0, 0, 0f32);
        let mut diverged = Vec::new();
        for (i, p) in case.packets.iter().enumerate() {
            match pair.decode(p) {
                Outcome::Decoded { max_diff: d, .. } => {
                    decoded += 1;
                    max_diff = max_diff.max(d);
                }
                Outcome::Concealed { .. } => concealed += 1,
                Outcome::Malformed => malformed += 1,
                Outcome::Diverged(kind, why) => diverged.push(format!("packet {i}: {kind:?}: {why}")),
            }
        }
        worst = worst.max(max_diff);
        println!("{path}: {decoded} decoded (max |diff| {max_diff:e}), {concealed} concealed, {malformed} malformed, {} diverged {diverged:?}", diverged.len());
    }
    println!("largest difference over all files: {worst:e}");
}

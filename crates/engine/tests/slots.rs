//! Conversation slots (what `serve` batches): rows start, restart and idle independently, and a
//! row that joins a running batch computes what the same conversation computes alone. Checked on
//! the embedded tiny Moshi (f32, CPU) with sampling on, so that every row's own settings and noise
//! matter: tokens must be identical and PCM within f32 rounding of the batched products.

use candle_core::{DType, Device};
use moshi_engine::conversation::{Conversation, Moshi};
use moshi_engine::exec::RunOptions;
use moshi_engine::lm::{GenConfig, SamplingConfig};

/// Batched products may sum in another order than B = 1 ones: the bound of the f32 Mimi parity
/// tests (measured: ≤ 1e-7).
const PCM_TOL: f32 = 2e-6;

fn signal(seed: u32, frames: usize, n: usize) -> Vec<f32> {
    let mut r = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..frames * n)
        .map(|i| {
            r = r.wrapping_mul(1664525).wrapping_add(1013904223);
            let noise = ((r >> 9) as f32 / (1u32 << 23) as f32 - 0.5) * 0.05;
            let t = i as f32 / 24000.0;
            0.3 * (t * (180.0 + 40.0 * seed as f32) * std::f32::consts::TAU).sin() + noise
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
struct RowFrame {
    ready: bool,
    tokens: Option<Vec<i64>>,
    pcm: Option<Vec<f32>>,
}

/// Step `conv` once with one frame per row; return row `row`'s view of the result.
fn step_all(moshi: &Moshi, conv: &mut Conversation, frames: &[Vec<f32>]) -> Vec<RowFrame> {
    let n = moshi.frame_size();
    let pcm: Vec<f32> = frames.iter().flatten().copied().collect();
    let out = moshi.step(conv, &pcm).unwrap();
    let k = out.tokens.as_ref().map(|t| t.len() / frames.len()).unwrap_or(0);
    (0..frames.len())
        .map(|r| RowFrame {
            ready: out.ready[r],
            tokens: out.ready[r].then(|| out.tokens.as_ref().unwrap()[r * k..(r + 1) * k].to_vec()),
            pcm: out.ready[r].then(|| out.pcm.as_ref().unwrap()[r * n..(r + 1) * n].to_vec()),
        })
        .collect()
}

fn cfg() -> GenConfig {
    GenConfig { text: SamplingConfig::sampled(0.7, 25), audio: SamplingConfig::sampled(0.8, 40) }
}

/// A conversation alone: slot 0 of a batch of 1.
fn alone(moshi: &Moshi, input: &[f32], seed: u64) -> Vec<RowFrame> {
    let n = moshi.frame_size();
    let mut conv = moshi.slots(1, &RunOptions::default()).unwrap();
    conv.reset_row(0, cfg(), seed).unwrap();
    input.chunks(n).map(|f| step_all(moshi, &mut conv, &[f.to_vec()]).remove(0)).collect()
}

fn assert_same(what: &str, got: &[RowFrame], want: &[RowFrame]) {
    assert_eq!(got.len(), want.len(), "{what}: frame counts");
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.ready, w.ready, "{what}: frame {i} ready");
        assert_eq!(g.tokens, w.tokens, "{what}: frame {i} tokens");
        if let (Some(a), Some(b)) = (&g.pcm, &w.pcm) {
            for (x, y) in a.iter().zip(b) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    assert!(worst <= PCM_TOL, "{what}: PCM differs by {worst} (tolerance {PCM_TOL})");
    eprintln!("{what}: identical tokens, PCM within {worst:.2e}");
}

#[test]
fn a_row_joining_a_running_batch_computes_what_it_would_alone() {
    let moshi = moshi_engine::tiny::load_moshi(DType::F32, &Device::Cpu).unwrap();
    let n = moshi.frame_size();
    let frames = 14;
    let (join, restart) = (5, 9);
    let a = signal(1, frames, n);
    let b = signal(2, frames - join, n);
    let c = signal(3, frames, n);
    let c2 = signal(4, frames - restart, n);
    let silence = vec![0f32; n];

    // Slots of 1 against the plain B = 1 conversation: per-row noise is the same stream.
    let mut plain = moshi.conversation(cfg(), 11, false, &RunOptions::default()).unwrap();
    let plain_frames: Vec<RowFrame> = a.chunks(n).map(|f| step_all(&moshi, &mut plain, &[f.to_vec()]).remove(0)).collect();
    assert_same("slots(1) vs conversation()", &alone(&moshi, &a, 11), &plain_frames);

    // Three slots: row 0 runs throughout; row 1 idles on silence, then joins at `join`; row 2
    // starts at 0 and restarts as a new conversation at `restart`.
    let mut conv = moshi.slots(3, &RunOptions::default()).unwrap();
    conv.reset_row(0, cfg(), 11).unwrap();
    conv.reset_row(2, cfg(), 33).unwrap();
    let mut rows: [Vec<RowFrame>; 4] = Default::default();
    for i in 0..frames {
        if i == join {
            conv.reset_row(1, cfg(), 22).unwrap();
        }
        if i == restart {
            conv.reset_row(2, cfg(), 44).unwrap();
        }
        let f0 = a[i * n..(i + 1) * n].to_vec();
        let f1 = if i >= join { b[(i - join) * n..(i - join + 1) * n].to_vec() } else { silence.clone() };
        let f2 = if i >= restart { c2[(i - restart) * n..(i - restart + 1) * n].to_vec() } else { c[i * n..(i + 1) * n].to_vec() };
        let out = step_all(&moshi, &mut conv, &[f0, f1, f2]);
        rows[0].push(out[0].clone());
        if i >= join {
            rows[1].push(out[1].clone());
        }
        if i < restart {
            rows[2].push(out[2].clone());
        } else {
            rows[3].push(out[2].clone());
        }
    }
    assert_eq!(conv.row_frames(1), frames - join);
    assert_same("row 0 (ran throughout)", &rows[0], &alone(&moshi, &a, 11));
    assert_same("row 1 (joined at frame 5)", &rows[1], &alone(&moshi, &b, 22));
    assert_same("row 2 (before its restart)", &rows[2], &alone(&moshi, &c[..restart * n], 33));
    assert_same("row 2 (restarted at frame 9)", &rows[3], &alone(&moshi, &c2, 44));
    // The joining row's first M frames are not ready, as for a new conversation.
    let m = moshi.lm.max_delay();
    assert!(rows[1][..m].iter().all(|f| !f.ready) && rows[1][m..].iter().all(|f| f.ready));
}

#[test]
fn without_a_reset_a_reused_row_remembers_its_past() {
    // The control for the test above: feeding a slot new audio without `reset_row` must not
    // look like a fresh conversation (the KV caches, conv states and delays still hold the past).
    let moshi = moshi_engine::tiny::load_moshi(DType::F32, &Device::Cpu).unwrap();
    let n = moshi.frame_size();
    let (frames, join) = (10, 4);
    let b = signal(2, frames - join, n);
    let mut conv = moshi.slots(2, &RunOptions::default()).unwrap();
    conv.reset_row(1, cfg(), 22).unwrap();
    let mut got = Vec::new();
    for i in 0..frames {
        let f1 = if i >= join { b[(i - join) * n..(i - join + 1) * n].to_vec() } else { signal(9, 1, n) };
        let out = step_all(&moshi, &mut conv, &[vec![0f32; n], f1]);
        if i >= join {
            got.push(out[1].clone());
        }
    }
    let want = alone(&moshi, &b, 22);
    let real = |v: &[RowFrame]| v.iter().map(|f| f.tokens.clone()).filter(|t| t.is_some()).collect::<Vec<_>>();
    let (g, w) = (real(&got), real(&want));
    assert!(!w.is_empty());
    assert_ne!(g[g.len() - w.len()..], w[..], "a row fed new audio without a reset matched a fresh conversation");
}

#[test]
fn resetting_a_row_needs_slots_and_a_valid_row() {
    let moshi = moshi_engine::tiny::load_moshi(DType::F32, &Device::Cpu).unwrap();
    let mut shared = moshi.conversations(2, cfg(), 1, false, &RunOptions::default()).unwrap();
    let e = shared.reset_row(0, cfg(), 1).unwrap_err().to_string();
    assert!(e.contains("new_slots"), "{e}");
    let mut slots = moshi.slots(2, &RunOptions::default()).unwrap();
    let e = slots.reset_row(2, cfg(), 1).unwrap_err().to_string();
    assert!(e.contains("row 2 of 2"), "{e}");
}

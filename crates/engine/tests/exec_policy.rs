//! The seam's contiguous-inputs policy (on for Metal, where Candle's conv and unary kernels have
//! read strided inputs wrongly), proved on the CPU: with the policy switched on, every input that
//! any seam op reads while the tiny Moshi streams (Mimi encode, the LM's temporal and depformer
//! steps, Mimi decode) is contiguous; with it off (the CPU's own policy), some are not, so the
//! check can fail. The policy copies, it computes nothing: the conversation's tokens are the same
//! and its audio within f32 rounding.

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use moshi_engine::conversation::Moshi;
use moshi_engine::exec::{self, audit, Backend, Policy, RunOptions};
use moshi_engine::lm::GenConfig;

/// The ops a Moshi frame reaches through the seam, inputs and weights.
const EXPECTED: &[&str] = &[
    "attention",
    "conv1d",
    "conv1d weight",
    "conv_tr",
    "conv_tr weight",
    "elu",
    "embedding",
    "embedding ids",
    "gelu",
    "layer_norm",
    "linear",
    "linear weight",
    "pointwise_conv",
    "pointwise_conv weight",
    "rms_norm",
    "silu",
    "silu gate",
];

struct Run {
    tokens: Vec<Vec<i64>>,
    pcm: Vec<f32>,
}

/// Two conversations batched (so that more views are strided: a batch of one leaves most
/// narrowed activations contiguous), enough frames of a test signal for the LM's delays to fill
/// and Mimi to decode twice.
fn converse(moshi: &Moshi) -> Run {
    let n = moshi.frame_size();
    let frames = moshi.lm.max_delay() + 3;
    let signal = moshi_engine::verify::model::test_signal(2 * frames * n);
    let mut conv = moshi.conversations(2, GenConfig::greedy(), 0, true, &RunOptions::default()).unwrap();
    let (mut tokens, mut pcm) = (Vec::new(), Vec::new());
    for f in signal.chunks(2 * n) {
        let out = moshi.step(&mut conv, f).unwrap();
        tokens.push(out.user_codes);
        tokens.extend(out.tokens);
        pcm.extend(out.pcm.unwrap_or_default());
    }
    assert!(pcm.len() >= 4 * n, "Mimi decoded {} samples: the delays never filled", pcm.len());
    Run { tokens, pcm }
}

fn ops(seen: &[audit::Seen]) -> BTreeSet<&'static str> {
    seen.iter().map(|s| s.op).collect()
}

#[test]
fn contiguous_policy_reaches_every_seam_op() {
    let moshi = moshi_engine::tiny::load_moshi(DType::F32, &Device::Cpu).unwrap();
    assert!(!Policy::current(&Device::Cpu).contiguous_inputs, "the CPU's own policy copies nothing");

    let (off, seen_off) = audit::capture(|| converse(&moshi));
    let strided: BTreeSet<_> = seen_off.iter().filter(|s| !s.contiguous).map(|s| s.op).collect();
    eprintln!("policy off: {} inputs seen, strided ones reach {strided:?}", seen_off.len());
    assert!(!strided.is_empty(), "with the policy off no seam op saw a strided input: this test proves nothing");

    let (on, seen_on) = {
        let _policy = exec::force_contiguous_inputs(true);
        assert!(Policy::current(&Device::Cpu).contiguous_inputs);
        audit::capture(|| converse(&moshi))
    };
    assert!(!Policy::current(&Device::Cpu).contiguous_inputs, "dropping the guard restores the CPU's policy");
    let bad: Vec<_> = seen_on.iter().filter(|s| !s.contiguous).collect();
    assert!(bad.is_empty(), "with the policy on, {} inputs were strided, e.g. {:?}", bad.len(), &bad[..bad.len().min(5)]);

    let missing: Vec<_> = EXPECTED.iter().filter(|op| !ops(&seen_on).contains(*op)).collect();
    assert!(missing.is_empty(), "seam ops never reached: {missing:?} (seen: {:?})", ops(&seen_on));
    assert_eq!(seen_on.len(), seen_off.len(), "the policy changes what ops read, not which ops run");

    assert_eq!(on.tokens, off.tokens, "the policy changed a code or token");
    let worst = on.pcm.iter().zip(&off.pcm).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-5, "the policy moved the reply by {worst:.3e}");
}

/// The policy as each backend gets it, and what one op is handed under it.
#[test]
fn policy_per_backend_and_one_op() {
    assert!(Policy::for_backend(Backend::Metal).contiguous_inputs);
    assert!(!Policy::for_backend(Backend::Cpu).contiguous_inputs);
    assert!(!Policy::for_backend(Backend::Cuda).contiguous_inputs);

    let x = Tensor::arange(0f32, 24.0, &Device::Cpu).unwrap().reshape((2, 3, 4)).unwrap().transpose(1, 2).unwrap();
    let (y_off, seen) = audit::capture(|| exec::elu(&x).unwrap());
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].contiguous && seen[0].op == "elu", "{seen:?}");
    let _policy = exec::force_contiguous_inputs(true);
    let (y_on, seen) = audit::capture(|| exec::elu(&x).unwrap());
    assert!(seen[0].contiguous, "{seen:?}");
    let diff = (y_on - y_off).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0);
    // Nothing is recorded outside a capture.
    exec::elu(&x).unwrap();
    assert!(audit::capture(|| ()).1.is_empty());
}

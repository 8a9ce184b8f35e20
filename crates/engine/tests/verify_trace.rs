//! `verify trace` on a trace recorded by tools/golden/record_trace.py on the tiny Moshi
//! (golden/traces/moshi_tiny_greedy.safetensors, see golden/README.md): it passes on the CPU in
//! f32, and a fault injected in one op of one temporal layer is named at that layer and op.

use std::path::PathBuf;

use candle_core::{DType, Device};
use moshi_engine::verify::trace::{run, OpFault, Trace};
use moshi_engine::verify::{first_failure, table};

fn trace() -> Trace {
    Trace::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/traces/moshi_tiny_greedy.safetensors")).unwrap()
}

fn tiny() -> moshi_engine::conversation::Moshi {
    moshi_engine::tiny::load_moshi(DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn recorded_trace_round_trips() {
    let (checks, diag) = run(&trace(), &tiny(), &mut || Ok(tiny()), None).unwrap();
    print!("{}", table(&checks));
    assert!(first_failure(&checks).is_none(), "{}", diag.verdict);
    assert!(checks.iter().any(|c| c.name.starts_with("layer 1")) && checks.iter().any(|c| c.name.contains("greedy audio")));
    assert!(checks.iter().any(|c| c.group == "mimi encode" && c.name.starts_with("seanet_latent")));
    assert_eq!(diag.layer, None);
}

#[test]
fn injected_fault_is_named_at_its_layer_and_op() {
    for (layer, op) in [(1, "ffn"), (0, "self_attn"), (1, "norm2")] {
        let fault: OpFault = format!("{layer}:{op}").parse().unwrap();
        let (checks, diag) = run(&trace(), &tiny(), &mut || Ok(tiny()), Some(&fault)).unwrap();
        assert_eq!(diag.layer, Some(layer), "{}\n{}", diag.verdict, table(&checks));
        assert_eq!(diag.op.as_deref(), Some(op), "{}\n{}", diag.verdict, table(&checks));
        let first = first_failure(&checks).unwrap();
        assert_eq!(first.name, format!("layer {layer} (first 8 steps)"), "{}", table(&checks));
    }
    assert!("1:nope".parse::<OpFault>().unwrap_err().to_string().contains("nope"));
}

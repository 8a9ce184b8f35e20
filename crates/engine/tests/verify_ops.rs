//! `verify ops` on the CPU (the only device here): every op group is present and passes, an
//! injected fault in any op fails exactly that op's rows and is the first failure reported, and
//! the table renders.

use std::collections::BTreeSet;

use candle_core::Device;
use moshi_engine::verify::ops::{self, Fault};
use moshi_engine::verify::{first_failure, table, Check};

/// The primitives the engine uses; dropping one from the check must fail this test.
const OPS: [&str; 25] = [
    "matmul", "linear", "linear_q8", "linear_q8_candle", "conv1d", "conv_tr1d", "elu", "gelu_erf", "silu", "softmax", "layer_norm", "rms_norm",
    "add_rms_norm", "rope", "attention", "embedding", "argmax", "reduce", "add", "mul", "cat", "narrow", "to_dtype", "slice_set",
    "sample",
];

fn groups(rows: &[Check]) -> BTreeSet<String> {
    rows.iter().map(|c| c.group.clone()).collect()
}

#[test]
fn every_op_passes_on_cpu_in_f32_and_bf16() {
    let rows = ops::run(&Device::Cpu, None).unwrap();
    assert!(first_failure(&rows).is_none(), "a check failed:\n{}", table(&rows));
    let expected: BTreeSet<String> = OPS.iter().flat_map(|op| [format!("{op} f32"), format!("{op} bf16")]).collect();
    assert_eq!(groups(&rows), expected, "op groups");
    assert_eq!(ops::fault_names(), OPS.as_slice(), "every checked op can take a fault");
    for op in OPS {
        let n = rows.iter().filter(|c| c.group == format!("{op} f32")).count();
        assert!(n >= 4, "{op}: only {n} cases");
    }
    // The CPU has every op in bf16: nothing is skipped.
    let skipped: Vec<&Check> = rows.iter().filter(|c| c.name.contains("skipped")).collect();
    assert!(skipped.is_empty(), "skipped on the CPU: {skipped:?}");
    // On the CPU the f32 device side is the reference computation itself, except for the 8-bit
    // product: its reference is the exact product of the 8-bit weights, and the CPU's (Candle's)
    // quantizes the activations too, so it differs, within TOL_Q8_ACT.
    for c in rows.iter().filter(|c| c.group.ends_with(" f32")) {
        if c.group.starts_with("linear_q8") {
            assert!(c.max_abs > 0.0 && c.max_rel <= moshi_engine::verify::ops::TOL_Q8_ACT, "{} / {}: {}", c.group, c.name, c.max_rel);
        } else {
            assert_eq!(c.max_abs, 0.0, "{} / {}", c.group, c.name);
        }
    }
    // The bf16 rows are real comparisons: most differ from f32, all within the bound.
    let bf16: Vec<&Check> = rows.iter().filter(|c| c.group.ends_with(" bf16")).collect();
    assert!(bf16.iter().filter(|c| c.max_abs > 0.0).count() > bf16.len() / 2);
    assert!(bf16.iter().all(|c| c.max_rel <= ops::TOL_BF16.max(ops::TOL_Q8_ACT)));
    eprintln!("{}", table(&rows));
}

#[test]
fn an_injected_fault_fails_exactly_its_op() {
    for &op in ops::fault_names() {
        let fault: Fault = op.parse().unwrap();
        assert_eq!(fault.op(), op);
        let rows = ops::run(&Device::Cpu, Some(fault)).unwrap();
        let first = first_failure(&rows).unwrap_or_else(|| panic!("fault in {op} not caught"));
        assert_eq!(first.group, format!("{op} f32"), "fault in {op}: first failure {first:?}");
        for c in &rows {
            let faulty = c.group == format!("{op} f32") || c.group == format!("{op} bf16");
            assert_eq!(c.ok, !faulty, "fault in {op}: {} / {} ok={}", c.group, c.name, c.ok);
        }
    }
}

#[test]
fn a_fault_can_target_one_dtype() {
    let rows = ops::run(&Device::Cpu, Some("softmax:bf16".parse().unwrap())).unwrap();
    assert_eq!(first_failure(&rows).unwrap().group, "softmax bf16");
    let failed: BTreeSet<String> = groups(&rows.iter().filter(|c| !c.ok).cloned().collect::<Vec<_>>());
    assert_eq!(failed, BTreeSet::from(["softmax bf16".to_string()]));
}

#[test]
fn fault_names_parse_and_bad_names_are_explained() {
    for name in ops::fault_names() {
        let f: Fault = name.parse().unwrap();
        assert_eq!(f.to_string(), *name);
    }
    assert_eq!("rope:f32".parse::<Fault>().unwrap().to_string(), "rope:f32");
    let err = "conv2d".parse::<Fault>().unwrap_err().to_string();
    assert!(err.contains("conv2d") && err.contains("matmul") && err.contains("slice_set"), "{err}");
    assert!("matmul:f64".parse::<Fault>().is_err());
}

#[test]
fn the_table_renders() {
    let rows = ops::run(&Device::Cpu, Some("rope".parse().unwrap())).unwrap();
    let t = table(&rows);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), rows.len() + 1);
    assert!(lines[0].starts_with("group") && lines[0].contains("tolerance"));
    for op in OPS {
        assert!(t.contains(&format!("{op} f32")) && t.contains(&format!("{op} bf16")), "{op} missing from the table");
    }
    let rope_rows: Vec<&&str> = lines.iter().filter(|l| l.starts_with("rope ")).collect();
    assert!(!rope_rows.is_empty() && rope_rows.iter().all(|l| l.ends_with("FAIL")));
    assert_eq!(lines.iter().filter(|l| l.ends_with("FAIL")).count(), rope_rows.len());
    assert!(lines.iter().any(|l| l.starts_with("matmul f32") && l.ends_with("ok")));
}

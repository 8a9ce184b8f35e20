//! Shared test helpers: the committed reference fixtures and a comparison that reports every
//! failing stage with its error and tolerance, not just the first.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use moshi_engine::mimi::{Mimi, MimiConfig};

/// Tolerance for f32 CPU float stages against the PyTorch reference (see golden/README.md and
/// docs/parity.md for why): absolute, on signals of magnitude 0.1–0.5.
pub const F32_ABS_TOL: f32 = 2e-6;

/// The same bound relative to a tensor's peak, for stages whose magnitude is not ≈ 0.5 (the LM's
/// hidden states and logits peak at 4–10): a few f32 ulps of the peak, summed over a layer stack.
pub const F32_REL_TOL: f32 = 4e-6;

pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden")
}

/// A path in this test process's own temporary folder.
pub fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moshi-rs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A committed list of checkpoint names and shapes (`name<TAB>[d0, d1, ...]` per line).
pub fn names_file(rel: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(golden_dir().join(rel)).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split('\t');
            let name = parts.next().unwrap().to_string();
            let shape = parts.next().unwrap().trim_matches(|c| c == '[' || c == ']');
            (name, shape.split(',').map(|d| d.trim().parse::<usize>().unwrap()).collect())
        })
        .collect()
}

pub struct Fixture {
    pub tensors: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn load(rel: &str) -> Self {
        let path = golden_dir().join(rel);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
        Self { tensors }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("fixture lacks `{name}`"))
    }
}

/// The tiny reference Mimi from golden/mimi_tiny, optionally with another config file.
pub fn tiny_mimi(config_rel: &str) -> Mimi {
    let cfg = MimiConfig::from_json_file(&golden_dir().join(config_rel)).expect("config");
    Mimi::load(&golden_dir().join("mimi_tiny/model.safetensors"), &cfg, DType::F32, &Device::Cpu).expect("tiny mimi")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub fn codes_vec(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

/// Collects per-stage results; `finish` panics with a table of every failure.
#[derive(Default)]
pub struct Report {
    lines: Vec<String>,
    failures: usize,
}

impl Report {
    pub fn float(&mut self, stage: &str, ours: &Tensor, reference: &Tensor, tol: f32) -> f32 {
        if ours.dims() != reference.dims() {
            self.failures += 1;
            self.lines.push(format!("FAIL {stage}: shape {:?} vs reference {:?}", ours.dims(), reference.dims()));
            return f32::INFINITY;
        }
        let err = max_abs_diff(ours, reference);
        let ok = err <= tol; // NaN fails
        if !ok {
            self.failures += 1;
        }
        self.lines.push(format!("{} {stage}: max abs err {err:.3e} (tol {tol:.1e})", if ok { "ok  " } else { "FAIL" }));
        err
    }

    /// As `float`, with the tolerance scaled to the reference's magnitude: `rel · max|reference|`.
    /// Mimi's 2e-6 absolute on stages peaking at ≤ 0.5 is the same 4e-6 relative bound.
    pub fn float_rel(&mut self, stage: &str, ours: &Tensor, reference: &Tensor, rel: f32) -> f32 {
        let peak = reference.to_dtype(DType::F32).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let tol = rel * peak.to_scalar::<f32>().unwrap();
        self.float(stage, ours, reference, tol)
    }

    pub fn codes(&mut self, stage: &str, ours: &Tensor, reference: &Tensor) {
        let (a, b) = (codes_vec(ours), codes_vec(reference));
        let same = a.len() == b.len() && ours.dims() == reference.dims();
        let mismatches = if same { a.iter().zip(&b).filter(|(x, y)| x != y).count() } else { a.len().max(b.len()) };
        if mismatches > 0 {
            self.failures += 1;
        }
        self.lines.push(format!(
            "{} {stage}: {mismatches} of {} codes differ",
            if mismatches == 0 { "ok  " } else { "FAIL" },
            b.len()
        ));
    }

    pub fn finish(self, what: &str) {
        let table = self.lines.join("\n");
        eprintln!("{what}\n{table}");
        assert_eq!(self.failures, 0, "{what}: {} stage(s) outside tolerance\n{table}", self.failures);
    }
}

//! `moshi-rs verify ops`: every primitive the engine runs, on a device against the CPU in f32.
//!
//! A backend with one wrong kernel (a reduction that drops a block, a matmul that ignores a
//! stride) still produces audio, only garbled, and a model-level diff cannot say which op broke.
//! Here each op runs alone on small seeded inputs, with the layouts the engine actually feeds it
//! (contiguous, transposed, narrowed, broadcast, offset), once in f32 and once in bf16, and is
//! compared with the same op on the CPU in f32. The group of a row is `"{op} {dtype}"`, so the
//! first failing row names the op.
//!
//! Inputs are drawn on the CPU in f32 from a seed derived from the case's name, converted to the
//! dtype *on the CPU* and only then moved to the device, so that a broken device conversion shows
//! up in the `to_dtype` group and nowhere else. For the bf16 rows the reference sees the same
//! bf16-representable values (rounded on the CPU, then computed in f32): what is measured is the
//! op's own error, not the rounding of its inputs.
//!
//! Three kinds of comparison: arithmetic (matmul, convs, activations, norms, …) within a
//! tolerance relative to the reference's peak |value| ([`TOL_F32`], [`TOL_BF16`]); ops that only
//! move or convert values (cat, narrow, slice_set, index_select, max, to_dtype) bit for bit,
//! since there is exactly one right answer; indices (argmax, argmin) exactly.
//!
//! Fault injection ([`Fault`], `--inject-fault OP`) perturbs the named op's device result before
//! the comparison, as a broken kernel would, to show that the check catches it.

#[path = "ops_cases.rs"]
mod cases;
#[path = "ops_q8.rs"]
mod q8_cases;
#[path = "ops_sampler.rs"]
mod sampler_cases;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::Check;
pub use q8_cases::TOL_Q8_ACT;
use cases::Kind;
use crate::error::{EngineError, Result};

/// Every op checked, in table order. The group names are these followed by " f32" or " bf16".
const OPS: &[&str] = &[
    "matmul", "linear", "linear_q8", "linear_q8_candle", "conv1d", "conv_tr1d", "elu", "gelu_erf", "silu", "softmax", "layer_norm", "rms_norm",
    "add_rms_norm", "rope", "attention", "embedding", "argmax", "reduce", "add", "mul", "cat", "narrow", "to_dtype", "slice_set",
    "sample",
];

/// The op names `--inject-fault` accepts (each may carry a dtype: `softmax:bf16`).
pub fn fault_names() -> &'static [&'static str] {
    OPS
}

/// f32 bound, relative to the reference's peak |value|. Same inputs, same formula, but the
/// device may add in another order (blocked GEMM, tree reductions, fused multiply-adds) and use
/// its own exp/erf: reordering a sum of n f32 terms moves it by about √n ulps (2⁻²⁴ each) of its
/// magnitude, ~1e-6 of the peak for the ≤ 1500-term reductions here, and the transcendental
/// functions differ by an ulp or two. 1e-5 keeps an order of magnitude of headroom above that and
/// is still far below what a wrong kernel gives (a dropped term, a wrong stride or offset: errors
/// of the order of the values themselves).
pub const TOL_F32: f64 = 1e-5;

/// bf16 bound, relative to the peak: bf16 keeps 8 significant bits, so rounding the output
/// alone costs up to 2⁻⁹ ≈ 2e-3 of a value, and a backend may round intermediates too (partial
/// sums of a bf16 reduction, the activation's input): 2e-2 allows about ten such roundings
/// (the CPU's bf16 rows measure up to ~9e-3, a 24-term bf16 sum) and a wrong kernel is still
/// off by far more.
pub const TOL_BF16: f64 = 2e-2;

/// A simulated backend bug: the device result of `op` (in one dtype, or both) is perturbed
/// before the comparison. Floats: one element moves by 5% of the output's peak, which is above
/// both tolerances; codes: one index moves by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    op: &'static str,
    dtype: Option<DType>,
}

impl Fault {
    /// The op whose result is perturbed (one of [`fault_names`]).
    pub fn op(&self) -> &'static str {
        self.op
    }

    fn hits(&self, op: &str, dtype: DType) -> bool {
        self.op == op && self.dtype.is_none_or(|d| d == dtype)
    }
}

impl std::str::FromStr for Fault {
    type Err = EngineError;

    /// `OP` (both dtypes) or `OP:f32` / `OP:bf16`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, dtype) = match s.split_once(':') {
            None => (s, None),
            Some((n, "f32")) => (n, Some(DType::F32)),
            Some((n, "bf16")) => (n, Some(DType::BF16)),
            Some((_, d)) => return Err(EngineError::InvalidInput(format!("fault `{s}`: dtype `{d}` is not f32 or bf16"))),
        };
        match OPS.iter().find(|o| **o == name) {
            Some(op) => Ok(Fault { op, dtype }),
            None => Err(EngineError::InvalidInput(format!("unknown op `{name}` to inject a fault into; one of: {}", OPS.join(", ")))),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dtype {
            None => write!(f, "{}", self.op),
            Some(d) => write!(f, "{}:{}", self.op, dtype_name(d)),
        }
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        _ => d.as_str(),
    }
}

/// Run every op case on `device` in f32 and bf16 against the CPU in f32, with `fault` (if any)
/// applied to the device results. Rows come op by op, f32 then bf16. A device error is a failing
/// row in f32 (the engine needs the op) and a skipped row in bf16 (the device may lack a bf16
/// kernel; the model then runs in f32 there).
pub fn run(device: &Device, fault: Option<Fault>) -> Result<Vec<Check>> {
    let mut cases = cases::all();
    cases.extend(q8_cases::cases());
    cases.extend(sampler_cases::cases());
    debug_assert!(cases.iter().all(|c| OPS.contains(&c.op)), "a case's op is missing from OPS");
    let mut rows = Vec::with_capacity(2 * cases.len());
    for op in OPS {
        for dtype in [DType::F32, DType::BF16] {
            let group = format!("{op} {}", dtype_name(dtype));
            for case in cases.iter().filter(|c| c.op == *op) {
                let fault = fault.filter(|f| f.hits(op, dtype));
                rows.push(check_case(case, &group, device, dtype, fault.is_some())?);
            }
        }
    }
    Ok(rows)
}

fn check_case(case: &cases::Case, group: &str, device: &Device, dtype: DType, faulty: bool) -> Result<Check> {
    let seed = case_seed(case.op, case.name);
    let tol = if dtype == DType::F32 { TOL_F32 } else { TOL_BF16 };
    let tol = match case.kind {
        Kind::Q8 { candle } if candle || !matches!(device, Device::Cuda(_)) => tol.max(q8_cases::TOL_Q8_ACT),
        _ => tol,
    };
    let round = (dtype != DType::F32).then_some(dtype);
    // An error here is a bug in the case itself, not in a backend: report it as such.
    let reference = (case.run)(&mut Env::new(&Device::Cpu, DType::F32, round, seed).as_reference()).map_err(|e| {
        EngineError::InvalidInput(format!("verify ops: case `{group} / {}` fails on the CPU reference: {e}", case.name))
    })?;
    let ours = match (case.run)(&mut Env::new(device, dtype, round, seed)) {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            let msg: String = msg.lines().next().unwrap_or("").chars().take(90).collect();
            let (name, bad, ok) = if dtype == DType::F32 {
                (format!("{}: error: {msg}", case.name), f64::INFINITY, false)
            } else {
                (format!("{} (skipped: {msg})", case.name), f64::NAN, true)
            };
            let tol = if matches!(case.kind, Kind::Float | Kind::Q8 { .. }) { tol } else { 0.0 };
            return Ok(Check { group: group.into(), name, max_abs: bad, max_rel: bad, tol, ok });
        }
    };
    let ours = if faulty { perturb(&ours, case.kind == Kind::Codes)? } else { ours };
    match case.kind {
        Kind::Float | Kind::Q8 { .. } => Check::float_rel(group, case.name, &ours, &reference, tol),
        Kind::Exact => Check::float(group, case.name, &ours, &reference, 0.0),
        Kind::Codes => Check::codes(group, case.name, &ours, &reference),
    }
}

/// The injected fault: one element (the middle one) of the result, read back to the host, is
/// moved by 5% of the peak |value| (floats) or by one (codes).
fn perturb(t: &Tensor, codes: bool) -> Result<Tensor> {
    let shape = t.shape().clone();
    if codes {
        let mut v: Vec<i64> = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
        let i = v.len() / 2;
        v[i] += 1;
        return Ok(Tensor::from_vec(v, shape, &Device::Cpu)?);
    }
    let mut v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let peak = v.iter().filter(|x| x.is_finite()).fold(0f32, |m, x| m.max(x.abs()));
    let i = v.len() / 2;
    v[i] += if peak > 0.0 { 0.05 * peak } else { 1.0 };
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// FNV-1a of "op/name": each case draws its own inputs, the same on both sides.
fn case_seed(op: &str, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in op.bytes().chain([b'/']).chain(name.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where one side of a case runs, and its input generator (splitmix64, portable and seeded:
/// `Tensor::randn` is neither).
pub(crate) struct Env<'a> {
    pub device: &'a Device,
    pub dtype: DType,
    /// In a bf16 comparison, both sides' inputs are rounded to bf16 values first (the reference
    /// then computes in f32; the f32 weights the engine keeps, e.g. RMSNorm's alpha, hold bf16
    /// values too, as when loaded from a bf16 checkpoint).
    round: Option<DType>,
    state: u64,
    /// The CPU f32 reference side (cases whose reference is computed another way ask).
    reference: bool,
}

impl<'a> Env<'a> {
    fn new(device: &'a Device, dtype: DType, round: Option<DType>, seed: u64) -> Self {
        Self { device, dtype, round, state: seed, reference: false }
    }

    fn as_reference(mut self) -> Self {
        self.reference = true;
        self
    }

    /// Whether this is the reference side of the comparison.
    pub fn is_reference(&self) -> bool {
        self.reference
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Host values, uniform in [-scale, scale), f32 on the CPU.
    pub fn host(&mut self, shape: &[usize], scale: f32) -> Result<Tensor> {
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| self.uniform() * scale).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    }

    /// A host f32 tensor on this side: rounded first (in a bf16 comparison), converted to the
    /// dtype on the CPU, then moved. Contiguous.
    pub fn put(&self, t: &Tensor) -> Result<Tensor> {
        self.put_as(t, self.dtype)
    }

    /// As `put`, in `dtype` (e.g. the f32 weights the engine keeps whatever the model dtype).
    pub fn put_as(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        let t = match self.round {
            Some(d) => t.to_dtype(d)?.to_dtype(DType::F32)?,
            None => t.clone(),
        };
        Ok(t.to_dtype(dtype)?.to_device(self.device)?)
    }

    /// The same values as `put(t)`, but stored with dims `a` and `b` swapped: the result is a
    /// non-contiguous view of t's shape.
    pub fn put_t(&self, t: &Tensor, a: usize, b: usize) -> Result<Tensor> {
        Ok(self.put(&t.transpose(a, b)?.contiguous()?)?.transpose(a, b)?)
    }

    /// Random values on this side, contiguous.
    pub fn rand(&mut self, shape: &[usize], scale: f32) -> Result<Tensor> {
        let h = self.host(shape, scale)?;
        self.put(&h)
    }

    /// Random values on this side, stored with dims `a` and `b` swapped (non-contiguous).
    pub fn rand_t(&mut self, shape: &[usize], scale: f32, a: usize, b: usize) -> Result<Tensor> {
        let h = self.host(shape, scale)?;
        self.put_t(&h, a, b)
    }

    /// Rows of `n` values in (−0.9, 0.9) with one +1 and one −1 planted per row: a unique
    /// maximum and minimum whatever the dtype's rounding. Host f32 [rows, n].
    pub fn planted(&mut self, rows: usize, n: usize) -> Result<Tensor> {
        let mut v = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            let start = v.len();
            v.extend((0..n).map(|_| self.uniform() * 0.9));
            let hi = self.below(n);
            let lo = (hi + 1 + self.below(n - 1)) % n;
            v[start + hi] = 1.0;
            v[start + lo] = -1.0;
        }
        Ok(Tensor::from_vec(v, (rows, n), &Device::Cpu)?)
    }

    /// `n` indices in [0, max) as u32 on this side's device.
    pub fn ids(&mut self, n: usize, max: usize) -> Result<Tensor> {
        let v: Vec<u32> = (0..n).map(|_| self.below(max) as u32).collect();
        Ok(Tensor::from_vec(v, n, &Device::Cpu)?.to_device(self.device)?)
    }

    /// A VarBuilder over the given host tensors, already converted and moved by `put`.
    pub fn vb(&self, tensors: Vec<(&str, Tensor)>) -> Result<VarBuilder<'static>> {
        let mut map = HashMap::new();
        for (name, t) in tensors {
            map.insert(name.to_string(), self.put(&t)?);
        }
        Ok(VarBuilder::from_tensors(map, self.dtype, self.device))
    }
}

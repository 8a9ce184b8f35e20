//! `moshi-rs verify`: the answer to "is my output wrong because of the model code or the backend?".
//! - `golden`: every committed reference trace (golden/), stage by stage, against its tolerance;
//! - `ops`: every primitive the engine uses, on a device against CPU f32, contiguous and not;
//! - `model`: the same teacher-forced run on a device and on CPU f32, layer by layer.
//!
//! Every check is a [`Check`] row; a run passes when every row does, and the first failing row
//! names the op, stage or layer where things go wrong.

mod codec_graphs;
pub mod golden;
mod golden_personaplex;
pub mod model;
pub mod ops;
pub mod trace;

use candle_core::{DType, Tensor};

use crate::error::Result;

/// One compared quantity.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What family it belongs to (e.g. "mimi batch", "matmul f32").
    pub group: String,
    /// The stage, layer or case.
    pub name: String,
    /// Largest absolute error (floats), or the number of differing codes.
    pub max_abs: f64,
    /// `max_abs` relative to the reference's peak magnitude (floats); the fraction of differing
    /// codes (codes).
    pub max_rel: f64,
    /// The bound `max_abs` must stay within (0 for codes).
    pub tol: f64,
    pub ok: bool,
}

fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl Check {
    /// Floats: pass when every |ours − reference| ≤ `tol` (NaN fails).
    pub fn float(group: &str, name: &str, ours: &Tensor, reference: &Tensor, tol: f64) -> Result<Check> {
        let (a, b) = (to_f32_vec(ours)?, to_f32_vec(reference)?);
        if ours.dims() != reference.dims() {
            return Ok(Check { group: group.into(), name: format!("{name} (shape {:?} vs {:?})", ours.dims(), reference.dims()), max_abs: f64::INFINITY, max_rel: f64::INFINITY, tol, ok: false });
        }
        let mut err = 0f64;
        let mut nan = false;
        for (x, y) in a.iter().zip(&b) {
            let d = (*x as f64 - *y as f64).abs();
            if d.is_nan() {
                nan = true;
            }
            err = err.max(d);
        }
        if nan {
            err = f64::NAN;
        }
        let peak = b.iter().fold(0f64, |m, y| m.max((*y as f64).abs()));
        let rel = if peak > 0.0 { err / peak } else { err };
        Ok(Check { group: group.into(), name: name.into(), max_abs: err, max_rel: rel, tol, ok: err <= tol })
    }

    /// Floats with the tolerance relative to the reference's peak: `rel_tol · max|reference|`.
    pub fn float_rel(group: &str, name: &str, ours: &Tensor, reference: &Tensor, rel_tol: f64) -> Result<Check> {
        let peak = to_f32_vec(reference)?.iter().fold(0f64, |m, y| m.max((*y as f64).abs()));
        Self::float(group, name, ours, reference, rel_tol * peak)
    }

    /// Codes or tokens: pass when all are equal.
    pub fn codes(group: &str, name: &str, ours: &Tensor, reference: &Tensor) -> Result<Check> {
        let a: Vec<i64> = ours.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
        let b: Vec<i64> = reference.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
        let diff = if ours.dims() == reference.dims() { a.iter().zip(&b).filter(|(x, y)| x != y).count() } else { a.len().max(b.len()) };
        let n = b.len().max(1);
        Ok(Check { group: group.into(), name: name.into(), max_abs: diff as f64, max_rel: diff as f64 / n as f64, tol: 0.0, ok: diff == 0 })
    }
}

/// The first failing check, if any.
pub fn first_failure(checks: &[Check]) -> Option<&Check> {
    checks.iter().find(|c| !c.ok)
}

/// A plain-text table of the checks.
pub fn table(checks: &[Check]) -> String {
    let gw = checks.iter().map(|c| c.group.chars().count()).max().unwrap_or(5).max(5);
    let nw = checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(4).max(4);
    let mut s = format!("{:<gw$}  {:<nw$}  {:>10}  {:>10}  {:>9}  result\n", "group", "check", "max abs", "max rel", "tolerance");
    for c in checks {
        s.push_str(&format!(
            "{:<gw$}  {:<nw$}  {:>10.3e}  {:>10.3e}  {:>9.1e}  {}\n",
            c.group,
            c.name,
            c.max_abs,
            c.max_rel,
            c.tol,
            if c.ok { "ok" } else { "FAIL" }
        ));
    }
    s
}

//! Percentiles of timing samples, shared by every benchmark the CLI prints.

/// The `p`-quantile (nearest rank, `p` in [0, 1]) of unsorted samples; NaN when there are none.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// Rounded to three decimals, for JSON output.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Every float in `v` rounded for people: three decimals, or four significant digits below 1
/// (so that 0.000123 GB stays visible). Integers, strings and the rest are left alone.
pub fn round_floats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().expect("an f64");
            if x.is_finite() && x != 0.0 {
                let scale = 10f64.powi((3 - x.abs().log10().floor() as i32).max(3));
                if let Some(r) = serde_json::Number::from_f64((x * scale).round() / scale) {
                    *n = r;
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(round_floats),
        serde_json::Value::Object(o) => o.values_mut().for_each(round_floats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_rounded_for_people() {
        let mut v = serde_json::json!({"ms": 12.345678, "gb": 0.000123456, "n": 3, "s": "x", "l": [0.5, 1.0004]});
        round_floats(&mut v);
        assert_eq!(v, serde_json::json!({"ms": 12.346, "gb": 0.0001235, "n": 3, "s": "x", "l": [0.5, 1.0]}));
    }
}

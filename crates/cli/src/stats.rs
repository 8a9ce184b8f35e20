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

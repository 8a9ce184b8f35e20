//! Command-line values checked as they are parsed, so that a bad one is refused before anything
//! loads, with the flag named by clap ("invalid value '-1' for '--temperature <T>': …"). The
//! rules are the ones the server applies to the same settings in its query parameters.

/// A sampling temperature: finite and ≥ 0 (0 means greedy).
pub fn temperature(s: &str) -> Result<f64, String> {
    let t: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
    moshi_engine::lm::sampling::check_temperature(t)
}

/// A duration in seconds: finite and ≥ 0.
pub fn seconds(s: &str) -> Result<f64, String> {
    let t: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if t.is_finite() && t >= 0.0 {
        Ok(t)
    } else {
        Err(format!("seconds must be finite and ≥ 0, got {t}"))
    }
}

/// A positive number of seconds (a timeout).
pub fn positive_seconds(s: &str) -> Result<f64, String> {
    match seconds(s)? {
        t if t > 0.0 => Ok(t),
        _ => Err("a timeout must be more than 0 seconds".into()),
    }
}

/// A count that must be at least 1.
pub fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number ≥ 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked() {
        assert_eq!(temperature("0.7"), Ok(0.7));
        assert_eq!(temperature("0"), Ok(0.0));
        for bad in ["-0.1", "NaN", "inf", "-inf", "hot", ""] {
            assert!(temperature(bad).is_err(), "{bad}");
        }
        assert_eq!(seconds("2.5"), Ok(2.5));
        assert!(seconds("-1").is_err() && seconds("nan").is_err());
        assert_eq!(positive("3"), Ok(3));
        assert!(positive("0").is_err() && positive("-2").is_err());
    }
}

//! The streaming step's token alignment with symbolic tokens (docs/lm.md): generated token of
//! stream k sampled at step n is `g(k, n) = 1000·k + n + 100` (k < G), the user code of stream k
//! given at step n is `u(k, n) = 1000·k + n + 100`; initial tokens are `-(k + 1)`. The expected
//! values are written from the rules, independently of `DelayBuffer`'s ring arithmetic.

use moshi_engine::lm::delays::DelayBuffer;

fn sym(k: usize, n: usize) -> i64 {
    1000 * k as i64 + n as i64 + 100
}

fn init(k: usize) -> i64 {
    -(k as i64 + 1)
}

/// Drive `steps` steps with B = 2 (row 1 = row 0 + 50000) and check input and output of every
/// step against the rules.
fn check(delays: &[usize], generated: usize, steps: usize) {
    let kk = delays.len();
    let m = *delays.iter().max().unwrap();
    let initial: Vec<i64> = (0..kk).map(init).collect();
    let mut buf = DelayBuffer::new(delays, &initial, generated, 2).unwrap();
    let row = |v: i64, r: usize| if v < 0 { v } else { v + 50000 * r as i64 };
    for n in 0..steps {
        let user: Vec<i64> = (0..2).flat_map(|r| (generated..kk).map(move |k| row(sym(k, n), r))).collect();
        let input = buf.input(&user).unwrap();
        for r in 0..2 {
            for k in 0..kk {
                let d = delays[k];
                // X_k[n]: generated streams hold g(k, n − 1), user streams u(k, n − D_k).
                let expected = if n <= d {
                    init(k)
                } else if k < generated {
                    row(sym(k, n - 1), r)
                } else {
                    row(sym(k, n - d), r)
                };
                assert_eq!(input[r * kk + k], expected, "delays {delays:?}: input of step {n}, stream {k}, row {r}");
            }
        }
        let sampled: Vec<i64> = (0..2).flat_map(|r| (0..generated).map(move |k| row(sym(k, n), r))).collect();
        let out = buf.record(&sampled).unwrap();
        if n < m {
            assert!(out.is_none(), "delays {delays:?}: step {n} < M = {m} returned tokens");
            continue;
        }
        let out = out.unwrap_or_else(|| panic!("delays {delays:?}: step {n} ≥ M returned nothing"));
        for r in 0..2 {
            for k in 0..generated {
                // All streams refer to time index n − M: stream k's token of that time was
                // sampled at step n − M + D_k.
                assert_eq!(out[r * generated + k], row(sym(k, n - m + delays[k]), r), "delays {delays:?}: output of step {n}, stream {k}");
            }
        }
    }
}

#[test]
fn moshi_delays_align_every_stream() {
    // Text, 8 model codebooks (semantic 0, acoustic 1), 8 user codebooks (same delays).
    check(&[0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1], 9, 40);
}

#[test]
fn other_delay_layouts_align_every_stream() {
    check(&[0, 1, 2, 2, 2, 2, 2, 2, 2, 0, 1, 2, 2, 2, 2, 2, 2], 9, 40);
    check(&[3, 0, 5, 1, 0, 2], 3, 40);
    check(&[0, 0, 0], 2, 10); // no delay: output at every step, of the step itself
    check(&[2, 0], 2, 12); // text delayed more than audio, no user stream
}

/// With Moshi's delays the first output is at step 1 and holds [t₀, a₀,₀, a₁,₁ … a₇,₁]: the
/// acoustic tokens of time 0 are the ones sampled at step 1.
#[test]
fn moshi_first_output_spelled_out() {
    let delays = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1];
    let initial: Vec<i64> = (0..17).map(init).collect();
    let mut buf = DelayBuffer::new(&delays, &initial, 9, 1).unwrap();
    let user = vec![7; 8];
    assert_eq!(buf.input(&user).unwrap(), initial, "step 0 reads only initial tokens");
    assert!(buf.record(&(0..9).map(|k| sym(k, 0)).collect::<Vec<_>>()).unwrap().is_none());
    buf.input(&user).unwrap();
    let out = buf.record(&(0..9).map(|k| sym(k, 1)).collect::<Vec<_>>()).unwrap().unwrap();
    assert_eq!(out, vec![100, 1100, 2101, 3101, 4101, 5101, 6101, 7101, 8101]);
}

#[test]
fn wrong_sizes_are_errors() {
    let mut buf = DelayBuffer::new(&[0, 1, 1], &[-1, -2, -3], 2, 2).unwrap();
    let e = buf.input(&[1, 2, 3]).unwrap_err().to_string();
    assert!(e.contains("3 user codes given, expected 2 rows × 1 codebooks"), "{e}");
    buf.input(&[1, 2]).unwrap();
    assert!(buf.record(&[1, 2, 3]).is_err());
    assert!(DelayBuffer::new(&[0, 1], &[0], 1, 1).is_err());
    assert!(DelayBuffer::new(&[0, 1], &[0, 0], 1, 0).is_err());
}

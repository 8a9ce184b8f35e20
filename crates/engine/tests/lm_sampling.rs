//! The sampler: greedy is argmax; seeded sampling is deterministic per seed; top-k never leaves
//! the k most likely tokens; frequencies follow softmax(logits / T) (checked over many draws with
//! a fixed seed, so the test is deterministic); replayed noise selects `argmax(p_r / q_r)` by rank.

use moshi_engine::lm::sampling::{sample, Noise, ReplayNoise, SamplingConfig, SeededNoise};

fn logits() -> Vec<f32> {
    vec![1.0, 3.0, 0.5, 2.5, -1.0, 2.9, 0.0, 1.5]
}

#[test]
fn greedy_is_argmax_per_row() {
    let mut l = logits();
    l.extend([0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 9.0]); // tie: the first index wins
    let t = sample(&l, 2, &SamplingConfig::greedy(), &mut SeededNoise::new(0), "t").unwrap();
    assert_eq!(t, vec![1, 2]);
}

fn draws(cfg: SamplingConfig, seed: u64, n: usize) -> Vec<u32> {
    let mut noise = SeededNoise::new(seed);
    (0..n).map(|_| sample(&logits(), 1, &cfg, &mut noise, "t").unwrap()[0]).collect()
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let cfg = SamplingConfig::sampled(1.0, 0);
    assert_eq!(draws(cfg, 7, 200), draws(cfg, 7, 200));
    assert_ne!(draws(cfg, 7, 200), draws(cfg, 8, 200));
}

#[test]
fn frequencies_follow_tempered_softmax_within_top_k() {
    for (temp, k) in [(1.0, 0), (0.7, 3), (2.0, 5)] {
        let cfg = SamplingConfig::sampled(temp, k);
        let n = 40_000;
        let mut counts = [0usize; 8];
        for t in draws(cfg, 42, n) {
            counts[t as usize] += 1;
        }
        let l = logits();
        let mut order: Vec<usize> = (0..8).collect();
        order.sort_by(|&a, &b| l[b].partial_cmp(&l[a]).unwrap());
        let kept: Vec<usize> = if k == 0 { order.clone() } else { order[..k].to_vec() };
        let z: f64 = kept.iter().map(|&i| (l[i] as f64 / temp).exp()).sum();
        for i in 0..8 {
            let p = if kept.contains(&i) { (l[i] as f64 / temp).exp() / z } else { 0.0 };
            let f = counts[i] as f64 / n as f64;
            // 4.5 standard deviations of a binomial frequency at n = 40000 is ≤ 0.0113.
            assert!((f - p).abs() < 0.0113, "T {temp} top-{k}: token {i} drawn {f:.4}, expected {p:.4}");
            if p == 0.0 {
                assert_eq!(counts[i], 0, "T {temp} top-{k}: token {i} is outside the top k");
            }
        }
    }
}

#[test]
fn replayed_noise_picks_by_rank() {
    // Sorted probabilities rank tokens 1, 5, 3, ...; noise favouring rank 2 picks token 3.
    let mut noise = ReplayNoise::new();
    noise.push(vec![100.0, 100.0, 0.001]);
    noise.push(vec![0.001, 100.0, 100.0]);
    let cfg = SamplingConfig::sampled(1.0, 3);
    assert_eq!(sample(&logits(), 1, &cfg, &mut noise, "t").unwrap(), vec![3]);
    assert_eq!(sample(&logits(), 1, &cfg, &mut noise, "t").unwrap(), vec![1]);
    let e = sample(&logits(), 1, &cfg, &mut noise, "t").unwrap_err().to_string();
    assert!(e.contains("ran out after 2"), "{e}");
    let mut short = ReplayNoise::new();
    short.push(vec![1.0; 4]);
    let e = sample(&logits(), 1, &cfg, &mut short, "t").unwrap_err().to_string();
    assert!(e.contains("has 4 values, the sampling call needs 1×3"), "{e}");
}

#[test]
fn nan_logits_are_named() {
    let mut l = logits();
    l[6] = f32::NAN;
    let e = sample(&l, 1, &SamplingConfig::greedy(), &mut SeededNoise::new(0), "step 3, text").unwrap_err().to_string();
    assert!(e.contains("step 3, text") && e.contains("token 6"), "{e}");
}

#[test]
fn seeded_noise_is_exponential() {
    let mut n = SeededNoise::new(3);
    let mut v = Vec::new();
    n.fill(1000, 10, &mut v).unwrap();
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    assert!(v.iter().all(|&x| x >= 0.0) && (mean - 1.0).abs() < 0.03, "mean {mean}");
}

//! `moshi-rs lm bench-linear`: the LM's linear layers alone, on their real shapes, with each
//! weight format and kernel the seam has: the model dtype's product, the 8-bit weights in the
//! seam's layout for the device (on CUDA our `q8_matvec`), and Candle's 8-bit product. Prints one
//! JSON line per (shape, rows, kernel): the median time of a call and the weight bytes read per
//! second. What issue 17 asked to measure before writing a kernel, and kept to measure it.

use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Module, Tensor};
use moshi_engine::exec::{linear_q8, quantize_q8, QWeight};
use moshi_engine::lm::LmConfig;
use moshi_engine::nn::Linear;

use crate::stats::{percentile, round3};

/// `lm bench-linear`'s options.
#[derive(Debug, clap::Args)]
pub struct BenchLinearArgs {
    /// Activation rows per call (comma-separated; 1 is batch-1 decode).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub rows: Vec<usize>,
    /// Timed calls per (shape, rows, kernel), after 10 untimed ones.
    #[arg(long, default_value_t = 200, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub reps: usize,
    /// Where it runs (cuda needs a build with that feature).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: crate::model::DeviceArg,
    /// The activations' and the float weights' dtype.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: crate::model::DtypeArg,
}

/// The 7B's linear shapes [out, in], named.
fn shapes() -> Vec<(&'static str, usize, usize)> {
    let c = LmConfig::default();
    let (d, dd) = (c.dim, c.depformer_dim);
    vec![
        ("temporal qkv", 3 * d, d),
        ("temporal out", d, d),
        ("temporal ffn in", 2 * c.gated_hidden(), d),
        ("temporal ffn out", d, c.gated_hidden()),
        ("text head", c.text_card, d),
        ("depformer in", dd, d),
        ("depformer qkv", 3 * dd, dd),
        ("depformer ffn in", 2 * c.depformer_gated_hidden(), dd),
        ("depformer ffn out", dd, c.depformer_gated_hidden()),
    ]
}

pub fn run(args: &BenchLinearArgs) -> anyhow::Result<()> {
    let dev = crate::model::device(args.device)?;
    let dtype = crate::model::dtype(args.dtype);
    for (name, n, k) in shapes() {
        // Weights drawn on the device (fast), quantized on the host as at load.
        let w = Tensor::randn(0f32, 1.0 / (k as f32).sqrt(), (n, k), &dev)?;
        let q = quantize_q8(&w)?;
        let float = Linear::new(w.to_dtype(dtype)?)?;
        let ours = QWeight::on(quantize_q8(&w)?, &dev)?;
        let candle = QWeight::candle_on(q, &dev)?;
        for &m in &args.rows {
            let x = Tensor::randn(0f32, 1.0, (1, m, k), &dev)?.to_dtype(dtype)?;
            let kernels: [(&str, usize, &dyn Fn() -> candle_core::Result<Tensor>); 3] = [
                ("float", n * k * dtype.size_in_bytes(), &|| float.forward(&x)),
                ("q8", ours.bytes(), &|| linear_q8(&x, &ours)),
                ("q8 candle", candle.bytes(), &|| linear_q8(&x, &candle)),
            ];
            for (kernel, bytes, f) in kernels {
                let ms = time(&dev, args.reps, f).with_context(|| format!("{name} [{n}, {k}], {m} rows, {kernel}"))?;
                let med = percentile(&ms, 0.5);
                println!(
                    "{}",
                    serde_json::json!({
                        "shape": name, "out": n, "in": k, "rows": m, "kernel": kernel, "dtype": format!("{dtype:?}"),
                        "weight_bytes": bytes, "ms_median": round3(med * 1e3) / 1e3, "ms_p90": round3(percentile(&ms, 0.9) * 1e3) / 1e3, "groups_of_20": ms.len(),
                        "weight_tb_s": round3(bytes as f64 / (med * 1e-3) / 1e12),
                    })
                );
            }
        }
    }
    Ok(())
}

/// Milliseconds per call: groups of 20 calls launched back to back between two
/// synchronizations (as in a step, the launches overlap the GPU's work), each group's time over
/// 20; `reps / 20` groups.
fn time(dev: &Device, reps: usize, f: &dyn Fn() -> candle_core::Result<Tensor>) -> anyhow::Result<Vec<f64>> {
    const GROUP: usize = 20;
    for _ in 0..10 {
        f()?;
    }
    dev.synchronize()?;
    let mut ms = Vec::with_capacity(reps / GROUP + 1);
    for _ in 0..reps.div_ceil(GROUP) {
        let t = Instant::now();
        for _ in 0..GROUP {
            f()?;
        }
        dev.synchronize()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3 / GROUP as f64);
    }
    Ok(ms)
}

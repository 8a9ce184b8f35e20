//! `moshi-rs bench`: a whole Moshi (Mimi encode → LM step → Mimi decode) stepped over a test
//! signal, B conversations batched; per-stage ms per frame (median, p90, p99), the real-time
//! factor, and an ASCII plot of the frame times. See docs/benchmarks.md for how to read it.

use clap::Args;
use moshi_engine::conversation::StageTimes;
use moshi_engine::lm::GenConfig;
use moshi_engine::verify::model::test_signal;

use crate::model::{DeviceArg, DtypeArg};
use crate::stats::percentile as pct;
use crate::sources::MoshiSource;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub source: MoshiSource,
    /// Conversations stepped together.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Frames timed (80 ms each), after the warm-up.
    #[arg(long, default_value_t = 100)]
    pub frames: usize,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Print only the JSON.
    #[arg(long)]
    pub json: bool,
}

/// Frame times as columns (each the slowest frame of its bucket), with the real-time budget
/// drawn as a line of `-`.
pub fn ascii_plot(times: &[f64], budget: f64) -> String {
    const W: usize = 72;
    const H: usize = 10;
    if times.is_empty() {
        return String::new();
    }
    let per = times.len().div_ceil(W);
    let cols: Vec<f64> = times.chunks(per).map(|c| c.iter().cloned().fold(0.0, f64::max)).collect();
    let top = cols.iter().cloned().fold(budget, f64::max) * 1.05;
    let level = |v: f64| ((v / top) * H as f64).round() as usize;
    let b = level(budget);
    let mut s = String::new();
    for row in (1..=H).rev() {
        let label = if row == b {
            format!("{budget:7.1} ms -")
        } else if row == H {
            format!("{top:7.1} ms |")
        } else {
            "           |".into()
        };
        s.push_str(&label);
        for &c in &cols {
            s.push(if level(c) >= row { '#' } else if row == b { '-' } else { ' ' });
        }
        s.push('\n');
    }
    s.push_str(&format!("           +{}\n            frames 1..{} ({} per column, the slowest shown)\n", "-".repeat(cols.len()), times.len(), per));
    s
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (dev, dt) = (crate::model::device(args.device)?, crate::model::dtype(args.dtype));
    let loaded = args.source.load(dt, &dev)?;
    let moshi = &loaded.moshi;
    let n = moshi.frame_size();
    let total = args.warmup + args.frames;
    let signal = test_signal(total * n);
    let mut conv = moshi.conversations(args.batch, GenConfig::default(), 1, false)?;
    let mut times: Vec<StageTimes> = Vec::new();
    for f in 0..total {
        let frame: Vec<f32> = (0..args.batch).flat_map(|_| signal[f * n..(f + 1) * n].iter().copied()).collect();
        let out = moshi.step(&mut conv, &frame)?;
        if f >= args.warmup {
            times.push(out.times);
        }
    }
    let budget = 1000.0 * n as f64 / moshi_engine::audio::MIMI_SAMPLE_RATE as f64;
    let col = |f: fn(&StageTimes) -> f64| times.iter().map(f).collect::<Vec<f64>>();
    let stages = [("encode", col(|t| t.encode_ms)), ("lm", col(|t| t.lm_ms)), ("decode", col(|t| t.decode_ms)), ("total", col(|t| t.total_ms()))];
    let mut json = serde_json::Map::new();
    for (name, v) in &stages {
        json.insert(
            format!("{name}_ms"),
            serde_json::json!({"median": pct(v, 0.5), "p90": pct(v, 0.9), "p99": pct(v, 0.99)}),
        );
    }
    let med = pct(&stages[3].1, 0.5);
    json.insert("real_time_factor".into(), serde_json::json!(med / budget));
    for (k, v) in [("model", serde_json::json!(loaded.identity)), ("device", serde_json::json!(format!("{dev:?}"))), ("dtype", serde_json::json!(format!("{dt:?}")))] {
        json.insert(k.into(), v);
    }
    for (k, v) in [("batch", args.batch), ("frames", args.frames), ("warmup", args.warmup)] {
        json.insert(k.into(), serde_json::json!(v));
    }
    if !args.json {
        println!("{} on {dev:?} {dt:?}, batch {}, {} frames after {} warm-up (ms per frame of {budget:.0} ms audio)", loaded.identity, args.batch, args.frames, args.warmup);
        println!("{:>8} {:>9} {:>9} {:>9}", "stage", "median", "p90", "p99");
        for (name, v) in &stages {
            println!("{name:>8} {:>9.2} {:>9.2} {:>9.2}", pct(v, 0.5), pct(v, 0.9), pct(v, 0.99));
        }
        println!("real-time factor (median total / {budget:.0} ms): {:.3}{}", med / budget, if med <= budget { "  (faster than real time)" } else { "  (slower than real time)" });
        print!("{}", ascii_plot(&stages[3].1, budget));
    }
    println!("{}", serde_json::Value::Object(json));
    Ok(())
}

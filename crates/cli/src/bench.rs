//! `moshi-rs bench`: a whole Moshi (Mimi encode → LM step → Mimi decode) stepped over a test
//! signal, B conversations batched; per-stage ms per frame (median, p90, p99), the real-time
//! factor, and an ASCII plot of the frame times. See docs/benchmarks.md for how to read it.

use clap::Args;
use moshi_engine::conversation::StageTimes;
use moshi_engine::lm::GenConfig;
use moshi_engine::verify::model::test_signal;

use crate::model::cli_name;
use crate::stats::percentile as pct;
use crate::sources::MoshiSource;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub source: MoshiSource,
    /// Conversations stepped together; a comma-separated list runs each size in turn with the
    /// same model (one JSON line each; a size that fails, e.g. out of memory, reports the error).
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub batch: Vec<usize>,
    /// Frames timed (80 ms each), after the warm-up (at least 1).
    #[arg(long, default_value_t = 100, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub frames: usize,
    /// Frames run before timing starts.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    #[command(flatten)]
    pub runtime: crate::model::RuntimeArgs,
    /// Step the rows as `serve` does: conversation slots, each started with its own seed.
    #[arg(long)]
    pub slots: bool,
    /// Before timing, move every row this many steps deeper into its conversation (without
    /// computing them), so that attention reads that much KV cache: 3000 is the 7B's full context.
    #[arg(long, default_value_t = 0)]
    pub context_fill: usize,
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

/// This process's resident memory (GB) as Linux reports it (`VmRSS`); None elsewhere. With the
/// weights mapped from a file it counts the pages touched so far.
pub fn host_rss_gb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024.0 / 1e9)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (dev, dt) = (crate::model::device(args.runtime.device)?, crate::model::dtype(args.runtime.dtype));
    let t0 = std::time::Instant::now();
    let loaded = args.source.load_with(&args.runtime.load_options(), &dev)?;
    eprintln!("model ready in {:.1} s: {}", t0.elapsed().as_secs_f64(), loaded.identity);
    for &batch in &args.batch {
        if let Err(e) = bench_batch(&args, &loaded, batch, &dev, dt) {
            let msg = format!("{e:#}");
            eprintln!("batch {batch}: {msg}");
            println!("{}", serde_json::json!({"batch": batch, "error": msg, "kv_cache": cli_name(&args.runtime.kv_cache)}));
        }
    }
    Ok(())
}

fn bench_batch(args: &BenchArgs, loaded: &crate::sources::Loaded, batch: usize, dev: &candle_core::Device, dt: candle_core::DType) -> anyhow::Result<()> {
    let moshi = &loaded.moshi;
    let n = moshi.frame_size();
    let total = args.warmup + args.frames;
    let signal = test_signal(total * n);
    let options = args.runtime.run_options();
    let mut conv = if args.slots {
        let mut c = moshi.slots(batch, &options)?;
        for row in 0..batch {
            c.reset_row(row, GenConfig::default(), row as u64 + 1)?;
        }
        c
    } else {
        moshi.conversations(batch, GenConfig::default(), 1, false, &options)?
    };
    let mut times: Vec<StageTimes> = Vec::new();
    for f in 0..total {
        let frame: Vec<f32> = (0..batch).flat_map(|_| signal[f * n..(f + 1) * n].iter().copied()).collect();
        let out = moshi.step(&mut conv, &frame)?;
        if f == 0 && args.context_fill > 0 {
            conv.skip_context(args.context_fill);
        }
        if f >= args.warmup {
            times.push(out.times);
        }
    }
    let budget = 1000.0 * n as f64 / moshi_engine::audio::MIMI_SAMPLE_RATE as f64;
    let col = |f: fn(&StageTimes) -> f64| times.iter().map(f).collect::<Vec<f64>>();
    let stages = [
        ("encode", col(|t| t.encode_ms)),
        ("temporal", col(|t| t.temporal_ms)),
        ("depformer", col(|t| t.depformer_ms)),
        ("lm", col(|t| t.lm_ms)),
        ("decode", col(|t| t.decode_ms)),
        ("total", col(|t| t.total_ms())),
    ];
    let total_col = &stages[5].1;
    let mut json = serde_json::Map::new();
    // Weight bandwidth: every LM weight but the embedding tables is read once per step.
    let weight_bytes = moshi.lm.streamed_weight_bytes();
    let _ = dt;
    json.insert("weights".into(), serde_json::json!(moshi.lm.weight_format().name()));
    json.insert("lm_weights_total_gb".into(), serde_json::json!(moshi.lm.weight_bytes() as f64 / 1e9));
    json.insert("host_rss_gb".into(), serde_json::json!(host_rss_gb()));
    let lm_med = pct(&stages[3].1, 0.5);
    json.insert("lm_weight_gb".into(), serde_json::json!(weight_bytes as f64 / 1e9));
    json.insert("lm_weight_bandwidth_tb_s".into(), serde_json::json!(weight_bytes as f64 / (lm_med * 1e-3) / 1e12));
    json.insert("kv_cache_gb".into(), serde_json::json!(conv.cache_bytes() as f64 / 1e9));
    json.insert("kv_cache".into(), serde_json::json!(cli_name(&args.runtime.kv_cache)));
    json.insert("sampler".into(), serde_json::json!(cli_name(&args.runtime.sampler)));
    json.insert("cuda_graphs".into(), serde_json::json!(cli_name(&args.runtime.cuda_graphs)));
    json.insert("graph_state".into(), serde_json::json!(format!("{:?}", conv.graph_state())));
    json.insert("temporal_graph_state".into(), serde_json::json!(format!("{:?}", conv.temporal_graph_state())));
    let (enc, dec) = conv.mimi_graph_state();
    json.insert("mimi_graph_state".into(), serde_json::json!({"encode": format!("{enc:?}"), "decode": format!("{dec:?}")}));
    json.insert("context_fill".into(), serde_json::json!(args.context_fill));
    json.insert("slots".into(), serde_json::json!(args.slots));
    if let Some((used, total)) = moshi_engine::device_memory(dev) {
        json.insert("device_memory_used_gb".into(), serde_json::json!(used as f64 / 1e9));
        json.insert("device_memory_total_gb".into(), serde_json::json!(total as f64 / 1e9));
    }
    let late = total_col.iter().filter(|&&t| t > budget).count();
    json.insert("frames_over_budget".into(), serde_json::json!(late));
    for (name, v) in &stages {
        json.insert(
            format!("{name}_ms"),
            serde_json::json!({"median": pct(v, 0.5), "p90": pct(v, 0.9), "p99": pct(v, 0.99)}),
        );
    }
    let med = pct(total_col, 0.5);
    json.insert("real_time_factor".into(), serde_json::json!(med / budget));
    for (k, v) in [("model", serde_json::json!(loaded.identity)), ("device", serde_json::json!(cli_name(&args.runtime.device))), ("dtype", serde_json::json!(cli_name(&args.runtime.dtype)))] {
        json.insert(k.into(), v);
    }
    for (k, v) in [("batch", batch), ("frames", args.frames), ("warmup", args.warmup)] {
        json.insert(k.into(), serde_json::json!(v));
    }
    if !args.json {
        println!("{} on {} {}, batch {}, {} frames after {} warm-up (ms per frame of {budget:.0} ms audio)", loaded.identity, cli_name(&args.runtime.device), cli_name(&args.runtime.dtype), batch, args.frames, args.warmup);
        println!("{:>8} {:>9} {:>9} {:>9}", "stage", "median", "p90", "p99");
        for (name, v) in &stages {
            println!("{name:>8} {:>9.2} {:>9.2} {:>9.2}", pct(v, 0.5), pct(v, 0.9), pct(v, 0.99));
        }
        println!("real-time factor (median total / {budget:.0} ms): {:.3}{}", med / budget, if med <= budget { "  (faster than real time)" } else { "  (slower than real time)" });
        print!("{}", ascii_plot(total_col, budget));
    }
    let mut json = serde_json::Value::Object(json);
    crate::stats::round_floats(&mut json);
    println!("{json}");
    Ok(())
}

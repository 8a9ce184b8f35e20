//! `moshi-rs lm …`: the Moshi language model on its own (benchmark, checkpoint check).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::Subcommand;
use moshi_engine::lm::random::random_weights_with;
use moshi_engine::lm::{check_checkpoint, GenConfig, LmConfig, LmModel};
use moshi_engine::nn::transformer::TransformerState;

use crate::model::cli_name;
use crate::stats::{percentile, round3};

/// `lm bench`'s options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Temporal transformer layers (the 7B has 32; every layer costs the same).
    #[arg(long, default_value_t = 2, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub layers: usize,
    /// Depformer layers (the 7B has 6).
    #[arg(long, default_value_t = 6, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub depformer_layers: usize,
    /// Steps timed after the warm-up (at least 1).
    #[arg(long, default_value_t = 20, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub steps: usize,
    /// Steps run before timing starts.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Rows stepped together (at least 1).
    #[arg(long, default_value_t = 1, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub batch: usize,
    /// An LM config JSON (Kyutai's field names); the 7B's when absent.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: crate::model::RuntimeArgs,
    /// Before timing, move every row this many steps into its conversation (3000: the 7B's
    /// full context, which attention then reads in full at every step).
    #[arg(long, default_value_t = 0)]
    pub context_fill: usize,
}

#[derive(Debug, Subcommand)]
pub enum LmCommand {
    /// Time streaming steps of a full-width LM with random weights and fewer temporal layers;
    /// prints JSON (medians in ms): the whole step, each temporal layer, each depformer step.
    Bench(BenchArgs),
    /// Check an LM checkpoint's names and shapes against a config from its header alone.
    Check {
        /// safetensors file(s) of the LM.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// An LM config JSON (Kyutai's field names); the 7B's when absent (PersonaPlex 7B's for a
        /// checkpoint with a 16-step depformer).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write a full-size Moshi with random weights into a folder, under the released file names
    /// (the LM in --dtype, drawn on --device; Mimi; a stand-in tokenizer), loadable with
    /// `--model DIR`: for timing start-up from a local disk. About 15.4 GB for the bf16 7B.
    WriteRandom(WriteRandomArgs),
    /// Time the LM's linear layers alone on the 7B's shapes, per weight format and kernel
    /// (float, 8-bit in the seam's layout, Candle's 8-bit): one JSON line each.
    BenchLinear(crate::lm_linear::BenchLinearArgs),
}

/// `lm write-random`'s options.
#[derive(Debug, clap::Args)]
pub struct WriteRandomArgs {
    /// The folder to write (made if missing; files in it are replaced).
    pub dir: PathBuf,
    /// Temporal transformer layers (the 7B has 32; another count also writes a config.json).
    #[arg(long, default_value_t = 32, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub layers: usize,
    /// Where the weights are drawn (a GPU draws the 7B in seconds, the CPU takes minutes).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: crate::model::DeviceArg,
    /// The LM's dtype in the file.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: crate::model::DtypeArg,
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

pub fn run(cmd: LmCommand) -> anyhow::Result<()> {
    match cmd {
        LmCommand::Check { files, config } => {
            let mut header = Vec::new();
            for f in &files {
                header.extend(moshi_engine::weights::read_header(f)?.into_iter().map(|(n, s, _)| (n, s)));
            }
            // Without a config: Moshi 7B's, or PersonaPlex 7B's for a 16-step depformer.
            let cfg = match config {
                Some(p) => LmConfig::from_json_file(&p)?,
                None if header.iter().any(|(n, _)| n == "linears.15.weight") => {
                    println!("a 16-step depformer: checking against PersonaPlex 7B");
                    LmConfig::personaplex_7b()
                }
                None => LmConfig::default(),
            };
            let (layout, unused) = check_checkpoint(&cfg, &header)?;
            println!("{layout:?} layout: all {} tensors present with the expected shapes", layout.tensors(&cfg).len());
            if !unused.is_empty() {
                println!("{} tensors not used by the LM: {}", unused.len(), unused.join(", "));
            }
            Ok(())
        }
        LmCommand::WriteRandom(args) => {
            let (dev, dtype) = (crate::model::device(args.device)?, crate::model::dtype(args.dtype));
            let t0 = Instant::now();
            let bar = crate::progress::WeightsBar::new("drawing random weights");
            let bytes = moshi_engine::random_model::write_random_checkpoint(&args.dir, args.layers, dtype, &dev, &mut |d, t| bar.update(d, t))
                .with_context(|| format!("writing a random checkpoint into {}", args.dir.display()))?;
            drop(bar);
            eprintln!("wrote {:.2} GB into {} in {:.1} s", bytes as f64 / 1e9, args.dir.display(), t0.elapsed().as_secs_f64());
            Ok(())
        }
        LmCommand::BenchLinear(args) => crate::lm_linear::run(&args),
        LmCommand::Bench(args) => {
            let mut cfg = match &args.config {
                Some(p) => LmConfig::from_json_file(p)?,
                None => LmConfig::default(),
            };
            cfg.num_layers = args.layers;
            cfg.depformer_num_layers = args.depformer_layers;
            bench(&cfg, &args)
        }
    }
}

fn sync(dev: &Device) -> anyhow::Result<()> {
    dev.synchronize().context("device synchronize")
}

fn bench(cfg: &LmConfig, args: &BenchArgs) -> anyhow::Result<()> {
    let (batch, steps, warmup, context_fill) = (args.batch, args.steps, args.warmup, args.context_fill);
    let (dev, dtype) = (&crate::model::device(args.runtime.device)?, crate::model::dtype(args.runtime.dtype));
    let options = args.runtime.run_options();
    let (kv_name, dtype_name, device_name) = (cli_name(&args.runtime.kv_cache), cli_name(&args.runtime.dtype), cli_name(&args.runtime.device));
    let t0 = Instant::now();
    let bar = crate::progress::WeightsBar::new("drawing random weights");
    let weights = random_weights_with(cfg, dtype, dev, &mut |d, t| bar.update(d, t))?;
    drop(bar);
    let params: usize = weights.values().map(|t| t.elem_count()).sum();
    let model = LmModel::from_tensors_with(cfg, weights, &args.runtime.load_options(), dev)?;
    eprintln!("random full-width LM: {params} parameters ({} temporal layers) in {:.1} s", cfg.num_layers, t0.elapsed().as_secs_f64());

    // The whole step, as a conversation runs it (default sampling).
    let user = vec![5i64; batch * cfg.user_streams()];
    let mut st = model.new_state(batch, GenConfig::default(), 1, &options)?;
    let mut step_ms = Vec::new();
    let (mut temporal_ms, mut depformer_ms) = (Vec::new(), Vec::new());
    for i in 0..warmup + steps {
        let t = Instant::now();
        let out = model.step(&mut st, &user)?;
        sync(dev)?;
        if i == 0 && context_fill > 0 {
            st.skip_temporal(context_fill);
        }
        if i >= warmup {
            step_ms.push(t.elapsed().as_secs_f64() * 1e3);
            temporal_ms.push(out.temporal_ms);
            depformer_ms.push(out.depformer_ms);
        }
    }
    let memory = moshi_engine::device_memory(dev);
    let cache_bytes = st.cache_bytes();
    drop(st);

    // The breakdown: each temporal layer (timed between layer outputs), the heads, each
    // depformer step (projection, transformer, head).
    let nl = cfg.num_layers;
    let (mut layer_ms, mut dep_ms) = (vec![Vec::new(); nl], vec![Vec::new(); cfg.dep_q]);
    let mut embed_head_ms = Vec::new();
    let mut state = TransformerState::new(options.kv_cache);
    if context_fill > 0 {
        // The same depth for the breakdown (a first step allocates the caches).
        model.temporal().step(&Tensor::from_vec(vec![1i64; batch * cfg.num_streams()], (batch, cfg.num_streams(), 1), dev)?, &mut state, &mut |_, _| Ok(()))?;
        state.skip(context_fill);
    }
    let tokens = Tensor::from_vec(vec![1i64; batch * cfg.num_streams()], (batch, cfg.num_streams(), 1), dev)?;
    for i in 0..warmup + steps {
        let keep = i >= warmup;
        sync(dev)?;
        let start = Instant::now();
        let mut last = start;
        let mut marks = Vec::with_capacity(nl);
        let out = model.temporal().step(&tokens, &mut state, &mut |_, x| {
            if !matches!(x.device(), Device::Cpu) {
                x.device().synchronize()?;
            }
            let now = Instant::now();
            marks.push(now.duration_since(last).as_secs_f64() * 1e3);
            last = now;
            Ok(())
        })?;
        sync(dev)?;
        let total = start.elapsed().as_secs_f64() * 1e3;
        if keep {
            let layers: f64 = marks.iter().sum();
            for (l, m) in marks.into_iter().enumerate() {
                layer_ms[l].push(m);
            }
            embed_head_ms.push(total - layers);
        }
        let mut ds = TransformerState::default();
        let prev = Tensor::from_vec(vec![1i64; batch], (batch, 1), dev)?;
        for (k, times) in dep_ms.iter_mut().enumerate() {
            let t = Instant::now();
            let l = model.depformer().step(k, &out.out, &prev, &mut ds)?;
            let _ = l.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if keep {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let layer_med: Vec<f64> = layer_ms.iter().map(|v| round3(median(v))).collect();
    let dep_med: Vec<f64> = dep_ms.iter().map(|v| round3(median(v))).collect();
    let weight_bytes = model.streamed_weight_bytes();
    let res = serde_json::json!({
        "step_ms_median": round3(median(&step_ms)),
        "step_ms_p99": round3(percentile(&step_ms, 0.99)),
        "temporal_ms_median": round3(median(&temporal_ms)),
        "depformer_ms_median": round3(median(&depformer_ms)),
        "weight_gb": weight_bytes as f64 / 1e9,
        "weights": model.weight_format().name(),
        "lm_weights_total_gb": model.weight_bytes() as f64 / 1e9,
        "host_rss_gb": crate::bench::host_rss_gb(),
        "weight_bandwidth_tb_s": round3(weight_bytes as f64 / (median(&step_ms) * 1e-3) / 1e12),
        "kv_cache": kv_name,
        "kv_cache_gb": cache_bytes as f64 / 1e9,
        "context_fill": context_fill,
        "device_memory_used_gb": memory.map(|m| m.0 as f64 / 1e9),
        "temporal_layer_ms_median": layer_med,
        "temporal_embed_and_heads_ms_median": round3(median(&embed_head_ms)),
        "depformer_step_ms_median": dep_med,
        "depformer_total_ms": round3(dep_med.iter().sum()),
        "temporal_layers": nl,
        "depformer_layers": cfg.depformer_num_layers,
        "dim": cfg.dim,
        "depformer_dim": cfg.depformer_dim,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "dtype": dtype_name,
        "device": device_name,
        "threads": candle_core::utils::get_num_threads(),
    });
    let mut res = res;
    crate::stats::round_floats(&mut res);
    println!("{res}");
    Ok(())
}

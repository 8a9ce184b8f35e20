//! `moshi-rs verify …`: parity checks with a table, exit status non-zero on any failure.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use moshi_engine::verify::model::{LayerFault, Tolerances};
use moshi_engine::verify::{first_failure, table, Check};

use crate::model::{DeviceArg, DtypeArg};
use crate::sources::MoshiSource;

#[derive(Debug, Subcommand)]
pub enum VerifyCommand {
    /// Every committed reference trace (golden/): Mimi stages, LM logits and tokens, the whole
    /// pipeline, recomputed on the CPU in f32 against the reference's tolerances.
    Golden {
        /// The golden/ folder (default: ./golden, else the one this binary was built from).
        #[arg(long)]
        golden: Option<PathBuf>,
    },
    /// Every primitive the engine uses (matmul, linear, conv, transposed conv, activations,
    /// softmax, norms, RoPE, embedding, argmax, reductions, broadcasting, cat/narrow, dtype
    /// conversion, in-place KV writes) on --device against the CPU in f32, contiguous and not, in
    /// f32 and bf16.
    Ops {
        /// The device under test (cuda and metal need a build with that feature).
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        /// Perturb one op's device result (OP, OP:f32 or OP:bf16) to see the check catch it.
        #[arg(long)]
        inject_fault: Option<String>,
    },
    /// The same input through the model on --device/--dtype and on the CPU in f32: every Mimi
    /// stage, every temporal layer, the heads, greedy agreement; names the first stage or layer
    /// whose error leaves its tolerance. Loads the model twice (once on the CPU in f32).
    Model {
        #[command(flatten)]
        source: MoshiSource,
        /// The device under test (cuda and metal need a build with that feature).
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        /// The LM's dtype on the device under test (Mimi runs in f32).
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
        /// 80 ms frames of the test signal.
        #[arg(long, default_value_t = 8)]
        frames: usize,
        /// Fault injection, to see the check catch one: scale this temporal layer's output on
        /// the device side by 1 + --fault-scale.
        #[arg(long)]
        inject_fault_layer: Option<usize>,
        /// The relative size of the injected fault.
        #[arg(long, default_value_t = 1e-2)]
        fault_scale: f64,
        /// KV cache kinds to stream the LM with (comma-separated), each compared with the CPU.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "model")]
        kv_cache: Vec<crate::model::KvCacheArg>,
        /// Also the `lm q8` group: the same weights quantized to 8 bits at load on --device in
        /// --dtype, every temporal layer and head against the CPU in f32, greedy agreement
        /// beside the --dtype path's (skipped for a checkpoint that is 8-bit already).
        #[arg(long, value_enum, default_value = "on")]
        q8: crate::model::OnOff,
    },
    /// A reference run recorded by tools/golden/record_trace.py, recomputed on --device/--dtype
    /// teacher-forced on its tokens: every Mimi stage, every temporal layer, the text logits,
    /// greedy agreement; a failing layer is re-run op by op against the CPU to name the op.
    Trace {
        /// The trace file (safetensors, from record_trace.py).
        file: PathBuf,
        #[command(flatten)]
        source: MoshiSource,
        /// The device under test (cuda and metal need a build with that feature).
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        /// The LM's dtype on the device under test (Mimi runs in f32).
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
        /// Perturb one op group of one temporal layer on the device side: LAYER:OP[:SCALE]
        /// (OP: norm1, self_attn, residual_1, norm2, ffn, residual_2; scale default 0.01).
        #[arg(long)]
        inject_fault: Option<String>,
    },
}

fn golden_dir(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p);
    }
    let here = PathBuf::from("golden");
    if here.join("moshi_tiny").is_dir() {
        return Ok(here);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden");
    if built.join("moshi_tiny").is_dir() {
        return Ok(built);
    }
    bail!("no golden/ folder here or at {}; pass --golden DIR (the repository's golden/)", built.display())
}

/// Print the table and fail when any check failed, naming the first.
pub fn report(what: &str, checks: &[Check]) -> anyhow::Result<()> {
    print!("{}", table(checks));
    let failed = checks.iter().filter(|c| !c.ok).count();
    match first_failure(checks) {
        None => {
            println!("{what}: all {} checks passed", checks.len());
            Ok(())
        }
        Some(c) => bail!("{what}: {failed} of {} checks failed; the first is `{}` / `{}`", checks.len(), c.group, c.name),
    }
}

pub fn run(cmd: VerifyCommand) -> anyhow::Result<()> {
    match cmd {
        VerifyCommand::Trace { file, source, device, dtype, inject_fault } => {
            use moshi_engine::verify::trace;
            let fault = inject_fault.as_deref().map(str::parse::<trace::OpFault>).transpose()?;
            let t = trace::Trace::load(&file)?;
            let (dev, dt) = (crate::model::device(device)?, crate::model::dtype(dtype));
            let dut = source.load(dt, &dev)?;
            eprintln!("model: {}; {} {} against the trace {}", dut.identity, crate::model::cli_name(&device), crate::model::cli_name(&dtype), file.display());
            let mut cpu_reference = || -> moshi_engine::Result<moshi_engine::conversation::Moshi> {
                source.load(candle_core::DType::F32, &candle_core::Device::Cpu).map(|l| l.moshi).map_err(|e| moshi_engine::EngineError::InvalidInput(format!("loading the CPU f32 copy: {e:#}")))
            };
            let (checks, diag) = trace::run(&t, &dut.moshi, &mut cpu_reference, fault.as_ref())?;
            println!("{}", diag.verdict);
            report("verify trace", &checks)
        }
        VerifyCommand::Golden { golden } => {
            let dir = golden_dir(golden)?;
            report("verify golden", &moshi_engine::verify::golden::run(&dir)?)
        }
        VerifyCommand::Ops { device, inject_fault } => {
            let dev = crate::model::device(device)?;
            let fault = inject_fault.as_deref().map(str::parse::<moshi_engine::verify::ops::Fault>).transpose()?;
            report("verify ops", &moshi_engine::verify::ops::run(&dev, fault)?)
        }
        VerifyCommand::Model { source, device, dtype, frames, inject_fault_layer, fault_scale, kv_cache, q8 } => {
            let q8_opts = moshi_engine::weights::LoadOptions::dtype(crate::model::dtype(dtype)).with_weights(moshi_engine::weights::WeightFormat::Q8);
            let kv_cache: Vec<_> = kv_cache.into_iter().map(crate::model::KvCacheArg::kind).collect();
            let (dev, dt) = (crate::model::device(device)?, crate::model::dtype(dtype));
            let cpu = candle_core::Device::Cpu;
            let model = source.model.as_deref();
            let random = match model.and_then(|m| crate::sources::random_personaplex_layers(m, 2)) {
                Some(layers) => Some((layers, true)),
                None => model.and_then(|m| crate::sources::random_layers(m, 2)).map(|l| (l, false)),
            };
            let (reference, dut, q8_dut, identity) = match random {
                // `random[-personaplex]` or `…:LAYERS`: full-size random weights, made once, built twice.
                Some((layers, personaplex)) => {
                    let layers = layers?;
                    let t0 = std::time::Instant::now();
                    let bar = crate::progress::WeightsBar::new("drawing random weights");
                    let cfg = moshi_engine::random_model::random_lm_config(layers, personaplex);
                    let w = moshi_engine::random_model::RandomMoshi::with_config_on(cfg, &dev, &mut |d, t| bar.update(d, t))?;
                    drop(bar);
                    let (r, d) = (w.build(candle_core::DType::F32, &cpu)?, w.build(dt, &dev)?);
                    let q = if q8 == crate::model::OnOff::On { Some(w.build_with(&q8_opts, &dev)?) } else { None };
                    eprintln!("random weights drawn on {dev:?} and built twice in {:.1} s", t0.elapsed().as_secs_f64());
                    let what = if personaplex { " PersonaPlex" } else { "" };
                    (r, d, q, format!("random full-size{what}, {layers} temporal layers"))
                }
                None => {
                    let r = source.load(candle_core::DType::F32, &cpu)?;
                    let d = source.load(dt, &dev)?;
                    let already_q8 = r.moshi.lm.weight_format() == moshi_engine::weights::WeightFormat::Q8;
                    if already_q8 && q8 == crate::model::OnOff::On {
                        eprintln!("the checkpoint is 8-bit already: its CPU reference is its own 8-bit weights, no separate q8 group");
                    }
                    let q = if q8 == crate::model::OnOff::On && !already_q8 { Some(source.load_with(&q8_opts, &dev)?.moshi) } else { None };
                    (r.moshi, d.moshi, q, r.identity)
                }
            };
            eprintln!("model: {identity}; {} {} against cpu f32, {frames} frames", crate::model::cli_name(&device), crate::model::cli_name(&dtype));
            let fault = inject_fault_layer.map(|layer| LayerFault { layer, scale: fault_scale });
            let mut checks = moshi_engine::verify::model::run(&reference, &dut, frames, Tolerances::for_dtype(dt), fault, &kv_cache)?;
            if let Some(q) = &q8_dut {
                checks.extend(moshi_engine::verify::model::run_q8(&reference, q, frames, Tolerances::q8())?);
                let agree = |g: &str, n: &str| checks.iter().find(|c| c.group == g && c.name == n).map(|c| 100.0 * (1.0 - c.max_rel));
                for (what, a, b) in [
                    ("text", agree("lm temporal", "greedy text (agreement)"), agree("lm q8", "greedy text (agreement)")),
                    ("audio", agree("lm depformer", "greedy audio (agreement)"), agree("lm q8", "greedy audio (agreement)")),
                ] {
                    if let (Some(a), Some(b)) = (a, b) {
                        eprintln!("greedy {what} agreement with the CPU f32 path over {frames} frames: {} {a:.1}%, q8 {b:.1}% ({:+.1} points)", crate::model::cli_name(&dtype), b - a);
                    }
                }
            }
            report("verify model", &checks)
        }
    }
}

//! `moshi-rs quantize IN OUT`: an LM checkpoint as an 8-bit GGUF in Kyutai's q8 layout
//! (`moshi_engine::gguf::quantize_checkpoint`), checked to load as a Moshi LM first.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The LM checkpoint (safetensors, Kyutai's PyTorch or Candle layout).
    pub input: PathBuf,
    /// The GGUF file to write (its name must end in .gguf, as Kyutai's loader and ours decide by it).
    pub output: PathBuf,
    /// The LM config (Kyutai's config.json) the checkpoint is checked against; the 7B's by default.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    if !args.input.is_file() {
        bail!("{}: no such file", args.input.display());
    }
    if !moshi_engine::gguf::is_gguf_path(&args.output) {
        bail!("{}: the output's name must end in .gguf", args.output.display());
    }
    if moshi_engine::gguf::is_gguf_path(&args.input) {
        bail!("{}: already a GGUF checkpoint", args.input.display());
    }
    if args.output.exists() && std::fs::canonicalize(&args.output)? == std::fs::canonicalize(&args.input)? {
        bail!("the output is the input");
    }
    let cfg = match &args.config {
        Some(p) => moshi_engine::lm::LmConfig::from_json_file(p)?,
        None => moshi_engine::lm::LmConfig::default(),
    };
    // Names and shapes first, from the header: a wrong file fails here, before any work.
    let header = moshi_engine::weights::checkpoint_header(&args.input)?;
    moshi_engine::lm::check_checkpoint(&cfg, &header).with_context(|| format!("checking {}", args.input.display()))?;
    let t0 = std::time::Instant::now();
    let report = moshi_engine::gguf::quantize_checkpoint(std::slice::from_ref(&args.input), &args.output)
        .with_context(|| format!("quantizing {}", args.input.display()))?;
    eprintln!(
        "{} tensors ({} in Q8_0) written to {} in {:.1} s: {:.2} GB from {:.2} GB",
        report.tensors,
        report.q8_tensors,
        args.output.display(),
        t0.elapsed().as_secs_f64(),
        report.output_bytes as f64 / 1e9,
        report.input_bytes as f64 / 1e9
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

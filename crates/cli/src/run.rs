//! `moshi-rs run`: an audio file in, Moshi's spoken reply out, streamed frame by frame exactly as a
//! live conversation would be (Mimi encode → LM step → Mimi decode), with trailing silence so
//! that Moshi can answer; the transcript on stdout, a JSON summary beside the output.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use moshi_engine::audio;
use moshi_engine::conversation::{Moshi, StageTimes};
use moshi_engine::text::TextStream;
use sha2::{Digest, Sha256};

use crate::model::{DeviceArg, DtypeArg, SamplingArgs};
use crate::sources::MoshiSource;
use crate::stats::{percentile, round3};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The user's audio (wav, flac, mp3, ogg/vorbis; any rate and channel count).
    #[arg(long)]
    pub input: PathBuf,
    /// Moshi's reply, 24 kHz mono 32-bit float wav.
    #[arg(long)]
    pub output: PathBuf,
    /// The JSON summary (default: the output path with `.json`).
    #[arg(long)]
    pub summary: Option<PathBuf>,
    #[command(flatten)]
    pub source: MoshiSource,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop after this many frames (input and silence together).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Seconds of silence fed after the input, so that Moshi can answer.
    #[arg(long, default_value_t = 2.0)]
    pub silence: f64,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// How the LM's KV cache stores keys and values: the model's dtype, or 8-bit (half the
    /// memory of bf16; its accuracy is in docs/benchmarks.md).
    #[arg(long, value_enum, default_value = "model")]
    pub kv_cache: crate::model::KvCacheArg,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (device, dtype) = (crate::model::device(args.device)?, crate::model::dtype(args.dtype));
    let mut loaded = args.source.load(dtype, &device)?;
    loaded.moshi.lm.set_kv_cache(args.kv_cache.kind());
    let moshi: &Moshi = &loaded.moshi;
    eprintln!("model: {}", loaded.identity);

    let samples = audio::load_mono_24k(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    if samples.is_empty() {
        anyhow::bail!("{}: no audio samples", args.input.display());
    }
    let n = moshi.frame_size();
    let silence_frames = (args.silence.max(0.0) * audio::MIMI_SAMPLE_RATE as f64 / n as f64).ceil() as usize;
    let mut frames: Vec<Vec<f32>> = audio::frames(&samples, n).collect();
    let input_frames = frames.len();
    frames.extend(std::iter::repeat_n(vec![0f32; n], silence_frames));
    if let Some(m) = args.max_steps {
        frames.truncate(m);
    }

    let gen = args.sampling.gen_config();
    let mut conv = moshi.conversation(gen, args.seed, true)?;
    let mut transcript = TextStream::moshi(&moshi.tokenizer);
    let mut text = String::new();
    let mut pcm_out: Vec<f32> = Vec::new();
    let mut times: Vec<StageTimes> = Vec::new();
    let bar = ProgressBar::new(frames.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} frames {elapsed} ({per_sec}) {msg}")?);
    if frames.len() < 50 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let t0 = Instant::now();
    let mut stdout = std::io::stdout();
    for (i, frame) in frames.iter().enumerate() {
        let out = moshi.step(&mut conv, frame).with_context(|| format!("frame {i}"))?;
        times.push(out.times);
        if let Some(pcm) = out.pcm {
            pcm_out.extend(pcm);
        }
        if let Some(piece) = out.text.and_then(|t| transcript.push(t[0])) {
            text.push_str(&piece);
            bar.suspend(|| {
                print!("{piece}");
                let _ = stdout.flush();
            });
        }
        bar.inc(1);
    }
    if let Some(rest) = transcript.finish() {
        text.push_str(&rest);
        print!("{rest}");
    }
    println!();
    bar.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();

    audio::write_wav(&args.output, &pcm_out, audio::MIMI_SAMPLE_RATE).with_context(|| format!("writing {}", args.output.display()))?;
    let mut h = Sha256::new();
    for s in &pcm_out {
        h.update(s.to_le_bytes());
    }
    let digest = format!("{:x}", h.finalize());
    let stage = |f: fn(&StageTimes) -> f64| {
        let v: Vec<f64> = times.iter().map(f).collect();
        serde_json::json!({"median": round3(percentile(&v, 0.5)), "p90": round3(percentile(&v, 0.9)), "p99": round3(percentile(&v, 0.99))})
    };
    let audio_s = frames.len() as f64 * n as f64 / audio::MIMI_SAMPLE_RATE as f64;
    let summary = serde_json::json!({
        "input": args.input.display().to_string(),
        "output": args.output.display().to_string(),
        "model": loaded.identity,
        "device": format!("{device:?}"),
        "dtype": format!("{dtype:?}"),
        "seed": args.seed,
        "sampling": if args.sampling.greedy { serde_json::json!("greedy") } else { serde_json::to_value(gen)? },
        "input_frames": input_frames,
        "silence_frames": silence_frames,
        "frames": frames.len(),
        "lm_steps": conv.lm_steps(),
        "output_samples": pcm_out.len(),
        "ms_per_frame": {
            "encode": stage(|t| t.encode_ms),
            "lm": stage(|t| t.lm_ms),
            "decode": stage(|t| t.decode_ms),
            "total": stage(|t| t.total_ms()),
        },
        "real_time_factor": round3(wall / audio_s),
        "transcript": text,
        "output_pcm_sha256": digest,
    });
    let summary_path = args.summary.clone().unwrap_or_else(|| args.output.with_extension("json"));
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("writing {}", summary_path.display()))?;
    eprintln!(
        "{} frames in {:.2} s (real-time factor {:.2}) → {} ({} samples), summary {}; pcm sha256 {digest}",
        frames.len(),
        wall,
        wall / audio_s,
        args.output.display(),
        pcm_out.len(),
        summary_path.display()
    );
    Ok(())
}

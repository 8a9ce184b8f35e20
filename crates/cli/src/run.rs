//! `moshi-rs run`: an audio file in, Moshi's spoken reply out, streamed frame by frame exactly as a
//! live conversation would be (Mimi encode → LM step → Mimi decode), with trailing silence so
//! that Moshi can answer; the transcript on stdout, a JSON summary beside the output.
//!
//! Everything that can be checked before the model loads is checked first (the paths, the
//! input's audio, the flags), so that a typo fails in a second rather than after minutes of
//! loading a 7B.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use moshi_engine::audio;
use moshi_engine::conversation::{Moshi, StageTimes};
use moshi_engine::text::TextStream;
use sha2::{Digest, Sha256};

use crate::paths::{absolute, check_in_out, check_writable};
use crate::model::{cli_name, SamplingArgs};
use crate::sources::MoshiSource;
use crate::stats::{percentile, round3};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The user's audio (wav, flac, mp3, ogg/vorbis, ogg/opus; any rate and channel count), as a
    /// positional argument (Kyutai's `run_inference.py infile outfile`) or with --input.
    #[arg(value_name = "INFILE", required_unless_present = "input", conflicts_with = "input")]
    pub infile: Option<PathBuf>,
    /// Moshi's reply (wav), as a positional argument or with --output.
    #[arg(value_name = "OUTFILE", required_unless_present = "output", conflicts_with = "output")]
    pub outfile: Option<PathBuf>,
    /// The user's audio (the same as INFILE).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Moshi's reply, 24 kHz mono wav: 32-bit float, or 16-bit integer with --pcm16.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write the reply as 16-bit integer PCM (clipped to [-1, 1]) instead of 32-bit float.
    #[arg(long)]
    pub pcm16: bool,
    /// The JSON summary (default: the output path with `.json`).
    #[arg(long)]
    pub summary: Option<PathBuf>,
    #[command(flatten)]
    pub source: MoshiSource,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Seed of the sampling noise: the same seed gives the same reply, bit for bit.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop after this many frames (input and silence together; at least 1).
    #[arg(long, value_parser = crate::values::positive, allow_negative_numbers = true)]
    pub max_steps: Option<usize>,
    /// Seconds of silence fed after the input, so that Moshi can answer (≥ 0).
    #[arg(long, default_value_t = 2.0, value_parser = crate::values::seconds, allow_negative_numbers = true)]
    pub silence: f64,
    #[command(flatten)]
    pub runtime: crate::model::RuntimeArgs,
    #[command(flatten)]
    pub persona: crate::persona::PersonaArgs,
}

/// The files of one run, checked before anything heavy happens.
struct Paths {
    input: PathBuf,
    output: PathBuf,
    summary: PathBuf,
}

impl RunArgs {
    fn paths(&self) -> anyhow::Result<Paths> {
        let input = self.infile.clone().or_else(|| self.input.clone()).context("the input audio: INFILE or --input")?;
        let output = self.outfile.clone().or_else(|| self.output.clone()).context("the reply's path: OUTFILE or --output")?;
        let summary = self.summary.clone().unwrap_or_else(|| output.with_extension("json"));
        check_in_out(&input, &output)?;
        let (i, o, s) = (absolute(&input), absolute(&output), absolute(&summary));
        if s == i || s == o {
            bail!("the summary {} would overwrite the {}; pass another --summary", summary.display(), if s == i { "input" } else { "reply" });
        }
        check_writable(&summary, "summary")?;
        Ok(Paths { input, output, summary })
    }
}

/// The transcript as it comes: on stdout, beside the progress bar on stderr. When both are the
/// same terminal, the line being spoken is the bar's first line and finished lines scroll above
/// it; otherwise pieces go straight to stdout. A closed stdout (`| head`) stops the printing,
/// not the run: the reply and the summary are still written.
struct Transcript {
    bar: ProgressBar,
    inline: bool,
    line: String,
    stdout: Option<std::io::Stdout>,
}

impl Transcript {
    const WIDTH: usize = 80;

    fn new(frames: usize) -> anyhow::Result<Self> {
        let bar = ProgressBar::new(frames as u64);
        let visible = frames >= 50 && std::io::stderr().is_terminal();
        let inline = visible && std::io::stdout().is_terminal();
        let template = if inline { "{wide_msg}\n{bar:30} {pos}/{len} frames {elapsed} ({per_sec})" } else { "{bar:30} {pos}/{len} frames {elapsed} ({per_sec})" };
        bar.set_style(ProgressStyle::with_template(template)?);
        if !visible {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        Ok(Self { bar, inline, line: String::new(), stdout: Some(std::io::stdout()) })
    }

    fn print(&mut self, text: &str) {
        if let Some(out) = &mut self.stdout {
            if write!(out, "{text}").and_then(|_| out.flush()).is_err() {
                self.stdout = None; // broken pipe or closed: keep going without a transcript
            }
        }
    }

    fn push(&mut self, piece: &str) {
        if !self.inline {
            self.print(piece);
            return;
        }
        if self.line.chars().count() + piece.chars().count() > Self::WIDTH && piece.starts_with(' ') {
            let done = std::mem::take(&mut self.line) + "\n";
            let bar = self.bar.clone(); // a handle to the same bar
            bar.suspend(|| self.print(&done));
            self.line = piece.trim_start().to_string();
        } else {
            self.line.push_str(piece);
        }
        self.bar.set_message(self.line.clone());
    }

    fn tick(&self) {
        self.bar.inc(1);
    }

    fn finish(mut self) {
        self.bar.finish_and_clear();
        let rest = std::mem::take(&mut self.line) + "\n";
        self.print(&rest);
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let launch = Instant::now();
    let paths = args.paths()?;
    args.source.precheck()?;
    let prompt_spec = args.persona.spec()?;
    let device = crate::model::device(args.runtime.device)?;
    let device_s = launch.elapsed().as_secs_f64();

    tracing::info!(input = %paths.input.display(), "reading the input");
    let samples = audio::load_mono_24k(&paths.input).with_context(|| format!("reading {}", paths.input.display()))?;
    if samples.is_empty() {
        bail!("{}: no audio samples", paths.input.display());
    }

    let t_load = Instant::now();
    let loaded = args.source.load_with(&args.runtime.load_options(), &device)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let moshi: &Moshi = &loaded.moshi;
    eprintln!("model: {}", loaded.identity);

    let n = moshi.frame_size();
    let silence_frames = (args.silence * audio::MIMI_SAMPLE_RATE as f64 / n as f64).ceil() as usize;
    let mut frames: Vec<Vec<f32>> = audio::frames(&samples, n).collect();
    let input_frames = frames.len();
    frames.extend(std::iter::repeat_n(vec![0f32; n], silence_frames));
    if let Some(m) = args.max_steps {
        frames.truncate(m);
    }

    let gen = args.sampling.gen_config(moshi.lm.config().default_sampling());
    let prompt = match &prompt_spec {
        Some(spec) => Some(moshi.prepare_prompt(spec).context("the PersonaPlex prompt (--text-prompt, --voice-prompt)")?),
        None => None,
    };
    // PersonaPlex's offline pipeline gives every frame once (Kyutai's gives the first twice).
    let mut conv = moshi.conversation(gen, args.seed, prompt.is_none(), &args.runtime.run_options())?;
    let mut transcript = TextStream::moshi(&moshi.tokenizer);
    let mut text = String::new();
    let mut pcm_out: Vec<f32> = Vec::new();
    let mut times: Vec<StageTimes> = Vec::new();
    let mut out = Transcript::new(frames.len())?;
    let t0 = Instant::now();
    let mut first_frame_s = None;
    let mut prompt_summary = None;
    if let Some(p) = &prompt {
        // The prompt's frames (audio in ignored); the last gives the prompt's last frame (PAD,
        // silence), which the reference's offline wav starts with.
        moshi.start_prompt(&mut conv, 0, p)?;
        let tp = Instant::now();
        // Every prompt frame but the last in one forward (they sample nothing).
        let prefilled = moshi.prefill_prompt(&mut conv).context("prefilling the prompt")?;
        let mut prompt_frames = prefilled;
        while conv.prompting(0) {
            let step = moshi.step(&mut conv, &vec![0f32; n]).with_context(|| format!("prompt frame {prompt_frames}"))?;
            prompt_frames += 1;
            pcm_out.extend(step.pcm.unwrap_or_default());
        }
        let spec = prompt_spec.as_ref().expect("a prompt comes from a spec");
        prompt_summary = Some(serde_json::json!({
            "text": spec.text,
            "voice": match &spec.voice {
                moshi_engine::persona::VoiceSource::File(p) => serde_json::json!(p.display().to_string()),
                _ => serde_json::Value::Null,
            },
            "text_tokens": p.text.len(),
            "frames": prompt_frames,
            "prefilled_frames": prefilled,
            "seconds": round3(tp.elapsed().as_secs_f64()),
        }));
    }
    for (i, frame) in frames.iter().enumerate() {
        let step = moshi.step(&mut conv, frame).with_context(|| format!("frame {i}"))?;
        first_frame_s.get_or_insert_with(|| launch.elapsed().as_secs_f64());
        times.push(step.times);
        if let Some(pcm) = step.pcm {
            pcm_out.extend(pcm);
        }
        if let Some(piece) = step.text.and_then(|t| transcript.push(t[0])) {
            text.push_str(&piece);
            out.push(&piece);
        }
        out.tick();
    }
    if let Some(rest) = transcript.finish() {
        text.push_str(&rest);
        out.push(&rest);
    }
    out.finish();
    let wall = t0.elapsed().as_secs_f64();
    if prompt.is_some() {
        // Aligned as the reference's offline wav: one frame per input frame, the first being the
        // prompt's last (its outputs come one frame later than moshi-rs computes them), trimmed
        // to the input's length (with the silence added).
        pcm_out.truncate((samples.len() + silence_frames * n).min(frames.len() * n));
    }

    let write = if args.pcm16 { audio::write_wav_i16 } else { audio::write_wav };
    write(&paths.output, &pcm_out, audio::MIMI_SAMPLE_RATE).with_context(|| format!("writing {}", paths.output.display()))?;
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
    let mut summary = serde_json::json!({
        "input": paths.input.display().to_string(),
        "output": paths.output.display().to_string(),
        "output_format": if args.pcm16 { "pcm16" } else { "f32" },
        "model": loaded.identity,
        "device": cli_name(&args.runtime.device),
        "dtype": cli_name(&args.runtime.dtype),
        "weights": loaded.moshi.lm.weight_format().name(),
        "kv_cache": cli_name(&args.runtime.kv_cache),
        "sampler": cli_name(&args.runtime.sampler),
        // From this command's start: the device made ready, the model read and placed on it,
        // the first frame stepped (its output is the first the caller gets).
        "startup_s": {"device": round3(device_s), "load": round3(load_s), "first_frame": first_frame_s.map(round3)},
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
        "seconds": round3(wall),
        "real_time_factor": round3(wall / audio_s),
        "transcript": text,
        // Of the f32 samples before any 16-bit conversion: the same for both output formats.
        "output_pcm_sha256": digest,
    });
    if let Some(p) = prompt_summary {
        summary["prompt"] = p;
    }
    std::fs::write(&paths.summary, serde_json::to_string_pretty(&summary)? + "\n").with_context(|| format!("writing {}", paths.summary.display()))?;
    eprintln!(
        "{} frames in {:.2} s (real-time factor {:.2}) → {} ({} samples), summary {}; pcm sha256 {digest}",
        frames.len(),
        wall,
        wall / audio_s,
        paths.output.display(),
        pcm_out.len(),
        paths.summary.display()
    );
    Ok(())
}

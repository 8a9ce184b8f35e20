//! `moshi-rs codec …`: encode, decode, round trip and benchmark the Mimi codec.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use clap::Subcommand;
use moshi_engine::audio;
use moshi_engine::mimi::stream::{decode_codes, encode_samples, CodesFile};
use moshi_engine::mimi::{DecoderState, EncoderState, Mimi};

use crate::model::ModelArgs;
use crate::stats::percentile;

#[derive(Debug, Subcommand)]
pub enum CodecCommand {
    /// Audio file (wav, flac, mp3, ogg/vorbis, ogg/opus; any rate, any channels) → codes (safetensors).
    Encode {
        /// The audio to encode.
        input: PathBuf,
        /// The codes file to write (safetensors).
        output: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Codes (safetensors from `encode`) → 24 kHz mono wav.
    Decode {
        /// A codes file written by `codec encode`.
        input: PathBuf,
        /// The 24 kHz mono 32-bit float wav to write.
        output: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Audio file → codes → 24 kHz mono wav, streaming frame by frame as a conversation would.
    Roundtrip {
        /// The audio to encode.
        input: PathBuf,
        /// The decoded 24 kHz mono 32-bit float wav to write.
        output: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Time streaming encode + decode of one 80 ms frame; prints JSON (medians in ms).
    Bench {
        /// Frames timed after the warm-up (at least 1).
        #[arg(long, default_value_t = 50, value_parser = crate::values::positive, allow_negative_numbers = true)]
        frames: usize,
        /// Frames run before timing starts.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Streams batched together (at least 1).
        #[arg(long, default_value_t = 1, value_parser = crate::values::positive, allow_negative_numbers = true)]
        batch: usize,
        #[command(flatten)]
        model: ModelArgs,
    },
}

pub fn run(cmd: CodecCommand) -> anyhow::Result<()> {
    // Paths first: a typo fails before the model loads.
    match &cmd {
        CodecCommand::Encode { input, output, .. } | CodecCommand::Decode { input, output, .. } | CodecCommand::Roundtrip { input, output, .. } => {
            crate::paths::check_in_out(input, output)?
        }
        CodecCommand::Bench { .. } => {}
    }
    match cmd {
        CodecCommand::Encode { input, output, model } => {
            let mimi = model.load_mimi()?;
            let (file, secs) = encode_file(&mimi, &input)?;
            file.save(&output)?;
            eprintln!(
                "{}: {} frames × {} codebooks in {:.2} s → {}",
                input.display(),
                file.codes.dim(2)?,
                file.codes.dim(1)?,
                secs,
                output.display()
            );
        }
        CodecCommand::Decode { input, output, model } => {
            let mimi = model.load_mimi()?;
            let file = CodesFile::load(&input)?;
            check_codes_file(&mimi, &file, &input)?;
            let t0 = Instant::now();
            let mut pcm = decode_codes(&mimi, &file.codes.to_device(mimi.device())?, |_, _| {})?;
            pcm.truncate(file.num_samples);
            audio::write_wav(&output, &pcm, audio::MIMI_SAMPLE_RATE)?;
            eprintln!("{}: {} samples in {:.2} s → {}", input.display(), pcm.len(), t0.elapsed().as_secs_f64(), output.display());
        }
        CodecCommand::Roundtrip { input, output, model } => {
            let mimi = model.load_mimi()?;
            let (file, enc_s) = encode_file(&mimi, &input)?;
            let t0 = Instant::now();
            let mut pcm = decode_codes(&mimi, &file.codes, |_, _| {})?;
            pcm.truncate(file.num_samples);
            let dec_s = t0.elapsed().as_secs_f64();
            audio::write_wav(&output, &pcm, audio::MIMI_SAMPLE_RATE)?;
            let frames = file.codes.dim(2)?;
            let audio_s = file.num_samples as f64 / audio::MIMI_SAMPLE_RATE as f64;
            eprintln!(
                "{}: {:.2} s of audio, {frames} frames, encode {:.1} ms/frame, decode {:.1} ms/frame, \
                 real-time factor {:.2} → {}",
                input.display(),
                audio_s,
                enc_s * 1e3 / frames as f64,
                dec_s * 1e3 / frames as f64,
                (enc_s + dec_s) / audio_s,
                output.display()
            );
        }
        CodecCommand::Bench { frames, warmup, batch, model } => bench(&model, frames, warmup, batch)?,
    }
    Ok(())
}

fn encode_file(mimi: &Mimi, input: &Path) -> anyhow::Result<(CodesFile, f64)> {
    let samples = audio::load_mono_24k(input)?;
    let t0 = Instant::now();
    let codes = encode_samples(mimi, &samples, |_, _| {})?;
    let secs = t0.elapsed().as_secs_f64();
    let cfg = mimi.config();
    Ok((CodesFile { codes, num_samples: samples.len(), sample_rate: cfg.sample_rate, frame_rate: cfg.frame_rate }, secs))
}

fn check_codes_file(mimi: &Mimi, file: &CodesFile, path: &Path) -> anyhow::Result<()> {
    let cfg = mimi.config();
    if file.sample_rate != cfg.sample_rate || file.frame_rate != cfg.frame_rate {
        bail!(
            "{}: codes are for {} Hz / {} fps, the model is {} Hz / {} fps",
            path.display(),
            file.sample_rate,
            file.frame_rate,
            cfg.sample_rate,
            cfg.frame_rate
        );
    }
    let k = file.codes.dim(1)?;
    if k > cfg.quantizer.n_q {
        bail!("{}: {k} codebooks, the model has {}", path.display(), cfg.quantizer.n_q);
    }
    Ok(())
}

fn bench(model: &ModelArgs, frames: usize, warmup: usize, batch: usize) -> anyhow::Result<()> {
    let mimi = &model.load_mimi()?;
    let dev = mimi.device().clone();
    let fs = mimi.frame_size();
    let (mut es, mut ds) = (EncoderState::default(), DecoderState::default());
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    for i in 0..warmup + frames {
        let pcm = (Tensor::randn(0f32, 0.1, (batch, 1, fs), &dev)?).to_dtype(DType::F32)?;
        dev.synchronize()?;
        let t0 = Instant::now();
        let codes = mimi.encode_step(&pcm, &mut es).context("encode")?;
        dev.synchronize()?;
        let t1 = Instant::now();
        let out = mimi.decode_step(&codes, &mut ds).context("decode")?;
        dev.synchronize()?;
        let t2 = Instant::now();
        drop(out);
        if i >= warmup {
            enc.push((t1 - t0).as_secs_f64() * 1e3);
            dec.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    let mut total: Vec<f64> = enc.iter().zip(&dec).map(|(a, b)| a + b).collect();
    for v in [&mut enc, &mut dec, &mut total] {
        v.sort_by(f64::total_cmp);
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let report = serde_json::json!({
        "impl": "moshi-rs",
        "model": model.model,
        "device": crate::model::cli_name(&model.device),
        "dtype": crate::model::cli_name(&model.dtype),
        "batch": batch,
        "frames": frames,
        "rayon_threads": threads,
        "encode_ms_median": percentile(&enc, 0.5),
        "decode_ms_median": percentile(&dec, 0.5),
        "total_ms_median": percentile(&total, 0.5),
        "total_ms_p90": percentile(&total, 0.9),
    });
    let mut report = report;
    crate::stats::round_floats(&mut report);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

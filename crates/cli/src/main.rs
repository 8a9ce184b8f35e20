//! `moshi-rs`: the command line over the moshi-engine library. Thin by design: argument parsing,
//! model resolution and printing live here; everything numerical lives in the engine.

mod bench;
mod codec;
mod hub;
mod lm;
mod lm_linear;
mod progress;
mod quantize;
mod loadtest;
mod model;
mod paths;
mod persona;
mod run;
mod serve;
mod sources;
mod stats;
mod values;
mod verify;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "moshi-rs", version, about = "Kyutai's Moshi on Candle, proven against the reference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Audio file in → Moshi's spoken reply out (wav), transcript on stdout, JSON summary.
    Run(run::RunArgs),
    /// Real-time voice chat: Kyutai's WebSocket protocol at /api/chat, our web page at /,
    /// conversations batched on one model; /metrics and /health.
    Serve(serve::ServeArgs),
    /// N conversations for M seconds over loopback against a server (in-process, or --url on this
    /// machine): frames late, step-time percentiles, as JSON.
    Loadtest(loadtest::LoadArgs),
    /// Time a whole Moshi frame by frame (B conversations batched): per-stage medians, p90, p99,
    /// real-time factor, a plot of frame times; JSON on the last line.
    Bench(bench::BenchArgs),
    /// The Mimi codec: audio ⇄ codes.
    Codec {
        #[command(subcommand)]
        command: codec::CodecCommand,
    },
    /// Parity checks: reference traces, primitive ops on a device, a model on a device.
    Verify {
        #[command(subcommand)]
        command: verify::VerifyCommand,
    },
    /// The Moshi language model: benchmark, checkpoint check.
    Lm {
        #[command(subcommand)]
        command: lm::LmCommand,
    },
    /// Write an LM checkpoint (safetensors, Kyutai's PyTorch or Candle layout) as an 8-bit GGUF
    /// in Kyutai's q8 layout (what kyutai/moshiko-candle-q8 ships, and what --weights q8 makes
    /// at load), for faster starts: IN OUT.gguf. Holds the 8-bit model in memory (≈ 8.2 GB for the 7B).
    Quantize(quantize::QuantizeArgs),
}

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    // Colour only for a person at a terminal (and never with NO_COLOR set): logs piped to a file
    // or another program stay plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,moshi_server=info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Loadtest(args) => loadtest::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Codec { command } => codec::run(command),
        Command::Lm { command } => lm::run(command),
        Command::Verify { command } => verify::run(command),
        Command::Quantize(args) => quantize::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error as a user reads it: the message and its causes, one per line; never a backtrace
/// (anyhow would print one under RUST_BACKTRACE=1 had `main` returned the error).
fn report(e: &anyhow::Error) {
    let mut lines = vec![format!("error: {e}")];
    lines.extend(e.chain().skip(1).map(|c| format!("  caused by: {c}")));
    eprintln!("{}", lines.join("\n"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag and positional argument of every command says what it is in `--help`.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "moshi-rs", &mut missing);
        assert!(missing.is_empty(), "arguments without help text: {missing:#?}");
    }
}

//! `moshi-rs verify …`: parity checks with a table, exit status non-zero on any failure.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use moshi_engine::verify::{first_failure, table, Check};

#[derive(Debug, Subcommand)]
pub enum VerifyCommand {
    /// Every committed reference trace (golden/): Mimi stages, LM logits and tokens, the whole
    /// pipeline, recomputed on the CPU in f32 against the reference's tolerances.
    Golden {
        /// The golden/ folder (default: ./golden, else the one this binary was built from).
        #[arg(long)]
        golden: Option<PathBuf>,
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
        VerifyCommand::Golden { golden } => {
            let dir = golden_dir(golden)?;
            report("verify golden", &moshi_engine::verify::golden::run(&dir)?)
        }
    }
}

//! Input and output paths checked before anything heavy happens (a model load, a decode), so
//! that a typo fails in a second with the path named.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// `p` made absolute without requiring it to exist (its folder must), for comparing paths.
pub fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (parent.canonicalize(), p.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => p.to_path_buf(),
    }
}

/// An existing file to read.
pub fn check_input(p: &Path, what: &str) -> anyhow::Result<()> {
    if !p.exists() {
        bail!("{what} {}: no such file", p.display());
    }
    if !p.is_file() {
        bail!("{what} {}: not a file", p.display());
    }
    Ok(())
}

/// An output file can be written: its folder exists, it is not a folder, and opening it for
/// writing works (a file created by this check is removed again).
pub fn check_writable(p: &Path, what: &str) -> anyhow::Result<()> {
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("{what} {}: the folder {} does not exist", p.display(), parent.display());
    }
    if p.is_dir() {
        bail!("{what} {}: is a folder", p.display());
    }
    let existed = p.exists();
    std::fs::OpenOptions::new().append(true).create(true).open(p).with_context(|| format!("{what} {}: cannot be written", p.display()))?;
    if !existed {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// An input to read and an output to write that must not be the same file.
pub fn check_in_out(input: &Path, output: &Path) -> anyhow::Result<()> {
    check_input(input, "input")?;
    if absolute(input) == absolute(output) {
        bail!("the output {} is the input file: it would be overwritten", output.display());
    }
    check_writable(output, "output")
}

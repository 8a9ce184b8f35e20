//! Hugging Face repositories: the files a repo's `config.json` names (Kyutai's
//! `CheckpointInfo.from_hf_repo`: `moshi_name`, `mimi_name`, `tokenizer_name`,
//! `mimi_config_name`; the released names when the repo has no `config.json`), fetched through
//! the standard cache (`HF_HOME`, `HF_ENDPOINT`, `HF_HUB_OFFLINE=1`, `HF_TOKEN` honoured).
//! Layouts moshi-rs does not read are refused by name before anything is downloaded.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use moshi_engine::model_files::Manifest;

/// What of a repository is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// LM, Mimi, tokenizer and their configs.
    Moshi,
    /// Mimi and its config only (`codec`).
    Mimi,
}

/// A repository's files on the local disk.
#[derive(Debug, Clone)]
pub struct RepoFiles {
    /// The snapshot folder: every name of the manifest is relative to it.
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// A string that looks like a Hugging Face repo id (`owner/name`) rather than a path.
pub fn is_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.')) && !Path::new(s).exists()
}

/// Repositories whose layout moshi-rs does not read, refused by their name before any
/// download: Kyutai's MLX repos (`kyutai/moshiko-mlx-q4` …) and the quantized ones.
pub fn refuse_unsupported(repo: &str) -> anyhow::Result<()> {
    let name = repo.to_ascii_lowercase();
    if name.contains("mlx") {
        bail!("{repo} is an MLX checkpoint (for Apple's MLX framework), which moshi-rs does not read; use kyutai/moshiko-pytorch-bf16 or kyutai/moshiko-candle-bf16 (these run on Macs with --device metal)");
    }
    // Kyutai's 8-bit Candle repositories (a q8 GGUF) are read; other quantized layouts are not.
    if is_candle_q8(&name) {
        return Ok(());
    }
    if ["-q4", "-q8", "gguf", "int8", "int4"].iter().any(|q| name.contains(q)) {
        bail!("{repo} holds quantized weights in a layout moshi-rs does not read; use kyutai/moshiko-candle-q8 (8-bit) or a bf16 repository (e.g. kyutai/moshiko-pytorch-bf16 or kyutai/moshiko-candle-bf16)");
    }
    Ok(())
}

/// `kyutai/moshiko-candle-q8`, `moshika-candle-q8`: Kyutai's q8 GGUF LM (`model.q8.gguf`).
fn is_candle_q8(lower: &str) -> bool {
    lower.contains("candle") && lower.ends_with("-q8")
}

/// The released names a repo without `config.json` has: the 8-bit LM file in Kyutai's q8 repos.
fn released_for(repo: &str) -> Manifest {
    if is_candle_q8(&repo.to_ascii_lowercase()) { Manifest::released_q8() } else { Manifest::released() }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1")
}

fn api() -> anyhow::Result<Api> {
    let cache = hf_hub::Cache::from_env();
    // hf-hub reads the token file of the cache; HF_TOKEN, as Hugging Face's own tools do, wins.
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| cache.token());
    ApiBuilder::from_env().with_progress(true).with_token(token).build().context("starting the Hugging Face client")
}

fn http_status(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::RequestError(inner) => match inner.as_ref() {
            ureq::Error::StatusCode(code) => Some(*code),
            _ => None,
        },
        ApiError::TooManyRetries(inner) => http_status(inner),
        _ => None,
    }
}

fn download_error(e: ApiError, repo: &str, file: &str) -> anyhow::Error {
    match http_status(&e) {
        Some(404) => anyhow::anyhow!("repo {repo} has no file {file} (or there is no repo {repo})"),
        Some(401 | 403) => anyhow::anyhow!(
            "repo {repo} is gated, private or not there ({file}): accept its terms on https://huggingface.co/{repo} and set HF_TOKEN to a token with access"
        ),
        _ => anyhow::anyhow!("downloading {file} from {repo}: {e}"),
    }
}

fn is_cached(repo: &str, file: &str) -> Option<PathBuf> {
    hf_hub::Cache::from_env().model(repo.to_string()).get(file)
}

/// `file` of `repo`: from the cache, else downloaded (with a progress bar).
fn fetch(api: Option<&Api>, repo: &str, file: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = is_cached(repo, file) {
        return Ok(p);
    }
    let Some(api) = api else {
        bail!("HF_HUB_OFFLINE=1 and {file} of {repo} is not in the local Hugging Face cache");
    };
    api.model(repo.to_string()).get(file).map_err(|e| download_error(e, repo, file))
}

/// The manifest of `repo`: its `config.json` when it has one; a repo without one (a 404, or
/// offline with none cached) is a legacy repo with the released names, as the reference reads it.
fn manifest(api: Option<&Api>, repo: &str) -> anyhow::Result<Manifest> {
    if let Some(p) = is_cached(repo, "config.json") {
        return Ok(Manifest::from_config_json(&p)?);
    }
    let Some(api) = api else { return Ok(released_for(repo)) };
    match api.model(repo.to_string()).get("config.json") {
        Ok(p) => Ok(Manifest::from_config_json(&p)?),
        Err(e) if http_status(&e) == Some(404) => Ok(released_for(repo)),
        Err(e) => Err(download_error(e, repo, "config.json")),
    }
}

/// The snapshot folder holding `file`, whose path relative to it is `name`.
fn snapshot_dir(file: &Path, name: &str) -> PathBuf {
    let depth = Path::new(name).components().count();
    let mut dir = file.to_path_buf();
    for _ in 0..depth {
        dir.pop();
    }
    dir
}

/// Fetch what `need` requires of `repo` (downloading unless `HF_HUB_OFFLINE=1`).
pub fn resolve(repo: &str, need: Need) -> anyhow::Result<RepoFiles> {
    refuse_unsupported(repo)?;
    let api = if offline() { None } else { Some(api()?) };
    let manifest = manifest(api.as_ref(), repo)?;
    let mut files: Vec<String> = manifest.mimi_config.iter().cloned().collect();
    files.push(manifest.mimi.clone());
    if need == Need::Moshi {
        files.push(manifest.tokenizer.clone());
        files.push(manifest.lm.clone());
    }
    let mut dir = None;
    for f in &files {
        let p = fetch(api.as_ref(), repo, f)?;
        dir.get_or_insert_with(|| snapshot_dir(&p, f));
    }
    Ok(RepoFiles { dir: dir.expect("at least the Mimi file"), manifest })
}

/// `repo` when every file `need` requires is in the local cache already (no network).
pub fn cached(repo: &str, need: Need) -> Option<RepoFiles> {
    let manifest = match is_cached(repo, "config.json") {
        Some(p) => Manifest::from_config_json(&p).ok()?,
        None => released_for(repo),
    };
    let mut names = vec![manifest.mimi.clone()];
    names.extend(manifest.mimi_config.iter().cloned());
    if need == Need::Moshi {
        names.extend([manifest.tokenizer.clone(), manifest.lm.clone()]);
    }
    let mut dir = None;
    for n in &names {
        let p = is_cached(repo, n)?;
        dir.get_or_insert_with(|| snapshot_dir(&p, n));
    }
    Some(RepoFiles { dir: dir?, manifest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_layouts_are_named() {
        for repo in ["kyutai/moshiko-mlx-q4", "kyutai/moshika-mlx-bf16", "kyutai/moshiko-mlx-q8", "kyutai/moshiko-pytorch-q8"] {
            let e = refuse_unsupported(repo).unwrap_err().to_string();
            assert!(e.starts_with(repo), "{e}");
        }
        for repo in ["kyutai/moshiko-pytorch-bf16", "kyutai/moshiko-candle-bf16", "nvidia/personaplex-7b-v1", "kyutai/moshiko-candle-q8", "kyutai/moshika-candle-q8"] {
            assert!(refuse_unsupported(repo).is_ok(), "{repo}");
        }
    }

    #[test]
    fn q8_repos_without_config_name_the_gguf() {
        assert_eq!(released_for("kyutai/moshiko-candle-q8").lm, "model.q8.gguf");
        assert_eq!(released_for("kyutai/moshiko-candle-bf16").lm, "model.safetensors");
    }

    #[test]
    fn snapshot_dir_strips_the_relative_name() {
        assert_eq!(snapshot_dir(Path::new("/c/snap/abc/sub/m.safetensors"), "sub/m.safetensors"), PathBuf::from("/c/snap/abc"));
        assert_eq!(snapshot_dir(Path::new("/c/snap/abc/m.safetensors"), "m.safetensors"), PathBuf::from("/c/snap/abc"));
    }
}

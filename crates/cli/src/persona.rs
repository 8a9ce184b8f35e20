//! `run`'s PersonaPlex flags: a persona (`--text-prompt`) and a voice (`--voice-prompt FILE|NAME`,
//! looked up in `--voice-prompt-dir`), the names NVIDIA's `moshi.offline` uses. Checked before the
//! model loads; turned into the engine's `PromptSpec` (the engine refuses prompts for a model
//! without prompt training).

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use moshi_engine::persona::{resolve_voice, PromptSpec, VoiceSource};

#[derive(Debug, Clone, Args)]
pub struct PersonaArgs {
    /// PersonaPlex: the persona, e.g. "You are a wise and friendly teacher." (wrapped in
    /// <system> tags as the reference does; "" for none). Refused for models without prompt
    /// training.
    #[arg(long)]
    pub text_prompt: Option<String>,
    /// PersonaPlex: the voice, a preset (`NATF2.pt`, or `NATF2` with --voice-prompt-dir) or an
    /// audio file (normalized to -24 LUFS and Mimi-encoded).
    #[arg(long)]
    pub voice_prompt: Option<String>,
    /// Where --voice-prompt names are looked up (PersonaPlex's `voices/` folder).
    #[arg(long, requires = "voice_prompt")]
    pub voice_prompt_dir: Option<PathBuf>,
}

impl PersonaArgs {
    /// The prompt asked for, with the voice file found; None without prompt flags.
    pub fn spec(&self) -> anyhow::Result<Option<PromptSpec>> {
        if self.text_prompt.is_none() && self.voice_prompt.is_none() {
            return Ok(None);
        }
        if let Some(dir) = &self.voice_prompt_dir {
            if !dir.is_dir() {
                bail!("--voice-prompt-dir {}: not a folder", dir.display());
            }
        }
        let voice = match &self.voice_prompt {
            Some(name) => VoiceSource::File(resolve_voice(name, self.voice_prompt_dir.as_deref())?),
            None => VoiceSource::None,
        };
        Ok(Some(PromptSpec { text: self.text_prompt.clone().unwrap_or_default(), voice }))
    }
}

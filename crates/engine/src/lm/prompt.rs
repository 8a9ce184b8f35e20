//! PersonaPlex's prompts, fed as NVIDIA's reference feeds them (`LMGen.step_system_prompts`,
//! `moshi/models/lm.py` L1025-1127 of NVIDIA/personaplex): before the user's first frame, one
//! model step per frame,
//!
//! 1. the voice prompt: Mimi codes of a voice recording in the agent's codebooks, or a preset's
//!    input embeddings (`.pt`: the summed embeddings of those steps, then the token ring);
//! 2. `audio_silence_frame_cnt` (6) silence frames;
//! 3. the text prompt, one token per frame in the text stream;
//! 4. 6 silence frames again;
//!
//! with every stream forced (the delay ring's forced mask, `lm::delays`): the text stream PAD (3)
//! except in the text phase, the agent's audio the voice codes or `silence_tokens`, the user's
//! audio `sine_tokens`. The KV cache and the delay ring run on across the phases and into the
//! conversation; nothing is sampled until the last prompt frame, whose step samples the text and
//! the first codebook of the conversation's first position.
//!
//! Timing. The reference's step runs the model one call late (call c writes frame c and runs the
//! position c − 1); moshi-rs keeps Moshi's schedule (step s writes frame s and runs position s).
//! The transformer sees the same input at the same position either way; for the target of step s
//! to be forced as the reference's is, the prompt's next frame's undelayed streams are forced one
//! step early. The reference's first conversation call returns the last prompt frame (PAD and
//! silence); here it is the last prompt step's output (`StepOut::prompt_done`), one step earlier,
//! and every later output is one frame earlier too (docs/personaplex.md).
//!
//! Rows are independent: one row of a batch can be fed its prompt while the others talk.

use candle_core::Tensor;

use super::config::LmConfig;
use super::generate::{LmGenState, PromptStep};
use super::model::LmModel;
use crate::error::{EngineError, Result};

/// The voice a PersonaPlex conversation speaks with.
#[derive(Debug, Clone)]
pub enum VoicePrompt {
    /// No voice prompt (the model's own voice; the reference always has one).
    None,
    /// Mimi codes of a recording, one `Vec` of the agent's codebooks (8) per frame; the first
    /// frame is lost, as at every stream's start.
    Codes(Vec<Vec<i64>>),
    /// A preset (`voices/*.pt`): what the reference recorded while feeding a recording.
    Embeddings(VoiceEmbeddings),
}

/// A preset voice: the summed input embeddings of the voice's first T positions and the token
/// ring the reference held after them.
#[derive(Debug, Clone)]
pub struct VoiceEmbeddings {
    /// [T, dim]: the input of positions 0..T, in place of the token embeddings.
    pub embeddings: Tensor,
    /// The ring, stream-major: the token of stream k in slot j is `ring_tokens[k · ring + j]`;
    /// position p lives in slot p mod `ring`.
    pub ring_tokens: Vec<i64>,
    pub ring: usize,
}

/// A whole prompt: a voice and the text prompt's token ids (already wrapped in `<system>` tags
/// and encoded; `persona` does both).
#[derive(Debug, Clone)]
pub struct LmPrompt {
    pub voice: VoicePrompt,
    pub text: Vec<u32>,
}

/// One prompt frame: a token per stream (written at its delay) and, for preset voices, the
/// input embedding of this step.
#[derive(Debug, Clone)]
pub(super) struct PromptFrame {
    tokens: Vec<i64>,
    embedding: Option<usize>,
    /// Written as given: the preset's ring already holds the initial tokens where the reference
    /// puts them, so the start-of-stream rule is not applied again.
    exact: bool,
}

/// A row's prompt being fed.
#[derive(Debug, Clone)]
pub(crate) struct PromptRun {
    frames: Vec<PromptFrame>,
    /// [T, 1, dim] on the model's device and dtype.
    embeddings: Option<Tensor>,
}

fn prompt_err(msg: String) -> EngineError {
    EngineError::Prompt(msg)
}

impl PromptRun {
    /// Frames of the prompt (the last one samples).
    pub(super) fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

impl LmPrompt {
    /// The frames this prompt feeds, in order, checked against the model's config.
    pub(super) fn frames(&self, cfg: &LmConfig) -> Result<Vec<PromptFrame>> {
        let pp = cfg.personaplex.as_ref().ok_or_else(|| prompt_err(no_prompt_training()))?;
        let (agent, kk) = (cfg.agent_streams(), cfg.num_streams());
        let zero = pp.zero_text_code as i64;
        let frame = |text: i64, agent_codes: &[i64]| {
            let mut t = vec![text];
            t.extend_from_slice(agent_codes);
            t.extend_from_slice(&pp.sine_tokens);
            PromptFrame { tokens: t, embedding: None, exact: false }
        };
        let mut frames = Vec::new();
        match &self.voice {
            VoicePrompt::None => {}
            VoicePrompt::Codes(codes) => {
                for (f, c) in codes.iter().enumerate() {
                    if c.len() != agent {
                        return Err(prompt_err(format!("voice frame {f} has {} codes, the model speaks {agent} codebooks", c.len())));
                    }
                    if let Some(bad) = c.iter().find(|&&x| x < 0 || x >= cfg.card as i64) {
                        return Err(prompt_err(format!("voice frame {f}: code {bad} outside [0, {})", cfg.card)));
                    }
                    frames.push(frame(zero, c));
                }
            }
            VoicePrompt::Embeddings(v) => frames.extend(embedding_frames(v, cfg, zero)?),
        }
        let silence = |frames: &mut Vec<PromptFrame>| {
            frames.extend((0..pp.audio_silence_frame_cnt).map(|_| frame(zero, &pp.silence_tokens)));
        };
        silence(&mut frames);
        for (i, &t) in self.text.iter().enumerate() {
            if t as usize >= cfg.text_card {
                return Err(prompt_err(format!("text prompt token {i} is {t}, outside the text vocabulary of {}", cfg.text_card)));
            }
            frames.push(frame(t as i64, &pp.silence_tokens));
        }
        silence(&mut frames);
        debug_assert!(frames.iter().all(|f| f.tokens.len() == kk));
        if frames.len() >= cfg.context {
            return Err(prompt_err(format!(
                "the prompt takes {} frames ({} voice, 2 × {} silence, {} text tokens), more than the model's context of {} positions leaves for a conversation",
                frames.len(),
                frames.len() - 2 * pp.audio_silence_frame_cnt - self.text.len(),
                pp.audio_silence_frame_cnt,
                self.text.len(),
                cfg.context
            )));
        }
        Ok(frames)
    }

    /// Model steps the prompt takes (positions of the context it uses).
    pub fn frame_count(&self, cfg: &LmConfig) -> Result<usize> {
        Ok(self.frames(cfg)?.len())
    }
}

/// A preset's frames: T steps fed its embeddings (their tokens are the reference's dummies, text
/// PAD and initial audio, never read), then one step that restores the ring: position T in full
/// from slot T mod ring and the delayed streams of position T + 1 from the next slot, as the
/// reference's `state.cache.copy_(…)` does before its first silence frame.
fn embedding_frames(v: &VoiceEmbeddings, cfg: &LmConfig, zero: i64) -> Result<Vec<PromptFrame>> {
    let kk = cfg.num_streams();
    let dims = v.embeddings.dims();
    if dims.len() != 2 || dims[1] != cfg.dim || dims[0] == 0 {
        return Err(prompt_err(format!("voice embeddings of shape {dims:?}, expected [T ≥ 1, {}] (this model's width)", cfg.dim)));
    }
    if v.ring < 2 || v.ring_tokens.len() != kk * v.ring {
        return Err(prompt_err(format!(
            "voice token ring of {} tokens in {} slots, expected {kk} streams × slots",
            v.ring_tokens.len(),
            v.ring
        )));
    }
    for k in 0..kk {
        let top = if k == 0 { cfg.text_card } else { cfg.card };
        if let Some(bad) = v.ring_tokens[k * v.ring..(k + 1) * v.ring].iter().find(|&&t| t < 0 || t > top as i64) {
            return Err(prompt_err(format!("voice token ring: stream {k} holds {bad}, outside [0, {top}]")));
        }
    }
    let t = dims[0];
    let slot = |k: usize, p: usize| v.ring_tokens[k * v.ring + p % v.ring];
    let dummy: Vec<i64> = (0..kk).map(|k| if k == 0 { zero } else { cfg.card as i64 }).collect();
    let mut frames: Vec<PromptFrame> =
        (0..t).map(|i| PromptFrame { tokens: dummy.clone(), embedding: Some(i), exact: false }).collect();
    let last = &mut frames[t - 1];
    last.exact = true;
    for k in 0..kk {
        if cfg.delays[k] > 0 {
            last.tokens[k] = slot(k, t);
        }
    }
    let restore = (0..kk).map(|k| if cfg.delays[k] == 0 { slot(k, t) } else { slot(k, t + 1) }).collect();
    frames.push(PromptFrame { tokens: restore, embedding: None, exact: true });
    Ok(frames)
}

fn no_prompt_training() -> String {
    "this model has no prompt training (it is not PersonaPlex): a text or voice prompt would be ignored by it, so it is refused".into()
}

impl LmModel {
    /// Feed `prompt` to row `row` from its next step on (the row must be at its start: a fresh
    /// state, or just after `LmGenState::reset_row`). The row's user codes are ignored until
    /// the prompt's last frame; its other rows go on. Refused for models without prompt
    /// training (Kyutai's), and for prompts longer than the context.
    pub fn start_prompt(&self, st: &mut LmGenState, row: usize, prompt: &LmPrompt) -> Result<()> {
        let cfg = self.config();
        if !cfg.takes_prompts() {
            return Err(prompt_err(no_prompt_training()));
        }
        if row >= st.batch() {
            return Err(prompt_err(format!("row {row} of a batch of {}", st.batch())));
        }
        if st.tokens().row_step(row) != 0 || st.prompting(row) {
            return Err(prompt_err(format!(
                "row {row} has taken {} steps already: a prompt starts a conversation (reset the row first)",
                st.tokens().row_step(row)
            )));
        }
        let frames = prompt.frames(cfg)?;
        let embeddings = match &prompt.voice {
            VoicePrompt::Embeddings(v) => {
                let (t, d) = v.embeddings.dims2()?;
                let dtype = self.temporal().dtype();
                Some(v.embeddings.to_device(&self.temporal().device())?.to_dtype(dtype)?.reshape((t, 1, d))?)
            }
            _ => None,
        };
        st.prompts[row] = Some(PromptRun { frames, embeddings });
        Ok(())
    }

    /// Prefill: run the prompt steps that sample nothing (every one but each prompt's last) in one
    /// temporal forward over all their positions instead of one forward per step, when every row
    /// of `st` is at the same point of a prompt (a fresh conversation: `run`; rows joining a
    /// running batch step their prompt with the others). The delay ring is kept step by step as
    /// `step` keeps it; the depformer, whose tokens would all be discarded, is not run. Returns
    /// the steps done (0 when the rows are not all at one point of a prompt); the next `step`
    /// continues with the prompt's last frame, whose sampled tokens are the conversation's first.
    /// Equal to stepping: tests/personaplex_engine.rs.
    pub fn prefill_prompts(&self, st: &mut LmGenState) -> Result<usize> {
        self.prefill_prompts_upto(st, usize::MAX)
    }

    /// As `prefill_prompts`, running at most `limit` steps (a prefill in chunks: `row_prefill`).
    pub(super) fn prefill_prompts_upto(&self, st: &mut LmGenState, limit: usize) -> Result<usize> {
        let (b, cfg) = (st.batch(), self.config());
        let s0 = st.tokens().row_step(0);
        let mut left = usize::MAX;
        for r in 0..b {
            match &st.prompts[r] {
                Some(run) if st.tokens().row_step(r) == s0 => left = left.min(run.frames.len() - s0),
                _ => return Ok(0),
            }
        }
        let n = left.saturating_sub(1).min(limit);
        if n == 0 {
            return Ok(0);
        }
        let user = vec![0i64; b * cfg.user_streams()];
        let placeholder = vec![0i64; b * (1 + cfg.agent_streams())];
        let mut xs = Vec::with_capacity(n);
        for i in 0..n {
            let prompt = self.apply_prompts(st)?;
            let input = st.tokens_mut().input(&user)?;
            for r in 0..b {
                if let Some(k) = (0..=cfg.agent_streams()).find(|&k| st.tokens().forced_target(r, k).is_none()) {
                    return Err(EngineError::Streaming(format!(
                        "prefill: prompt step {} of row {r} would sample stream {k} (these delays need stepping)",
                        s0 + i
                    )));
                }
            }
            xs.push(self.input_embedding(&input, &prompt, b)?);
            st.tokens_mut().record(&placeholder)?; // every target is forced: nothing is written
        }
        let x = Tensor::cat(&xs, 1)?;
        self.temporal().step_embedded(&x, st.temporal_mut(), &mut |_, _| Ok(()))?;
        Ok(n)
    }

    /// Force this step's prompt frames into the delay ring of every row being prompted (and the
    /// next frame's undelayed streams, so that the step's target is forced as the reference's
    /// is) and say which rows read an input embedding.
    pub(super) fn apply_prompts(&self, st: &mut LmGenState) -> Result<PromptStep> {
        let b = st.batch();
        let delays = self.config().delays.clone();
        let mut out = PromptStep { embeddings: vec![None; b], prompting: vec![false; b], last: vec![false; b] };
        for row in 0..b {
            let Some(run) = st.prompts[row].take() else { continue };
            let s = st.tokens().row_step(row);
            let frame = &run.frames[s];
            for (k, &d) in delays.iter().enumerate() {
                // The reference's start-of-stream rule: positions p ≤ D_k hold the initial token.
                let token = if s == 0 && !frame.exact { self.initial_token(k) } else { frame.tokens[k] };
                st.tokens_mut().force(row, s + d, k, token)?;
            }
            if let Some(next) = run.frames.get(s + 1) {
                for (k, _) in delays.iter().enumerate().filter(|(_, &d)| d == 0) {
                    st.tokens_mut().force(row, s + 1, k, next.tokens[k])?;
                }
            }
            if let (Some(i), Some(e)) = (frame.embedding, &run.embeddings) {
                out.embeddings[row] = Some(e.narrow(0, i, 1)?);
            }
            out.prompting[row] = true;
            out.last[row] = s + 1 == run.frames.len();
            st.prompts[row] = Some(run);
        }
        Ok(out)
    }
}

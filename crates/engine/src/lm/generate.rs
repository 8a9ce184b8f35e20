//! The streaming step (the reference's `LMGen.step`): user audio codes in, the model's text
//! token and audio codes out, with the per-stream delays kept by [`DelayBuffer`] (the alignment
//! is written down there and in docs/lm.md). Per step: the temporal model reads the step's
//! input, the text token is sampled from its head, then the depformer samples the model's
//! codebooks one after the other, each step reading the token chosen just before.
//!
//! Forced tokens (PersonaPlex's prompts, `lm::prompt`): where the position a step fills (its
//! target) holds a forced token, nothing is sampled there and the depformer's next step reads the
//! forced token instead of a sample, as the reference's PersonaPlex LMGen does. The depformer
//! runs only the steps whose tokens are kept: the model's own codebooks (8). PersonaPlex's
//! depformer has 16 steps, 8–15 predicting the user's codebooks, which are always given and so
//! never kept; `LmGenState::set_all_depformer_steps` runs them too (tests prove the tokens equal).

use candle_core::{DType, Tensor};

use super::delays::DelayBuffer;
use super::model::LmModel;
use super::prompt::PromptRun;
use super::row_prefill::RowPrefill;
use super::sampling::{sample, Noise, SamplingConfig, SeededNoise};
use crate::error::{EngineError, Result};
use super::frame_graph::{DepformerGraph, GraphState};
use super::temporal_graph::TemporalGraph;
use crate::exec::{device_sampling, graph, FrameSampler, RunOptions, SampleCallPlan};
use crate::nn::transformer::TransformerState;

/// Sampling settings of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenConfig {
    pub text: SamplingConfig,
    pub audio: SamplingConfig,
}

impl Default for GenConfig {
    /// The reference's defaults: text 0.7 / top 25, audio 0.8 / top 250.
    fn default() -> Self {
        Self { text: SamplingConfig::text_default(), audio: SamplingConfig::audio_default() }
    }
}

impl GenConfig {
    pub fn greedy() -> Self {
        Self { text: SamplingConfig::greedy(), audio: SamplingConfig::greedy() }
    }
}

/// Everything one conversation (B rows stepped together) carries between steps, and the
/// [`RunOptions`] it was made with; the weights stay in the shared [`LmModel`].
pub struct LmGenState {
    options: RunOptions,
    pub(super) temporal: TransformerState,
    tokens: DelayBuffer,
    cfg: GenConfig,
    noise: Box<dyn Noise>,
    /// Conversation slots (`LmModel::new_slots`): each row its own settings and noise; empty
    /// when every row shares `cfg` and `noise`.
    pub(super) rows: Vec<(GenConfig, SeededNoise)>,
    /// The depformer's CUDA graph and its buffers, with `options.cuda_graphs` (`frame_graph`).
    graph: Option<DepformerGraph>,
    /// The temporal step's CUDA graph, with `options.cuda_graphs` (`temporal_graph`).
    temporal_graph: Option<TemporalGraph>,
    /// Per row, the prompt it is being fed (`LmModel::start_prompt`), until its last frame.
    pub(super) prompts: Vec<Option<PromptRun>>,
    /// Run every depformer step (PersonaPlex: 16) instead of only those whose tokens are kept.
    all_depformer_steps: bool,
    /// Per row, its prompt being prefilled on its own (`lm::row_prefill`): until the splice the
    /// batch steps the row as an idle one and withholds its replies.
    pub(super) pending: Vec<Option<RowPrefill>>,
}

impl LmGenState {
    /// Start row `row` as a new conversation at the next step, with its own settings and seed;
    /// the other rows go on. Only for states made by `LmModel::new_slots`.
    pub fn reset_row(&mut self, row: usize, cfg: GenConfig, seed: u64) -> Result<()> {
        let b = self.batch();
        if self.rows.len() != b {
            return Err(EngineError::InvalidInput(
                "this state shares one noise source between its rows; make it with LmModel::new_slots to reset rows".into(),
            ));
        }
        self.tokens.reset_row(row)?;
        self.temporal.reset_row(row, b);
        self.rows[row] = (cfg, SeededNoise::new(seed));
        self.prompts[row] = None;
        self.pending[row] = None;
        Ok(())
    }

    /// Run all of the depformer's steps (PersonaPlex: 16, the last 8 predicting the user's
    /// codebooks, whose tokens are never kept) instead of only the model's own codebooks' (8, the
    /// default). The tokens are the same either way (tests/personaplex_engine.rs); where a user
    /// codebook is not given yet the extra steps read their argmax, drawing no noise. Frames with
    /// all steps are sampled on the host.
    pub fn set_all_depformer_steps(&mut self, all: bool) {
        self.all_depformer_steps = all;
    }

    /// Whether row `row`'s prompt is being prefilled on its own (`lm::row_prefill`).
    pub fn prefill_pending(&self, row: usize) -> bool {
        self.pending.get(row).is_some_and(|p| p.is_some())
    }

    /// Whether row `row` is still being fed its prompt (stepped, or prefilled on its own).
    pub fn prompting(&self, row: usize) -> bool {
        self.prompts.get(row).is_some_and(|p| p.is_some()) || self.pending.get(row).is_some_and(|p| p.is_some())
    }

    /// The tokens of the delay ring (for the prompt runner).
    pub(super) fn tokens_mut(&mut self) -> &mut DelayBuffer {
        &mut self.tokens
    }

    pub(super) fn tokens(&self) -> &DelayBuffer {
        &self.tokens
    }

    pub(super) fn temporal_mut(&mut self) -> &mut TransformerState {
        &mut self.temporal
    }

    /// Steps taken by row `row` since its start.
    pub fn row_step(&self, row: usize) -> usize {
        self.tokens.row_step(row)
    }

    /// Sample one token per row, with each row's own settings and noise when it has them; rows
    /// whose token is forced (`forced[row]` Some) take it and draw no noise. Rows sharing one
    /// noise source are sampled together unless every one is forced.
    fn sample_or_forced(&mut self, logits: &[f32], b: usize, text: bool, forced: &[Option<i64>], what: &str) -> Result<Vec<i64>> {
        if forced.iter().all(|f| f.is_some()) {
            return Ok(forced.iter().map(|f| f.unwrap_or(0)).collect());
        }
        let vocab = logits.len() / b;
        let sampled: Vec<u32> = if self.rows.is_empty() || forced.iter().all(|f| f.is_none()) {
            self.sample(logits, b, text, what)?
        } else {
            let pick = |c: &GenConfig| if text { c.text } else { c.audio };
            let mut out = vec![0u32; b];
            for (r, row) in logits.chunks(vocab).enumerate() {
                if forced[r].is_none() {
                    let (cfg, noise) = &mut self.rows[r];
                    out[r] = sample(row, 1, &pick(cfg), noise, &format!("{what}, row {r}"))?[0];
                }
            }
            out
        };
        Ok(sampled.iter().zip(forced).map(|(&s, f)| f.unwrap_or(s as i64)).collect())
    }

    /// Sample one token per row, with each row's own settings and noise when it has them.
    fn sample(&mut self, logits: &[f32], b: usize, text: bool, what: &str) -> Result<Vec<u32>> {
        let pick = |c: &GenConfig| if text { c.text } else { c.audio };
        if self.rows.is_empty() {
            return sample(logits, b, &pick(&self.cfg), self.noise.as_mut(), what);
        }
        let vocab = logits.len() / b;
        // Rows are independent (each its own noise): sampled in parallel, which matters for
        // large batches (a softmax and a top-k selection per row, nine times per frame).
        use rayon::prelude::*;
        let out: Vec<Vec<u32>> = self
            .rows
            .par_iter_mut()
            .zip(logits.par_chunks(vocab))
            .enumerate()
            .map(|(r, ((cfg, noise), row))| sample(row, 1, &pick(cfg), noise, &format!("{what}, row {r}")))
            .collect::<Result<_>>()?;
        Ok(out.into_iter().flatten().collect())
    }

    /// Each row's sampling settings for one kind of token (text or audio).
    fn row_settings(&self, text: bool) -> Vec<SamplingConfig> {
        let pick = |c: &GenConfig| if text { c.text } else { c.audio };
        if self.rows.is_empty() {
            vec![pick(&self.cfg); self.batch()]
        } else {
            self.rows.iter().map(|(c, _)| pick(c)).collect()
        }
    }

    /// The top-k each row will sample with in a frame (text, then audio; 0 for greedy rows and
    /// for "every token"), `vocab` the text and audio vocabularies.
    fn frame_top_k(&self, vocab: [usize; 2]) -> Vec<u32> {
        let mut ks = Vec::new();
        for (text, v) in [(true, vocab[0]), (false, vocab[1])] {
            ks.extend(self.row_settings(text).iter().map(|s| if s.is_greedy() { 0 } else { s.top_k.min(v) as u32 }));
        }
        ks
    }

    /// Draw the noise of a frame's `calls` sampling calls (the text token, then `calls − 1`
    /// depformer steps) now, exactly as the host sampler would draw it call by call: the same
    /// sources, in the same order, the same number of values (none for greedy settings).
    fn draw_frame(&mut self, vocab: [usize; 2], calls: usize) -> Result<Vec<SampleCallPlan>> {
        let b = self.batch();
        let mut out = Vec::with_capacity(calls);
        for c in 0..calls {
            let text = c == 0;
            let v = if text { vocab[0] } else { vocab[1] };
            let settings = self.row_settings(text);
            let k_of = |s: &SamplingConfig| if s.is_greedy() { 0 } else if s.top_k == 0 { v } else { s.top_k.min(v) };
            let temps = settings.iter().map(|s| if s.is_greedy() { 0.0 } else { s.temperature.unwrap_or(1.0) as f32 }).collect();
            let top_k = settings.iter().map(|s| if s.is_greedy() { 0 } else { s.top_k.min(v) as u32 }).collect();
            let stride = settings.iter().map(k_of).max().unwrap_or(0);
            let mut noise = Vec::new();
            if self.rows.is_empty() {
                if stride > 0 {
                    self.noise.fill(b, stride, &mut noise)?;
                }
            } else {
                noise = vec![1.0; b * stride];
                let mut block = Vec::new();
                for (r, (_, source)) in self.rows.iter_mut().enumerate() {
                    let k = k_of(&settings[r]);
                    if k > 0 {
                        source.fill(1, k, &mut block)?;
                        noise[r * stride..r * stride + k].copy_from_slice(&block);
                    }
                }
            }
            out.push(SampleCallPlan { temps, top_k, noise, stride });
        }
        Ok(out)
    }

    /// Steps taken so far.
    /// Advance the temporal KV caches by `steps` positions without computing them (benchmarks:
    /// every row as deep into its conversation as a long one, e.g. the full 3000-step context).
    pub fn skip_temporal(&mut self, steps: usize) {
        self.temporal.skip(steps);
    }

    /// Bytes held by the temporal KV caches.
    pub fn cache_bytes(&self) -> usize {
        self.temporal.cache_bytes()
    }

    pub fn step_index(&self) -> usize {
        self.tokens.step()
    }

    pub fn batch(&self) -> usize {
        self.tokens.batch()
    }

    pub fn config(&self) -> &GenConfig {
        &self.cfg
    }

    pub fn options(&self) -> &RunOptions {
        &self.options
    }

    /// Whether the depformer's steps replay a CUDA graph (see `lm::frame_graph`).
    pub fn graph_state(&self) -> GraphState {
        self.graph.as_ref().map_or(GraphState::Off, DepformerGraph::state)
    }

    /// Whether the temporal step replays a CUDA graph (see `lm::temporal_graph`).
    pub fn temporal_graph_state(&self) -> GraphState {
        self.temporal_graph.as_ref().map_or(GraphState::Off, TemporalGraph::state)
    }
}

/// What one step produced.
#[derive(Debug, Clone)]
pub struct StepOut {
    /// [B, 1 + agent] row-major (agent = the model's own audio codebooks, `agent_streams`): text
    /// and model audio tokens of time index `step − M`; `None` while the delays fill (the first M
    /// steps) of every row.
    pub tokens: Option<Vec<i64>>,
    /// [B]: whether the row's `tokens` are real (rows that joined later fill their delays later;
    /// their tokens are zeros until then; a row being prompted has none until its prompt's last
    /// frame, which returns the prompt's last forced frame).
    pub ready: Vec<bool>,
    /// [B, 1 + n_q] row-major: what the temporal model read at this step (for a row given an
    /// input embedding instead, the tokens it would have read).
    pub input: Vec<i64>,
    /// [B]: the text token this step chose for its target position (forced, or sampled).
    pub text: Vec<u32>,
    /// [B, agent] row-major: the audio tokens this step chose (forced, or sampled).
    pub audio: Vec<u32>,
    /// [B]: the row's step was a prompt frame.
    pub prompting: Vec<bool>,
    /// [B]: the row's prompt ended with this step (its next step is the conversation's first).
    pub prompt_done: Vec<bool>,
    /// [B, 1, dim]: temporal output after `out_norm`.
    pub transformer_out: Tensor,
    /// [B, 1, text_card]
    pub text_logits: Tensor,
    /// Per depformer step run: [B, 1, card].
    pub depformer_logits: Vec<Tensor>,
    /// Wall time of the temporal part (embeddings, transformer, text head and sampling; it
    /// ends with the text logits on the host) and of the depformer's steps, in ms.
    pub temporal_ms: f64,
    pub depformer_ms: f64,
}

fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// What the prompt runner decided for one step (see `lm::prompt`).
#[derive(Default)]
pub(super) struct PromptStep {
    /// Per row: an input embedding [1, 1, dim] replacing the token embeddings' sum.
    pub embeddings: Vec<Option<Tensor>>,
    /// Per row: the step is a prompt frame / its prompt's last.
    pub prompting: Vec<bool>,
    pub last: Vec<bool>,
}

impl LmModel {
    /// A fresh conversation of `batch` rows with seeded noise, run with `options` (the temporal
    /// KV cache's kind).
    pub fn new_state(&self, batch: usize, cfg: GenConfig, seed: u64, options: &RunOptions) -> Result<LmGenState> {
        self.new_state_with_noise(batch, cfg, Box::new(SeededNoise::new(seed)), options)
    }

    /// A fresh conversation with any noise source (e.g. a reference run's recorded noise).
    pub fn new_state_with_noise(&self, batch: usize, cfg: GenConfig, noise: Box<dyn Noise>, options: &RunOptions) -> Result<LmGenState> {
        let c = self.config();
        let initial: Vec<i64> = (0..c.num_streams()).map(|k| self.initial_token(k)).collect();
        let tokens = DelayBuffer::new(&c.delays, &initial, 1 + c.agent_streams(), batch)?;
        let temporal = TransformerState::new(options.kv_cache);
        let prompts = (0..batch).map(|_| None).collect();
        let pending = (0..batch).map(|_| None).collect();
        Ok(LmGenState { options: *options, temporal, tokens, cfg, noise, rows: Vec::new(), graph: None, temporal_graph: None, prompts, all_depformer_steps: false, pending })
    }

    /// `batch` conversation slots stepped together, each row with its own settings and seeded
    /// noise, started (and restarted) one at a time with `LmGenState::reset_row`. Until then a
    /// row runs greedily on whatever it is given.
    pub fn new_slots(&self, batch: usize, options: &RunOptions) -> Result<LmGenState> {
        let mut st = self.new_state(batch, GenConfig::greedy(), 0, options)?;
        st.rows = (0..batch).map(|r| (GenConfig::greedy(), SeededNoise::new(r as u64))).collect();
        Ok(st)
    }

    /// M: steps before the first output.
    pub fn max_delay(&self) -> usize {
        self.config().delays.iter().copied().max().unwrap_or(0)
    }

    /// One streaming step. `user` holds the user's audio codes of this step, [B, user streams]
    /// row-major (Mimi's codes of the latest 80 ms frame); a row being prompted ignores its codes.
    pub fn step(&self, st: &mut LmGenState, user: &[i64]) -> Result<StepOut> {
        let cfg = self.config();
        let (b, kk, n) = (st.batch(), cfg.num_streams(), st.step_index());
        if let Some(bad) = user.iter().find(|&&c| c < 0 || c >= cfg.card as i64) {
            return Err(EngineError::InvalidInput(format!("step {n}: user code {bad} outside [0, {})", cfg.card)));
        }
        let t0 = std::time::Instant::now();
        let prompt = self.apply_prompts(st)?;
        let input = st.tokens.input(user)?;
        let device = self.temporal_device();
        let t_out = if graph::applies(&device, &st.options) {
            let x = self.input_embedding(&input, &prompt, b)?;
            self.temporal().step_graphed(&x, &mut st.temporal, &mut st.temporal_graph)?
        } else if prompt.embeddings.iter().any(|e| e.is_some()) {
            let x = self.input_embedding(&input, &prompt, b)?;
            self.temporal().step_embedded(&x, &mut st.temporal, &mut |_, _| Ok(()))?
        } else {
            self.temporal().step_host(&input, b, &mut st.temporal, &mut |_, _| Ok(()))?
        };
        let vocab = [cfg.text_card, cfg.card];
        // The device sampler knows no forced tokens: any frame where some row is being prompted
        // or has a forced token to fill, or that runs every depformer step, is sampled on the
        // host (after a prompt, conversation frames have none and go back to the device).
        let forced_any = (0..b).any(|r| (0..=cfg.agent_streams()).any(|k| st.tokens.forced_target(r, k).is_some()));
        let host_only = forced_any || prompt.prompting.iter().any(|&p| p) || st.all_depformer_steps;
        if !host_only && device_sampling(&device, &st.options, st.frame_top_k(vocab)) {
            return self.sample_on_device(st, input, t_out, t0, vocab);
        }
        let logits = to_f32_vec(&t_out.text_logits)?;
        if logits.iter().any(|x| !x.is_finite()) {
            let tokens = Tensor::from_vec(input.clone(), (b, kk, 1), &device)?;
            return Err(self.locate_non_finite(st, &tokens, "text logits"));
        }
        let forced: Vec<Option<i64>> = (0..b).map(|r| st.tokens.forced_target(r, 0)).collect();
        let text = st.sample_or_forced(&logits, b, true, &forced, &format!("step {n}, text"))?;
        let temporal_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = std::time::Instant::now();

        // The depformer's cache is one frame deep: always in the model's dtype.
        let agent = cfg.agent_streams();
        let steps = if st.all_depformer_steps { cfg.dep_q } else { agent };
        let mut dstate = TransformerState::default();
        let mut prev = text.clone();
        let mut sampled = vec![0i64; b * (1 + agent)];
        for row in 0..b {
            sampled[row * (1 + agent)] = text[row];
        }
        let mut depformer_logits = Vec::with_capacity(steps);
        for k in 0..steps {
            let shifted: Vec<u32> = prev.iter().map(|&t| (t + 1) as u32).collect();
            let prev_t = Tensor::from_vec(shifted, (b, 1), &device)?;
            let l = self.depformer().step_shifted(k, &t_out.out, &prev_t, &mut dstate)?;
            let lv = to_f32_vec(&l)?;
            if lv.iter().any(|x| !x.is_finite()) {
                return Err(EngineError::NonFinite(format!(
                    "step {n}: non-finite logits at depformer step {k} (codebook {k}); the temporal output was finite"
                )));
            }
            let forced: Vec<Option<i64>> = (0..b).map(|r| st.tokens.forced_target(r, 1 + k)).collect();
            prev = if k < agent {
                st.sample_or_forced(&lv, b, false, &forced, &format!("step {n}, depformer step {k}"))?
            } else {
                // A user codebook: never kept; the argmax where not given yet (no noise drawn).
                let best = sample(&lv, b, &SamplingConfig::greedy(), &mut super::sampling::NoNoise, "user codebook")?;
                best.iter().zip(&forced).map(|(&t, f)| f.unwrap_or(t as i64)).collect()
            };
            if k < agent {
                for row in 0..b {
                    sampled[row * (1 + agent) + 1 + k] = prev[row];
                }
            }
            depformer_logits.push(l);
        }
        let depformer_ms = t1.elapsed().as_secs_f64() * 1e3;
        let times = (temporal_ms, depformer_ms);
        Self::finish_step(st, input, sampled, t_out, depformer_logits, times, prompt)
    }

    /// The temporal input [B, 1, dim] of a step: the tokens' summed embeddings, or for rows given
    /// an input embedding by their prompt, that embedding.
    pub(super) fn input_embedding(&self, input: &[i64], prompt: &PromptStep, b: usize) -> Result<Tensor> {
        let x = self.temporal().embed_host(input, b)?;
        if prompt.embeddings.iter().all(|e| e.is_none()) {
            return Ok(x);
        }
        let rows = (0..b)
            .map(|r| match &prompt.embeddings[r] {
                Some(e) => Ok(e.to_dtype(x.dtype())?),
                None => Ok(x.narrow(0, r, 1)?),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// The sampling half of `step` with the device sampler (`exec::sampler`): the frame's noise
    /// drawn first, every call's token left on the device for the next depformer step
    /// (`frame_graph`: eagerly or as a replayed CUDA graph), one download at the end; the
    /// temporal time ends before the text token is sampled. The same tokens as the host path for the same noise; a non-finite
    /// logit is reported as there (the text's first), found through the kernel's flags.
    fn sample_on_device(&self, st: &mut LmGenState, input: Vec<i64>, t_out: super::temporal::TemporalOut, t0: std::time::Instant, vocab: [usize; 2]) -> Result<StepOut> {
        let (b, dq, n) = (st.batch(), self.config().agent_streams(), st.step_index());
        let calls = st.draw_frame(vocab, 1 + dq)?;
        let device = self.temporal_device();
        let temporal_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = std::time::Instant::now();
        let (got, depformer_logits) = if graph::applies(&device, &st.options) {
            self.depformer_graphed(&mut st.graph, &t_out.out, &t_out.text_logits, &calls)?
        } else {
            let sampler = FrameSampler::new(&device, b, &calls)?;
            let logits = self.depformer_chain(&t_out.out, &t_out.text_logits, &sampler)?;
            (sampler.finish()?, logits)
        };
        let cols = 1 + dq;
        if (0..b).any(|r| got.flags[r * cols] != 0) {
            let tokens = Tensor::from_vec(input.clone(), (b, self.config().num_streams(), 1), &device)?;
            return Err(self.locate_non_finite(st, &tokens, "text logits"));
        }
        if let Some(k) = (0..dq).find(|&k| (0..b).any(|r| got.flags[r * cols + 1 + k] != 0)) {
            return Err(EngineError::NonFinite(format!(
                "step {n}: non-finite logits at depformer step {k} (codebook {k}); the temporal output was finite"
            )));
        }
        let sampled: Vec<i64> = got.tokens.iter().map(|&t| t as i64).collect();
        let times = (temporal_ms, t1.elapsed().as_secs_f64() * 1e3);
        let prompt = PromptStep { embeddings: vec![None; b], prompting: vec![false; b], last: vec![false; b] };
        Self::finish_step(st, input, sampled, t_out, depformer_logits, times, prompt)
    }

    /// Record a step's tokens [B, 1 + agent] in the delay ring (where not forced) and make its
    /// `StepOut`; rows being prompted are not ready before their prompt's last frame.
    fn finish_step(
        st: &mut LmGenState,
        input: Vec<i64>,
        sampled: Vec<i64>,
        t_out: super::temporal::TemporalOut,
        depformer_logits: Vec<Tensor>,
        (temporal_ms, depformer_ms): (f64, f64),
        prompt: PromptStep,
    ) -> Result<StepOut> {
        let cols = sampled.len() / st.batch();
        let text = sampled.iter().step_by(cols).map(|&t| t as u32).collect();
        let audio = sampled.chunks(cols).flat_map(|r| r[1..].iter().map(|&t| t as u32)).collect();
        let mut tokens = st.tokens.record(&sampled)?;
        let mut ready = st.tokens.ready().to_vec();
        let mut prompt = prompt;
        for (r, ready) in ready.iter_mut().enumerate() {
            if st.pending[r].is_some() {
                // Prefilled on its own meanwhile: stepped as an idle row, nothing of it shown.
                prompt.prompting[r] = true;
            }
            if prompt.prompting[r] && !prompt.last[r] {
                *ready = false;
                if let Some(t) = tokens.as_mut() {
                    t[r * cols..(r + 1) * cols].iter_mut().for_each(|x| *x = 0);
                }
            }
            if prompt.last[r] {
                st.prompts[r] = None;
            }
        }
        if !ready.iter().any(|&r| r) {
            tokens = None;
        }
        Ok(StepOut {
            temporal_ms,
            depformer_ms,
            tokens,
            ready,
            input,
            text,
            audio,
            prompting: prompt.prompting,
            prompt_done: prompt.last,
            transformer_out: t_out.out,
            text_logits: t_out.text_logits,
            depformer_logits,
        })
    }

    fn temporal_device(&self) -> candle_core::Device {
        self.temporal().device()
    }

    /// After non-finite logits at the current step: re-run the step's temporal forward with
    /// every layer checked (the ring KV cache makes the re-run overwrite the same slots) and
    /// name the first layer whose output is not finite.
    fn locate_non_finite(&self, st: &mut LmGenState, tokens: &Tensor, what: &str) -> EngineError {
        let n = st.step_index();
        st.temporal.rewind(1);
        let mut first: Option<usize> = None;
        let mut check = |i: usize, x: &Tensor| -> Result<()> {
            if first.is_none() && to_f32_vec(x)?.iter().any(|v| !v.is_finite()) {
                first = Some(i);
            }
            Ok(())
        };
        let rerun = self.temporal().step(tokens, &mut st.temporal, &mut check);
        let place = match (rerun, first) {
            (Err(e), _) => format!("(re-running the step to find the layer failed: {e})"),
            (Ok(_), Some(i)) => format!("first non-finite output at temporal transformer layer {i}"),
            (Ok(_), None) => "every temporal layer was finite; the non-finite values appear in out_norm or the text head".into(),
        };
        EngineError::NonFinite(format!("step {n}: non-finite values in the {what}; {place}"))
    }
}

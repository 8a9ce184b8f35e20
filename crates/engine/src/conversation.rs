//! A whole Moshi: Mimi + the LM + the text tokenizer, and one conversation stepped frame by frame
//! as a live exchange runs: 80 ms of the user's audio in → Mimi encode → LM step → Mimi decode of
//! the model's codes → 80 ms of Moshi's voice and (maybe) a text token out.
//!
//! The weights (`Moshi`) are shared; a `Conversation` holds one exchange's state (Mimi encoder and
//! decoder states, the LM's `LmGenState`). As in the reference's offline pipeline
//! (`run_inference.py`), the first frame's codes can be given to the LM twice: the LM never reads
//! the user codes of its first step, so this makes the first frame count.

use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};
use crate::exec::RunOptions;
use crate::lm::{GenConfig, LmGenState, LmModel};
use crate::mimi::{CodecGraphs, DecoderState, EncoderState, Mimi};
use crate::text::Tokenizer;

/// Mimi, the LM and the tokenizer, checked to fit together.
#[derive(Debug, Clone)]
pub struct Moshi {
    pub mimi: Mimi,
    pub lm: LmModel,
    pub tokenizer: Tokenizer,
}

/// Milliseconds spent per stage on one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StageTimes {
    pub encode_ms: f64,
    pub lm_ms: f64,
    pub decode_ms: f64,
    /// The LM's two parts (their sum is `lm_ms` less bookkeeping; with a repeated first frame,
    /// the second call's): the temporal model up to the sampled text token, the depformer's steps.
    pub temporal_ms: f64,
    pub depformer_ms: f64,
}

impl StageTimes {
    pub fn total_ms(&self) -> f64 {
        self.encode_ms + self.lm_ms + self.decode_ms
    }
}

/// What one frame of conversation produced, for B rows (row-major).
#[derive(Debug, Clone)]
pub struct FrameOut {
    /// The user's codes of this frame ([B, n_codebooks]).
    pub user_codes: Vec<i64>,
    /// Moshi's voice for this frame ([B, frame samples]), once the delays are filled.
    pub pcm: Option<Vec<f32>>,
    /// The text tokens aligned with `pcm` ([B]; pad and end-of-padding included).
    pub text: Option<Vec<u32>>,
    /// [B]: whether the row's `pcm`, `text` and `tokens` are real; a row that started later
    /// (`Conversation::reset_row`) fills its delays later.
    pub ready: Vec<bool>,
    /// [B]: the row's frame was a prompt frame (its audio in was ignored).
    pub prompting: Vec<bool>,
    /// All aligned tokens ([B, 1 + agent codebooks]: text, audio…), once the delays are filled.
    pub tokens: Option<Vec<i64>>,
    pub times: StageTimes,
}

/// One exchange's state (B rows stepped together: a batch of independent conversations).
pub struct Conversation {
    batch: usize,
    enc: EncoderState,
    dec: DecoderState,
    lm: LmGenState,
    frames: usize,
    repeat_first_frame: bool,
    /// Rows whose decoder must start afresh at their first real tokens.
    dec_fresh: Vec<bool>,
}

impl Conversation {
    /// Fresh Mimi states around an LM state of B rows (which holds the run's options).
    fn new(lm: LmGenState, repeat_first_frame: bool) -> Self {
        let batch = lm.batch();
        // Mimi's calls replay CUDA graphs with the LM's (`mimi::graph`; Off where none can be made).
        let graphs = if lm.options().cuda_graphs { CodecGraphs::On } else { CodecGraphs::Off };
        Self {
            batch,
            enc: EncoderState::new(graphs),
            dec: DecoderState::new(graphs),
            lm,
            frames: 0,
            repeat_first_frame,
            dec_fresh: vec![false; batch],
        }
    }

    /// Frames consumed so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// What this conversation runs with (given when it was made).
    pub fn options(&self) -> &RunOptions {
        self.lm.options()
    }

    /// LM steps taken so far (one more than `frames` when the first frame was given twice).
    /// Advance the LM's temporal KV caches by `steps` positions without computing them, as if
    /// every row were that much deeper into its conversation (benchmarks at the full context).
    pub fn skip_context(&mut self, steps: usize) {
        self.lm.skip_temporal(steps);
    }

    /// Bytes held by the LM's temporal KV caches.
    pub fn cache_bytes(&self) -> usize {
        self.lm.cache_bytes()
    }

    pub fn lm_steps(&self) -> usize {
        self.lm.step_index()
    }

    /// Whether the LM's depformer steps replay a CUDA graph (`lm::frame_graph`).
    pub fn graph_state(&self) -> crate::lm::GraphState {
        self.lm.graph_state()
    }

    /// Where the temporal step's CUDA graph stands (`lm::temporal_graph`).
    pub fn temporal_graph_state(&self) -> crate::lm::GraphState {
        self.lm.temporal_graph_state()
    }

    /// Where Mimi's encode and decode graphs stand (`mimi::graph`), in that order.
    pub fn mimi_graph_state(&self) -> (crate::lm::GraphState, crate::lm::GraphState) {
        (self.enc.graph_state(), self.dec.graph_state())
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Frames consumed by row `row` since it started.
    pub fn row_frames(&self, row: usize) -> usize {
        self.lm.row_step(row)
    }

    /// Start row `row` as a new conversation at the next frame, with its own sampling settings
    /// and seed; the other rows go on undisturbed. Only for [`Moshi::slots`]. The row then
    /// computes what a conversation of its own would (tests/slots.rs), apart from float
    /// rounding in batched products.
    pub fn reset_row(&mut self, row: usize, cfg: GenConfig, seed: u64) -> Result<()> {
        if row >= self.batch {
            return Err(EngineError::InvalidInput(format!("row {row} of {} conversation slots", self.batch)));
        }
        self.lm.reset_row(row, cfg, seed)?;
        self.enc.reset_row(row, self.batch);
        self.dec_fresh[row] = true;
        Ok(())
    }
}

impl Conversation {
    /// Whether row `row` is still being fed its prompt (`Moshi::start_prompt`).
    pub fn prompting(&self, row: usize) -> bool {
        self.lm.prompting(row)
    }

    /// Whether row `row`'s prompt is being prefilled on its own (`Moshi::prefill_row`).
    pub fn prefill_pending(&self, row: usize) -> bool {
        self.lm.prefill_pending(row)
    }

    /// Run every depformer step (see `LmGenState::set_all_depformer_steps`).
    pub fn set_all_depformer_steps(&mut self, all: bool) {
        self.lm.set_all_depformer_steps(all);
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl Moshi {
    /// Put the parts together, checking that the LM's streams match Mimi's codebooks and the
    /// tokenizer covers the LM's text vocabulary.
    pub fn new(mimi: Mimi, lm: LmModel, tokenizer: Tokenizer) -> Result<Self> {
        let (c, m) = (lm.config(), mimi.config());
        let bad = |msg: String| Err(EngineError::InvalidInput(format!("the LM does not fit this Mimi: {msg}")));
        if c.card != m.quantizer.bins {
            return bad(format!("LM audio cardinality {} vs Mimi codebooks of {} entries", c.card, m.quantizer.bins));
        }
        if c.agent_streams() != mimi.num_codebooks() || c.user_streams() != mimi.num_codebooks() {
            return bad(format!(
                "LM generates {} and reads {} user codebooks, Mimi uses {}",
                c.agent_streams(),
                c.user_streams(),
                mimi.num_codebooks()
            ));
        }
        if tokenizer.vocab_size() < c.text_card {
            return Err(EngineError::InvalidInput(format!(
                "the tokenizer has {} pieces, the LM's text vocabulary {}",
                tokenizer.vocab_size(),
                c.text_card
            )));
        }
        Ok(Self { mimi, lm, tokenizer })
    }

    /// Samples per frame (1920 at 24 kHz).
    pub fn frame_size(&self) -> usize {
        self.mimi.frame_size()
    }

    /// A new exchange (batch 1) run with `options`. `repeat_first_frame`: give the first
    /// frame's codes to the LM twice, as the reference's offline pipeline does.
    pub fn conversation(&self, cfg: GenConfig, seed: u64, repeat_first_frame: bool, options: &RunOptions) -> Result<Conversation> {
        self.conversations(1, cfg, seed, repeat_first_frame, options)
    }

    /// `batch` exchanges stepped together (each frame: [B, frame samples] in, B replies out).
    pub fn conversations(&self, batch: usize, cfg: GenConfig, seed: u64, repeat_first_frame: bool, options: &RunOptions) -> Result<Conversation> {
        if batch == 0 {
            return Err(EngineError::InvalidInput("a batch of 0 conversations".into()));
        }
        Ok(Conversation::new(self.lm.new_state(batch, cfg, seed, options)?, repeat_first_frame))
    }

    /// `batch` conversation slots for a server: rows start and restart one at a time
    /// ([`Conversation::reset_row`]) while the others go on; every frame steps all rows
    /// (idle rows compute on whatever they are given, usually silence).
    pub fn slots(&self, batch: usize, options: &RunOptions) -> Result<Conversation> {
        if batch == 0 {
            return Err(EngineError::InvalidInput("0 conversation slots".into()));
        }
        Ok(Conversation::new(self.lm.new_slots(batch, options)?, false))
    }

    /// Feed row `row` a PersonaPlex prompt (`persona::prepare_prompt` makes one) from its next
    /// frame on: the row must be at its start (a new conversation, or a slot just reset). Each of
    /// its next frames is one prompt frame (its audio in ignored, nothing out) until the last,
    /// which gives the prompt's last frame (PAD and silence) as the row's first output, as the
    /// reference's first conversation call does; Mimi starts afresh for the row after it. The
    /// other rows go on. Refused for models without prompt training.
    pub fn start_prompt(&self, conv: &mut Conversation, row: usize, prompt: &crate::lm::LmPrompt) -> Result<()> {
        self.lm.start_prompt(&mut conv.lm, row, prompt)?;
        conv.dec_fresh[row] = true;
        Ok(())
    }

    /// Prefill the prompt (`LmModel::prefill_prompts`): every prompt frame but the last in one
    /// temporal forward, when every row is at the same point of a prompt. Returns the frames
    /// done; the next `step` is the prompt's last frame.
    pub fn prefill_prompt(&self, conv: &mut Conversation) -> Result<usize> {
        let n = self.lm.prefill_prompts(&mut conv.lm)?;
        conv.frames += n;
        Ok(n)
    }

    /// Prefill row `row`'s prompt (given by `start_prompt`, not yet stepped) on its own instead of
    /// stepping it with the batch (`lm::row_prefill`): `advance_prefills` runs it, in chunks, and
    /// splices it in; the row's replies are withheld meanwhile, the other rows go on. False when
    /// the prompt has nothing to prefill (it is then stepped as before).
    pub fn prefill_row(&self, conv: &mut Conversation, row: usize) -> Result<bool> {
        self.lm.begin_row_prefill(&mut conv.lm, row)
    }

    /// Run up to `budget.max_positions` positions of the rows being prefilled; those spliced take
    /// their prompt's last frame at the next `step` (see `LmModel::advance_row_prefills`).
    pub fn advance_prefills(&self, conv: &mut Conversation, budget: &crate::lm::PrefillBudget) -> Result<crate::lm::PrefillProgress> {
        self.lm.advance_row_prefills(&mut conv.lm, budget)
    }

    /// One frame of the user's audio per row (B × `frame_size` samples at 24 kHz, row-major).
    pub fn step(&self, conv: &mut Conversation, pcm: &[f32]) -> Result<FrameOut> {
        let (n, b) = (self.frame_size(), conv.batch);
        if pcm.len() != b * n {
            return Err(EngineError::InvalidInput(format!("a frame has {b} × {n} samples, {} given", pcm.len())));
        }
        let device = self.mimi.device();
        let t = Instant::now();
        // Rows being prompted ignore their audio: when every row is, Mimi is not run at all.
        let user_codes: Vec<i64> = if (0..b).all(|r| conv.lm.prompting(r)) {
            vec![0; b * self.lm.config().user_streams()]
        } else {
            let x = Tensor::from_slice(pcm, (b, 1, n), device)?.to_dtype(self.mimi.dtype())?;
            let codes = self.mimi.encode_step(&x, &mut conv.enc)?;
            codes.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?
        };
        let encode_ms = ms(t);

        let t = Instant::now();
        if conv.frames == 0 && conv.repeat_first_frame && !(0..b).any(|r| conv.lm.prompting(r)) {
            // The reference discards what this first call returns.
            self.lm.step(&mut conv.lm, &user_codes)?;
        }
        let out = self.lm.step(&mut conv.lm, &user_codes)?;
        let lm_ms = ms(t);
        for (row, &done) in out.prompt_done.iter().enumerate() {
            if done {
                // The reference resets Mimi after the prompts: the row's next frame is the first
                // of its conversation (its decoder starts afresh at its first ready tokens, the
                // prompt's last frame, below). A lone row gets a wholly fresh state.
                if b == 1 {
                    conv.enc.reset();
                } else {
                    conv.enc.reset_row(row, b);
                }
            }
        }

        let t = Instant::now();
        let (pcm, text) = match &out.tokens {
            Some(tokens) => {
                for (row, fresh) in conv.dec_fresh.iter_mut().enumerate() {
                    if *fresh && out.ready[row] {
                        if b == 1 {
                            conv.dec.reset();
                        } else {
                            conv.dec.reset_row(row, b);
                        }
                        *fresh = false;
                    }
                }
                let k = self.lm.config().agent_streams();
                let rows: Vec<&[i64]> = tokens.chunks(1 + k).collect();
                let audio: Vec<i64> = rows.iter().flat_map(|r| r[1..].iter().copied()).collect();
                let audio = Tensor::from_vec(audio, (b, k, 1), device)?;
                let y = self.mimi.decode_step(&audio, &mut conv.dec)?;
                let y: Vec<f32> = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                (Some(y), Some(rows.iter().map(|r| r[0] as u32).collect()))
            }
            None => (None, None),
        };
        let decode_ms = ms(t);
        conv.frames += 1;
        Ok(FrameOut {
            user_codes,
            pcm,
            text,
            ready: out.ready,
            prompting: out.prompting,
            tokens: out.tokens,
            times: StageTimes { encode_ms, lm_ms, decode_ms, temporal_ms: out.temporal_ms, depformer_ms: out.depformer_ms },
        })
    }
}

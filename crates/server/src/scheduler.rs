//! The batch: one thread owns the model and a [`Conversation`] of `max_conversations` slots, and
//! every 80 ms steps all of them together (one batched Mimi encode + LM step + Mimi decode).
//! Connections join (a free slot is reset for them, with their own sampling settings and seed)
//! and leave (the slot is free at once) through a control channel; their audio flows through
//! bounded per-slot buffers, so neither a fast sender nor a slow reader can grow memory:
//! - input: each connection's decoded samples wait in a buffer of at most `max_buffered_input_s`
//!   (the oldest dropped past it); at each tick a slot takes one frame, or silence if its client
//!   has not sent enough (an underrun: live audio cannot wait);
//! - output: each frame's reply goes into a channel of `max_queued_output_frames`; when it is
//!   full the frame is dropped for that client only.
//!
//! While no conversation is active the thread sleeps on the control channel: nothing is computed.
//! Idle slots of a busy batch are stepped on silence (the batch has a fixed size; see
//! docs/serve.md).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moshi_engine::conversation::{Conversation, Moshi};
use moshi_engine::exec::RunOptions;
use moshi_engine::lm::PrefillBudget;
use tokio::sync::{mpsc, oneshot};

use crate::config::SessionParams;
use crate::metrics::Metrics;

/// What the batch sends a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// One frame (1920 samples at 24 kHz) of Moshi's voice.
    Audio(Vec<f32>),
    /// A transcript piece (Kyutai's form: the SentencePiece piece with `▁` as a space).
    Text(String),
    /// The batch failed; the conversation is over.
    Error(String),
    /// The conversation's PersonaPlex prompt has been fed: it can start (the handshake is sent
    /// after the prompt, as NVIDIA's server sends it).
    Ready,
}

/// A connection's side of its slot.
pub struct SlotIo {
    input: Mutex<VecDeque<f32>>,
    max_input: usize,
    replies: mpsc::Sender<Reply>,
}

impl SlotIo {
    /// Queue user samples (24 kHz); returns how many old samples were dropped to stay bounded.
    pub fn push_input(&self, samples: &[f32]) -> usize {
        let mut q = self.input.lock().expect("input lock");
        q.extend(samples.iter().copied());
        let extra = q.len().saturating_sub(self.max_input);
        q.drain(..extra);
        extra
    }

    fn take_frame(&self, n: usize) -> Option<Vec<f32>> {
        let mut q = self.input.lock().expect("input lock");
        (q.len() >= n).then(|| q.drain(..n).collect())
    }
}

/// Why a conversation could not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JoinError {
    #[error("the server is at capacity ({0} conversations); try again later")]
    Full(usize),
    #[error("the model is not running: {0}")]
    Down(String),
    /// The conversation's prompt cannot be used (a model without prompt training, a bad voice…).
    #[error("{0}")]
    Prompt(String),
}

enum Control {
    Join { params: SessionParams, io: Arc<SlotIo>, reply: oneshot::Sender<Result<usize, JoinError>> },
    Leave { slot: usize, io: Arc<SlotIo> },
    Shutdown,
}

/// A started conversation; dropping it frees the slot.
pub struct Ticket {
    pub slot: usize,
    /// The slot is being fed a prompt: `Reply::Ready` comes when it is done.
    pub prompted: bool,
    pub io: Arc<SlotIo>,
    pub replies: mpsc::Receiver<Reply>,
    tx: Sender<Control>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let _ = self.tx.send(Control::Leave { slot: self.slot, io: self.io.clone() });
    }
}

/// How connections reach the batch (cheap to clone).
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: Sender<Control>,
    active: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    capacity: usize,
    max_input: usize,
    max_output: usize,
}

impl SchedulerHandle {
    /// Ask for a slot. Refused at once when every slot is taken.
    pub async fn join(&self, params: SessionParams) -> Result<Ticket, JoinError> {
        if !self.is_alive() {
            return Err(JoinError::Down("the batch thread has stopped".into()));
        }
        if self.active() >= self.capacity {
            return Err(JoinError::Full(self.capacity));
        }
        let (rtx, rrx) = mpsc::channel(self.max_output);
        let io = Arc::new(SlotIo { input: Mutex::new(VecDeque::new()), max_input: self.max_input, replies: rtx });
        let (otx, orx) = oneshot::channel();
        let prompted = params.prompt.is_some();
        self.tx
            .send(Control::Join { params, io: io.clone(), reply: otx })
            .map_err(|_| JoinError::Down("the batch thread has stopped".into()))?;
        let slot = orx.await.map_err(|_| JoinError::Down("the batch thread has stopped".into()))??;
        Ok(Ticket { slot, prompted, io, replies: rrx, tx: self.tx.clone() })
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Stop the batch thread (conversations in progress end).
    pub fn shutdown(&self) {
        let _ = self.tx.send(Control::Shutdown);
    }

    /// Wait (up to `limit`) until the batch thread has ended and dropped the model: a process
    /// about to exit must not tear the device down under a step in flight.
    pub async fn stopped(&self, limit: std::time::Duration) -> bool {
        let t = std::time::Instant::now();
        while self.is_alive() {
            if t.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }
}

struct Active {
    io: Arc<SlotIo>,
}

/// The batch's size and bounds (`spawn`).
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Conversation slots.
    pub capacity: usize,
    /// Samples of user audio buffered per slot at most.
    pub max_input: usize,
    /// Reply frames queued per slot at most.
    pub max_output: usize,
    /// PersonaPlex: prompt positions prefilled per frame for slots joining with a prompt (the
    /// rest of the frame's time is the others'; `lm::row_prefill`).
    pub prefill_positions: usize,
}

struct Batch {
    moshi: Moshi,
    options: RunOptions,
    prefill_positions: usize,
    conv: Conversation,
    slots: Vec<Option<Active>>,
    active: Arc<AtomicUsize>,
    metrics: Metrics,
}

/// Marks the batch dead however its thread ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Start the batch thread over `moshi` with `limits.capacity` slots run with `options`.
pub fn spawn(moshi: Moshi, options: RunOptions, limits: BatchConfig, metrics: Metrics) -> anyhow::Result<SchedulerHandle> {
    let BatchConfig { capacity, max_input, max_output, prefill_positions } = limits;
    anyhow::ensure!(capacity >= 1, "at least one conversation slot is needed");
    anyhow::ensure!(max_output >= 1, "the output queue needs room for one frame");
    anyhow::ensure!(prefill_positions >= 1, "a prompt prefill needs at least one position per frame");
    let conv = moshi.slots(capacity, &options)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let active = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicBool::new(true));
    metrics.conversation_slots.set(capacity as i64);
    let batch = Batch { moshi, options, prefill_positions, conv, slots: (0..capacity).map(|_| None).collect(), active: active.clone(), metrics };
    let guard = AliveGuard(alive.clone());
    std::thread::Builder::new().name("moshi-batch".into()).spawn(move || {
        let _guard = guard;
        batch.run(rx);
    })?;
    Ok(SchedulerHandle { tx, active, alive, capacity, max_input, max_output })
}

impl Batch {
    fn count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    fn set_active(&self) {
        let n = self.count();
        self.active.store(n, Ordering::SeqCst);
        self.metrics.active_conversations.set(n as i64);
    }

    /// Apply one control message; false to stop.
    fn control(&mut self, c: Control) -> bool {
        match c {
            Control::Shutdown => return false,
            Control::Join { params, io, reply } => {
                let result = match self.slots.iter().position(|s| s.is_none()) {
                    None => Err(JoinError::Full(self.slots.len())),
                    Some(slot) => match self.conv.reset_row(slot, params.gen, params.seed).map_err(|e| JoinError::Down(e.to_string())).and_then(|()| {
                        // PersonaPlex: the slot is fed its prompt over the next frames while the
                        // others talk (a preset's file is read here: small and quick).
                        match &params.prompt {
                            Some(req) => {
                                let p = self.moshi.prepare_prompt(&req.spec()).map_err(|e| JoinError::Prompt(e.to_string()))?;
                                self.moshi.start_prompt(&mut self.conv, slot, &p).map_err(|e| JoinError::Prompt(e.to_string()))?;
                                // Prefilled on its own, in chunks, instead of stepped frame by frame.
                                self.moshi.prefill_row(&mut self.conv, slot).map(|_| ()).map_err(|e| JoinError::Prompt(e.to_string()))
                            }
                            None => Ok(()),
                        }
                    }) {
                        Ok(()) => {
                            self.slots[slot] = Some(Active { io });
                            self.metrics.conversations_started.inc();
                            // Counted before the reply: a client that is in is in the gauge and
                            // in /ready's "full" (the count was set only after the prefill step).
                            self.set_active();
                            Ok(slot)
                        }
                        Err(e) => {
                            // Not left half-prompted: a fresh row, idle until the next join.
                            let _ = self.conv.reset_row(slot, Default::default(), 0);
                            Err(e)
                        }
                    },
                };
                if let (Ok(slot), Err(_)) = (&result, reply.send(result.clone())) {
                    // The connection went away while joining.
                    self.slots[*slot] = None;
                }
                // The time until the next tick is free: start the prefill now.
                self.advance_prefills();
            }
            Control::Leave { slot, io } => {
                // Only if the slot still belongs to that connection (not already re-used).
                if matches!(&self.slots[slot], Some(a) if Arc::ptr_eq(&a.io, &io)) {
                    self.slots[slot] = None;
                }
            }
        }
        self.set_active();
        true
    }

    fn run(mut self, rx: Receiver<Control>) {
        let frame_len = self.moshi.frame_size();
        let frame = Duration::from_secs_f64(frame_len as f64 / 24_000.0);
        let mut next_tick: Option<Instant> = None;
        loop {
            // Idle: sleep until someone joins.
            if self.count() == 0 {
                next_tick = None;
                match rx.recv() {
                    Ok(c) => {
                        if !self.control(c) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
                continue;
            }
            // Busy: take what came in, then wait for the tick.
            let tick = *next_tick.get_or_insert_with(Instant::now);
            loop {
                let wait = tick.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(c) => {
                        if !self.control(c) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if self.count() == 0 {
                continue;
            }
            self.step(frame_len);
            let done = Instant::now();
            if done > tick + frame {
                self.metrics.frames_late.inc();
            }
            // The next frame is due one period later; a batch that fell behind does not try to
            // catch up with a burst (that would only make the following frames late too).
            next_tick = Some((tick + frame).max(done));
        }
    }

    /// Run this frame's share of the joining slots' prompt prefills (`Moshi::advance_prefills`);
    /// a slot whose prefill fails gets the error and is freed.
    fn advance_prefills(&mut self) {
        let pending: Vec<usize> = (0..self.slots.len()).filter(|&r| self.slots[r].is_some() && self.conv.prefill_pending(r)).collect();
        if pending.is_empty() {
            return;
        }
        // Nobody else is talking (or holding a spliced prompt): the batch may be advanced.
        let skip_idle = self.slots.iter().enumerate().all(|(r, s)| s.is_none() || self.conv.prefill_pending(r));
        let budget = PrefillBudget { max_positions: self.prefill_positions, skip_idle };
        let t = Instant::now();
        let progress = match self.moshi.advance_prefills(&mut self.conv, &budget) {
            Ok(p) => p,
            Err(e) => {
                let failed = pending.iter().map(|&r| (r, e.to_string())).collect();
                moshi_engine::lm::PrefillProgress { failed, ..Default::default() }
            }
        };
        if progress.positions > 0 {
            self.metrics.observe_prefill(progress.positions, t.elapsed().as_secs_f64());
        }
        for (row, e) in progress.failed {
            tracing::error!(row, error = %e, "a prompt prefill failed");
            self.metrics.error("prefill");
            if let Some(a) = self.slots[row].take() {
                let _ = a.io.replies.try_send(Reply::Error(format!("the prompt could not be fed: {e}")));
            }
            let _ = self.conv.reset_row(row, Default::default(), 0);
        }
        self.set_active();
    }

    fn step(&mut self, n: usize) {
        self.advance_prefills();
        let b = self.slots.len();
        let mut pcm = vec![0f32; b * n];
        for (row, slot) in self.slots.iter().enumerate() {
            if let Some(a) = slot {
                match a.io.take_frame(n) {
                    Some(f) => pcm[row * n..(row + 1) * n].copy_from_slice(&f),
                    None => self.metrics.input_underruns.inc(),
                }
            }
        }
        let t = Instant::now();
        let out = self.moshi.step(&mut self.conv, &pcm);
        self.metrics.observe_step(t.elapsed().as_secs_f64());
        self.metrics.frames_stepped.inc();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "batched step failed; ending every conversation");
                self.metrics.error("engine");
                let msg = format!("the model failed: {e}");
                for slot in self.slots.iter_mut() {
                    if let Some(a) = slot.take() {
                        let _ = a.io.replies.try_send(Reply::Error(msg.clone()));
                    }
                }
                match self.moshi.slots(b, &self.options) {
                    Ok(c) => self.conv = c,
                    Err(e) => tracing::error!(error = %e, "cannot rebuild the batch"),
                }
                self.set_active();
                return;
            }
        };
        let mut gone = Vec::new();
        for (row, slot) in self.slots.iter().enumerate() {
            let Some(a) = slot else { continue };
            if !out.ready[row] {
                continue;
            }
            let send = |r: Reply| match a.io.replies.try_send(r) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.output_dropped_frames.inc();
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            };
            let audio = out.pcm.as_ref().map(|p| p[row * n..(row + 1) * n].to_vec()).unwrap_or_else(|| vec![0.0; n]);
            // The prompt's last frame: the conversation starts (its first reply is this frame).
            let mut open = !out.prompting[row] || send(Reply::Ready);
            open &= send(Reply::Audio(audio));
            if let Some(id) = out.text.as_ref().map(|t| t[row]) {
                // As Kyutai's servers: no pad (3) or end-of-padding (0); and no other control
                // pieces (`<s>`, `</s>`), which are not text.
                if id != 0 && id != 3 && !self.moshi.tokenizer.is_control(id) {
                    if let Some(piece) = self.moshi.tokenizer.id_to_piece(id) {
                        open &= send(Reply::Text(piece.replace('▁', " ")));
                    }
                }
            }
            if !open {
                gone.push(row);
            }
        }
        for row in gone {
            self.slots[row] = None;
        }
        self.set_active();
    }
}

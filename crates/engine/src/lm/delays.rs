//! The token bookkeeping of the streaming step, apart from any model so that it can be tested
//! with symbolic tokens (docs/lm.md has the same rules with examples).
//!
//! Streams k = 0..K: 0 text, 1..=G−1 the model's audio (G generated streams in all), then the
//! user's audio; D_k the delays, M = max D. Every stream has a position sequence X_k[p]:
//! - generated streams: what step n sampled is written at position n + 1;
//! - user streams: the code given at step n is written at position n + D_k.
//!
//! The input of step n is X_k[n], or the stream's initial token while n ≤ D_k. Step n returns
//! nothing while n < M, then X_k[n + 1 − M + D_k] for each generated stream: the tokens of time
//! index n − M, all streams aligned.
//!
//! Any position of any stream can also be *forced* (PersonaPlex's prompts, the reference's
//! "provided" mask): [`DelayBuffer::force`] writes a token there and marks it, and a forced token
//! is never overwritten, neither by what a step samples nor by the user's codes. Marks belong to
//! a position, not to its ring slot: a slot taken over by a later position starts unmarked, and
//! `reset_row` clears a row's marks.

use crate::error::{EngineError, Result};

/// Recent positions of every stream of B rows.
#[derive(Debug, Clone)]
pub struct DelayBuffer {
    delays: Vec<usize>,
    initial: Vec<i64>,
    generated: usize,
    batch: usize,
    /// Slots kept; position p lives in slot p mod ring.
    ring: usize,
    /// `((slot · K) + k) · B + row`
    hist: Vec<i64>,
    step: usize,
    /// Per row, the step at which its stream began (rows joining a running batch count their
    /// own steps from there: row step = `step − starts[row]`).
    starts: Vec<usize>,
    /// Per row, whether the last `record` returned its tokens.
    ready: Vec<bool>,
    /// Same layout as `hist`: the token there was forced.
    forced: Vec<bool>,
    /// `slot · B + row`: the row position the slot holds now (`usize::MAX`: none).
    slot_pos: Vec<usize>,
}

impl DelayBuffer {
    /// `delays` and `initial` per stream; the first `generated` streams are the model's.
    pub fn new(delays: &[usize], initial: &[i64], generated: usize, batch: usize) -> Result<Self> {
        if delays.len() != initial.len() || generated == 0 || generated > delays.len() || batch == 0 {
            return Err(EngineError::InvalidInput(format!(
                "delay buffer: {} delays, {} initial tokens, {generated} generated streams, batch {batch}",
                delays.len(),
                initial.len()
            )));
        }
        let m = delays.iter().copied().max().unwrap_or(0);
        // Live positions at step n run from n + 1 − M (oldest output) to n + M (newest user
        // write): 2M positions, plus X[n] and X[n + 1] when M = 0.
        let ring = 2 * m + 2;
        Ok(Self {
            delays: delays.to_vec(),
            initial: initial.to_vec(),
            generated,
            batch,
            ring,
            hist: vec![0; ring * delays.len() * batch],
            step: 0,
            starts: vec![0; batch],
            ready: vec![false; batch],
            forced: vec![false; ring * delays.len() * batch],
            slot_pos: vec![usize::MAX; ring * batch],
        })
    }

    /// Make position `p` of row `row` the one its slot holds: a slot still holding an older
    /// position is cleared (tokens and marks) first.
    fn claim(&mut self, p: usize, row: usize) {
        let slot = p % self.ring;
        if self.slot_pos[slot * self.batch + row] != p {
            self.slot_pos[slot * self.batch + row] = p;
            for k in 0..self.delays.len() {
                let i = self.at(p, k, row);
                self.hist[i] = 0;
                self.forced[i] = false;
            }
        }
    }

    /// Force stream `stream` of row `row` to `token` at position `pos` (counted from the row's
    /// start, as `row_step`). Positions from the next step's input to the furthest one a step
    /// writes can be forced: `row_step ..= row_step + max(M, 1)`. A later force of the same
    /// position replaces an earlier one.
    pub fn force(&mut self, row: usize, pos: usize, stream: usize, token: i64) -> Result<()> {
        if row >= self.batch || stream >= self.delays.len() {
            return Err(EngineError::InvalidInput(format!(
                "force: row {row} of {}, stream {stream} of {}",
                self.batch,
                self.delays.len()
            )));
        }
        let n = self.row_step(row);
        let last = n + self.max_delay().max(1);
        if pos < n || pos > last {
            return Err(EngineError::InvalidInput(format!(
                "force: position {pos} of row {row} is outside the positions a step can still read ({n}..={last})"
            )));
        }
        self.claim(pos, row);
        let i = self.at(pos, stream, row);
        self.hist[i] = token;
        self.forced[i] = true;
        Ok(())
    }

    /// The forced token of stream `stream` at position `pos` of row `row`, if there is one.
    pub fn forced(&self, row: usize, pos: usize, stream: usize) -> Option<i64> {
        let slot = pos % self.ring;
        (self.slot_pos[slot * self.batch + row] == pos && self.forced[self.at(pos, stream, row)])
            .then(|| self.hist[self.at(pos, stream, row)])
    }

    /// The forced token of stream `stream` at the position the next step samples (its target,
    /// `row_step + 1`), if there is one.
    pub fn forced_target(&self, row: usize, stream: usize) -> Option<i64> {
        self.forced(row, self.row_step(row) + 1, stream)
    }

    /// Row `row` starts a new stream at the next step (its history is never read again: every
    /// position a fresh stream reads is written after its start).
    pub fn reset_row(&mut self, row: usize) -> Result<()> {
        if row >= self.batch {
            return Err(EngineError::InvalidInput(format!("row {row} of a batch of {}", self.batch)));
        }
        self.starts[row] = self.step;
        self.ready[row] = false;
        for slot in 0..self.ring {
            self.slot_pos[slot * self.batch + row] = usize::MAX;
        }
        Ok(())
    }

    /// Make row `row` continue `src`, a one-row buffer that ran on its own (a joining row's
    /// prompt prefilled alone): its positions, forced marks and readiness are copied and the
    /// row's start moved back so that its row step is `src`'s. Needs this buffer to have taken at
    /// least as many steps as `src` and the same delays.
    pub fn splice_row(&mut self, row: usize, src: &DelayBuffer) -> Result<()> {
        if src.batch != 1 || src.delays != self.delays || row >= self.batch || src.step > self.step {
            return Err(EngineError::Streaming(format!(
                "delay splice: a {}-row buffer at step {} into row {row} of {} at step {}",
                src.batch, src.step, self.batch, self.step
            )));
        }
        let kk = self.delays.len();
        for slot in 0..self.ring {
            self.slot_pos[slot * self.batch + row] = src.slot_pos[slot];
            for k in 0..kk {
                let (d, s) = ((slot * kk + k) * self.batch + row, slot * kk + k);
                self.hist[d] = src.hist[s];
                self.forced[d] = src.forced[s];
            }
        }
        self.starts[row] = self.step - src.step;
        self.ready[row] = src.ready[0];
        Ok(())
    }

    /// Advance by `steps` steps without writing anything: only for a batch whose every row is
    /// about to start afresh (`reset_row`) or be spliced (`splice_row`), which read nothing from
    /// before their start.
    pub fn skip(&mut self, steps: usize) {
        self.step += steps;
    }

    /// The step the next `input` call prepares, counted from row `row`'s start.
    pub fn row_step(&self, row: usize) -> usize {
        self.step - self.starts[row]
    }

    /// Per row: whether the last `record` gave its aligned tokens.
    pub fn ready(&self) -> &[bool] {
        &self.ready
    }

    pub fn max_delay(&self) -> usize {
        self.delays.iter().copied().max().unwrap_or(0)
    }

    /// The step the next `input` call prepares.
    pub fn step(&self) -> usize {
        self.step
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    fn at(&self, p: usize, k: usize, row: usize) -> usize {
        ((p % self.ring) * self.delays.len() + k) * self.batch + row
    }

    /// Write the user's codes of this step ([B, K − G] row-major; not where forced) and return
    /// the model input of this step ([B, K] row-major).
    pub fn input(&mut self, user: &[i64]) -> Result<Vec<i64>> {
        let (b, kk, g, n) = (self.batch, self.delays.len(), self.generated, self.step);
        let u = kk - g;
        if user.len() != b * u {
            return Err(EngineError::InvalidInput(format!(
                "step {n}: {} user codes given, expected {b} rows × {u} codebooks",
                user.len()
            )));
        }
        for j in 0..u {
            for row in 0..b {
                let p = self.row_step(row) + self.delays[g + j];
                self.claim(p, row);
                let i = self.at(p, g + j, row);
                if !self.forced[i] {
                    self.hist[i] = user[row * u + j];
                }
            }
        }
        let mut input = vec![0i64; b * kk];
        for row in 0..b {
            let n = self.row_step(row);
            for k in 0..kk {
                input[row * kk + k] =
                    if n <= self.delays[k] { self.initial[k] } else { self.hist[self.at(n, k, row)] };
            }
        }
        Ok(input)
    }

    /// Record what this step sampled ([B, G] row-major; not where forced), advance, and return
    /// the aligned output ([B, G] row-major) once the delays are filled.
    pub fn record(&mut self, sampled: &[i64]) -> Result<Option<Vec<i64>>> {
        let (b, g, n) = (self.batch, self.generated, self.step);
        if sampled.len() != b * g {
            return Err(EngineError::InvalidInput(format!("step {n}: {} sampled tokens, expected {b} × {g}", sampled.len())));
        }
        for row in 0..b {
            let p = self.row_step(row) + 1;
            self.claim(p, row);
            for k in 0..g {
                let i = self.at(p, k, row);
                if !self.forced[i] {
                    self.hist[i] = sampled[row * g + k];
                }
            }
        }
        let m = self.max_delay();
        // Rows still filling their delays get zeros (valid codes for a batched decode; never shown).
        let mut out = vec![0i64; b * g];
        for row in 0..b {
            let n = self.row_step(row);
            self.ready[row] = n >= m;
            for k in 0..g {
                out[row * g + k] =
                    if n >= m { self.hist[self.at(n + 1 - m + self.delays[k], k, row)] } else { 0 };
            }
        }
        self.step += 1;
        Ok(self.ready.iter().any(|&r| r).then_some(out))
    }
}

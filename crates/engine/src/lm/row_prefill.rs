//! A row joining a running batch with a PersonaPlex prompt, without making it step its prompt one
//! frame at a time beside the others (≈ 70–250 frames, seconds before its handshake) and without
//! holding them up: the row's prompt is prefilled in a one-row state of its own, in chunks of
//! positions the caller sizes to the time a frame leaves, then spliced into the batch.
//!
//! Why a splice is exact. Rows share the batch's positions (one write position per KV cache) but
//! each counts its own from its start (`TransformerState::reset_row`): attention is masked to the
//! row's keys from its start on, and RoPE sees positions relative to it. Prefilled alone, the
//! prompt's n frames fill positions 0 … n − 1 of the one-row state; copied into the row's last n
//! ring slots of the batch with the row's start moved back n positions, the row's next step sees
//! the same keys and values at the same relative positions, and the delay ring's row (positions
//! counted from the row's start as well) is copied as it stands. Until the splice the batch steps
//! the row as an idle one (its replies are withheld and its noise source is restored after), so
//! the others go on undisturbed. The prompt's last frame, which samples, is then stepped with the
//! batch as any prompt's last frame.
//!
//! A batch younger than the prompt (fewer positions behind it than n) can take the splice only
//! if nobody else in it is talking: then it is advanced without computing (`PrefillBudget::
//! skip_idle`); otherwise the splice waits until the batch is n positions in.
//! Equal to stepping: tests/personaplex_engine.rs (`a_prefilled_row_joins_as_a_stepped_one`).

use super::generate::LmGenState;
use super::model::LmModel;
use super::sampling::SeededNoise;
use super::GenConfig;
use crate::error::{EngineError, Result};

/// A row's prompt being prefilled on its own.
pub(super) struct RowPrefill {
    /// The one-row state the prompt runs in.
    sub: Box<LmGenState>,
    /// The row's noise as `reset_row` left it: restored at the splice, since the batch samples
    /// the row as an idle one meanwhile.
    noise: SeededNoise,
}

/// How much prefill one call may do (`LmModel::advance_row_prefills`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillBudget {
    /// Prompt positions to run in this call, over every pending row.
    pub max_positions: usize,
    /// Nobody but the rows being prefilled is in a conversation: a batch with fewer positions
    /// than a prompt may be advanced without computing so that the prompt fits behind it.
    pub skip_idle: bool,
}

/// What `advance_row_prefills` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefillProgress {
    /// Positions run.
    pub positions: usize,
    /// Rows spliced: their next step is their prompt's last frame.
    pub spliced: Vec<usize>,
    /// Rows whose prefill failed (and was dropped: the row is idle again), with the error.
    pub failed: Vec<(usize, String)>,
}

impl LmModel {
    /// Move row `row`'s prompt (`start_prompt`, not yet stepped) to a prefill of its own; false
    /// (and nothing changed) when there is nothing to prefill (a prompt of one frame). Only for
    /// conversation slots (`new_slots`).
    pub fn begin_row_prefill(&self, st: &mut LmGenState, row: usize) -> Result<bool> {
        if row >= st.batch() || st.rows.len() != st.batch() {
            return Err(EngineError::Prompt(format!("row prefill: row {row} of a batch of {} slots", st.rows.len())));
        }
        let Some(run) = st.prompts[row].as_ref() else {
            return Err(EngineError::Prompt(format!("row prefill: row {row} has no prompt (start_prompt first)")));
        };
        if st.tokens().row_step(row) != 0 || run.frame_count() < 2 {
            return Ok(false);
        }
        let mut sub = self.new_state(1, GenConfig::greedy(), 0, st.options())?;
        sub.prompts[0] = st.prompts[row].take();
        st.pending[row] = Some(RowPrefill { sub: Box::new(sub), noise: st.rows[row].1.clone() });
        Ok(true)
    }

    /// Run up to `budget.max_positions` prompt positions of the rows being prefilled, and splice
    /// those that are done into the batch (see the module docs).
    pub fn advance_row_prefills(&self, st: &mut LmGenState, budget: &PrefillBudget) -> Result<PrefillProgress> {
        let (b, capacity) = (st.batch(), self.config().context);
        let mut out = PrefillProgress::default();
        for row in 0..b {
            let Some(p) = st.pending[row].as_mut() else { continue };
            let frames = p.sub.prompts[0].as_ref().map_or(0, |r| r.frame_count());
            let left = (frames - 1).saturating_sub(p.sub.row_step(0));
            if left > 0 {
                let k = left.min(budget.max_positions - out.positions);
                if k == 0 {
                    continue;
                }
                match self.prefill_prompts_upto(&mut p.sub, k) {
                    Ok(done) if done == k => out.positions += k,
                    Ok(done) => {
                        st.pending[row] = None;
                        out.failed.push((row, format!("the prompt's prefill stopped after {done} of {k} positions")));
                        continue;
                    }
                    Err(e) => {
                        st.pending[row] = None;
                        out.failed.push((row, e.to_string()));
                        continue;
                    }
                }
                if k < left {
                    continue;
                }
            }
            let n = p.sub.row_step(0);
            if st.temporal.offset() < n || st.tokens().step() < n {
                if !budget.skip_idle {
                    continue;
                }
                st.temporal.skip(n.saturating_sub(st.temporal.offset()));
                let behind = n.saturating_sub(st.tokens().step());
                st.tokens_mut().skip(behind);
            }
            let p = st.pending[row].take().expect("pending above");
            let mut sub = *p.sub;
            let spliced = st
                .temporal
                .splice_row(row, b, sub.temporal_mut(), capacity)
                .and_then(|()| st.tokens_mut().splice_row(row, sub.tokens()));
            match spliced {
                Ok(()) => {
                    st.prompts[row] = sub.prompts[0].take();
                    st.rows[row].1 = p.noise;
                    out.spliced.push(row);
                }
                Err(e) => out.failed.push((row, e.to_string())),
            }
        }
        Ok(out)
    }
}

//! Weights that may differ per position: the depformer has one set of attention projections and
//! FFN weights for each of its steps (codebook k uses set k), while Mimi and the temporal
//! transformer share one set across positions. `PerStep` holds either form behind one call.
//!
//! Where the sets come from in a checkpoint is the layout's business ([`StepLayout`]):
//! - shared: one module under the layer's prefix;
//! - stacked (Kyutai's PyTorch files): attention projections stacked along dim 0
//!   (`in_proj_weight` [steps·3d, d], `out_proj.weight` [steps·d, d]), FFNs `gating.{k}`, norms shared;
//! - sliced (Kyutai's Candle files): a whole transformer per step, `depformer.{k}.transformer`,
//!   norms included (the converted files repeat the shared norms in every slice).

use candle_core::Tensor;

use crate::error::{EngineError, Result};
use crate::weights::Weights;

/// One module, or one per step position.
#[derive(Debug, Clone)]
pub struct PerStep<M> {
    items: Vec<M>,
    per_step: bool,
    /// Position p uses item `schedule[p]` (Kyutai's `weights_per_step_schedule`); empty: item p.
    schedule: Vec<usize>,
}

impl<M> PerStep<M> {
    pub fn shared(m: M) -> Self {
        Self { items: vec![m], per_step: false, schedule: Vec::new() }
    }

    #[allow(clippy::self_named_constructors)] // the other form is `shared`
    pub fn per_step(items: Vec<M>) -> Self {
        Self { items, per_step: true, schedule: Vec::new() }
    }

    /// Per-step items shared by positions as `schedule` says (position p uses item
    /// `schedule[p]`); shared items and `None` are left as they are.
    pub fn scheduled(mut self, schedule: Option<&[usize]>) -> Result<Self> {
        if let (true, Some(s)) = (self.per_step, schedule) {
            if let Some(bad) = s.iter().find(|&&i| i >= self.items.len()) {
                return Err(EngineError::InvalidInput(format!("weight schedule names set {bad} of {}", self.items.len())));
            }
            self.schedule = s.to_vec();
        }
        Ok(self)
    }

    /// Whether there is one item per step position (else one shared by all).
    pub fn is_per_step(&self) -> bool {
        self.per_step
    }

    /// Every weight set (one when shared).
    pub fn items(&self) -> &[M] {
        &self.items
    }

    /// The module used at absolute position `pos`.
    pub fn at(&self, pos: usize) -> Result<&M> {
        if !self.per_step {
            return Ok(&self.items[0]);
        }
        let pos = if self.schedule.is_empty() {
            pos
        } else {
            *self.schedule.get(pos).ok_or_else(|| {
                EngineError::Streaming(format!("position {pos} has no weights: the schedule has {} steps", self.schedule.len()))
            })?
        };
        self.items.get(pos).ok_or_else(|| {
            EngineError::Streaming(format!(
                "position {pos} has no weights: this transformer has one weight set per step for {} steps \
                 (reset its state between frames)",
                self.items.len()
            ))
        })
    }

    /// Apply to `x` [B, T, ..] whose first position is `offset`: one call for shared weights,
    /// else position by position with that position's weights, concatenated along T.
    pub fn apply(&self, x: &Tensor, offset: usize, f: impl Fn(&M, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        if !self.per_step {
            return f(&self.items[0], x);
        }
        let t = x.dim(1)?;
        let parts = (0..t).map(|i| f(self.at(offset + i)?, &x.narrow(1, i, 1)?)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1)?)
    }
}

/// How a transformer's weights are laid out in the checkpoint (see the module docs).
#[derive(Clone)]
pub enum StepLayout<'a> {
    /// One weight set under this prefix (the parent of `layers`).
    Shared(Weights<'a>),
    /// Kyutai's PyTorch layout with `steps` weight sets, under this prefix.
    Stacked(Weights<'a>, usize),
    /// Kyutai's Candle layout: one prefix per step (each the parent of its `layers`).
    Sliced(Vec<Weights<'a>>),
}

impl<'a> StepLayout<'a> {
    /// The layout of layer `i`.
    pub fn layer(&self, i: usize) -> StepLayout<'a> {
        match self {
            StepLayout::Shared(vb) => StepLayout::Shared(vb.pp("layers").pp(i)),
            StepLayout::Stacked(vb, n) => StepLayout::Stacked(vb.pp("layers").pp(i), *n),
            StepLayout::Sliced(vbs) => StepLayout::Sliced(vbs.iter().map(|vb| vb.pp("layers").pp(i)).collect()),
        }
    }

    /// The same layout one level down (`name`), e.g. into `self_attn`.
    pub fn pp(&self, name: &str) -> StepLayout<'a> {
        match self {
            StepLayout::Shared(vb) => StepLayout::Shared(vb.pp(name)),
            StepLayout::Stacked(vb, n) => StepLayout::Stacked(vb.pp(name), *n),
            StepLayout::Sliced(vbs) => StepLayout::Sliced(vbs.iter().map(|vb| vb.pp(name)).collect()),
        }
    }

    /// A module that the PyTorch layout shares across steps (the norms): one for shared and
    /// stacked weights, one per slice in the Candle layout.
    pub fn shared_in_stacked<M>(&self, load: impl Fn(&Weights<'a>) -> Result<M>) -> Result<PerStep<M>> {
        match self {
            StepLayout::Shared(vb) | StepLayout::Stacked(vb, _) => Ok(PerStep::shared(load(vb)?)),
            StepLayout::Sliced(vbs) => Ok(PerStep::per_step(vbs.iter().map(&load).collect::<Result<_>>()?)),
        }
    }
}

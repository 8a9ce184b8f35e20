//! Building blocks shared by every model: streaming convolutions, norms, rotary embeddings,
//! attention, and the one transformer used by Mimi, the temporal LM and the depformer, which
//! differ by configuration only. They hold weights and streaming state and say *what* to
//! compute; *how* each op runs on each device is `exec`'s choice.

pub mod attention;
pub mod conv;
pub mod linear;
pub mod norm;
pub mod per_step;
pub mod rope;
pub mod transformer;

pub use linear::Linear;

use crate::error::Result;
use crate::weights::Weights;

/// A bias-free linear layer `{prefix}.weight` of shape [out, in] (8-bit where `vb` says so).
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: &Weights) -> Result<Linear> {
    vb.linear([out_dim, in_dim], "weight")
}

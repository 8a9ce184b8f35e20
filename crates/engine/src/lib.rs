//! moshi-rs core library: Kyutai's Mimi codec (and, in later issues, the Moshi LM) on Candle,
//! built to match the PyTorch reference (`moshi` 0.2.13) stage by stage.
//!
//! The data flow: `audio` (decode, resample to 24 kHz mono, frame) → `mimi` (SEANet → transformer →
//! downsample → split RVQ codes, and back). `nn` holds the building blocks shared by every model:
//! streaming convolutions and the one transformer used for all of Mimi, the temporal LM and the
//! depformer. `weights` loads checkpoints and checks names and shapes.

pub mod audio;
pub mod error;
pub mod lm;
pub mod mimi;
pub mod nn;
pub mod text;
pub mod weights;

pub use error::{EngineError, Result};

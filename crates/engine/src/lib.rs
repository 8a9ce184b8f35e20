//! moshi-rs core library: Kyutai's Mimi codec and Moshi LM on Candle, built to match the PyTorch
//! reference (`moshi` 0.2.13) stage by stage.
//!
//! The data flow: `audio` (decode, resample to 24 kHz mono, frame) → `mimi` (SEANet → transformer →
//! downsample → split RVQ codes, and back) → `lm` (temporal transformer, depformer, sampling, the
//! streaming step with its delays) → `text` (SentencePiece transcript); `conversation` runs the three
//! frame by frame. `nn` holds the building blocks shared by every model: streaming convolutions and
//! the one transformer used for Mimi, the temporal LM and the depformer. `exec` is the execution
//! seam: it alone picks how each op runs on each device (our CPU and CUDA kernels or Candle's
//! ops, the Metal policy), and holds the KV cache, the per-call step context and `RunOptions`.
//! `weights` and `model_files` load checkpoints and check names and shapes; `tiny` embeds the
//! reference-built tiny Moshi.

pub mod audio;
pub mod conversation;
pub mod error;
pub mod exec;
pub mod gguf;
pub mod lm;
pub mod mimi;
pub mod model_files;
pub mod nn;
pub mod persona;
pub mod random_model;
pub mod text;
pub mod tiny;
pub mod verify;
pub mod weights;

pub use error::{EngineError, Result};
pub use exec::{device_memory, prepare_device};

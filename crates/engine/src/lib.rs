//! moshi-rs core library: Kyutai's Mimi codec and Moshi LM on Candle, built to match the PyTorch
//! reference (`moshi` 0.2.13) stage by stage.
//!
//! The data flow: `audio` (decode, resample to 24 kHz mono, frame) → `mimi` (SEANet → transformer →
//! downsample → split RVQ codes, and back) → `lm` (temporal transformer, depformer, sampling, the
//! streaming step with its delays) → `text` (SentencePiece transcript); `conversation` runs the three
//! frame by frame. `nn` holds the building blocks shared by every model: streaming convolutions and
//! the one transformer used for Mimi, the temporal LM and the depformer. `weights` and
//! `model_files` load checkpoints and check names and shapes; `tiny` embeds the reference-built
//! tiny Moshi.

pub mod audio;
pub mod conversation;
pub mod error;
pub mod lm;
pub mod mimi;
pub mod model_files;
pub mod nn;
pub mod random_model;
pub mod text;
pub mod tiny;
pub mod verify;
pub mod weights;

pub use error::{EngineError, Result};

/// Make `device` ready for moshi-rs's use, once, right after creating it. CUDA: turn off
/// cudarc's per-buffer event tracking (two events made per allocation, recorded and waited on at
/// every launch: a large part of Candle's per-op host cost at batch 1). That tracking only
/// matters when buffers move between streams; moshi-rs steps a model on one thread's stream and
/// synchronizes after loading it (`MOSHI_CUDA_EVENT_TRACKING=1` keeps it, for A/B runs).
pub fn prepare_device(device: &candle_core::Device) {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        if std::env::var_os("MOSHI_CUDA_EVENT_TRACKING").is_none() {
            // SAFETY: see above: one stream per model, and a synchronize after loading, so no
            // buffer is used on two streams without an order between them.
            unsafe { d.disable_event_tracking() };
        }
    }
    let _ = device;
}

/// Device memory in use and in total (bytes) as the driver reports it: CUDA only (None elsewhere).
pub fn device_memory(device: &candle_core::Device) -> Option<(usize, usize)> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => nn::cuda::memory(d).ok(),
        _ => None,
    }
}

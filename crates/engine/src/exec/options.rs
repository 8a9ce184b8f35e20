//! Per-run choices: what a caller decides for one conversation (or one bare LM or transformer
//! state) rather than for the weights. They are given when the state is made
//! (`Moshi::conversation`, `Moshi::slots`, `LmModel::new_state`, `TransformerState::new`) and kept
//! by that state; the shared weights never hold them, so two conversations over one `Moshi` may
//! differ.
//!
//! The device and the dtype are the loader's: weights are loaded in a dtype on a device
//! (`MoshiFiles::load`, `tiny::load_moshi`, `Mimi::load`, `LmModel::load` take them), and a state
//! computes wherever its model's weights are.

use super::kv_cache::KvCacheKind;
use super::sampler::Sampler;

/// What a conversation (or an LM or transformer state) runs with; `Default` is the reference's
/// behaviour: a KV cache in the model's dtype, eager execution, sampling on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct RunOptions {
    /// How the LM's temporal transformer stores its streaming keys and values. Mimi's caches and
    /// the depformer's (small, one frame deep) stay in the model's dtype.
    pub kv_cache: KvCacheKind,
    /// On CUDA, replay the parts of a step that `exec::graph` captures (the temporal step, and
    /// the depformer's steps with their sampling on the device sampler) instead of launching
    /// their ops one by one. No effect elsewhere; the tokens are the same either way (`verify
    /// model`).
    pub cuda_graphs: bool,
    /// Where tokens are sampled: on the model's device where it can (CUDA), or on the host.
    /// Both give the same tokens for the same noise (`exec::sampler`).
    #[serde(default)]
    pub sampler: Sampler,
}

impl RunOptions {
    /// These options with the KV cache stored as `kind`.
    pub fn with_kv_cache(self, kind: KvCacheKind) -> Self {
        Self { kv_cache: kind, ..self }
    }
}

//! The Moshi language model: configuration and checkpoint layouts (`config`, `model`), the
//! temporal transformer (`temporal`), the depformer (`depformer`), sampling (`sampling`) and the
//! streaming step with the reference's delays (`generate`; its device-sampled depformer chain,
//! eager or as a CUDA graph, in `frame_graph`; the temporal step's graph in `temporal_graph`).

pub mod config;
pub mod config_file;
pub mod delays;
pub mod depformer;
pub mod frame_graph;
pub mod generate;
pub mod model;
pub mod prompt;
pub mod random;
pub mod row_prefill;
pub mod sampling;
pub mod temporal;
pub mod temporal_graph;
mod tensors;

pub use config::{LmConfig, PersonaPlexConfig};
pub use config_file::LmGenDefaults;
pub use frame_graph::GraphState;
pub use generate::{GenConfig, LmGenState, StepOut};
pub use prompt::{LmPrompt, VoiceEmbeddings, VoicePrompt};
pub use row_prefill::{PrefillBudget, PrefillProgress};
pub use model::{check_checkpoint, Layout, LmModel, TeacherForced};
pub use sampling::{Noise, ReplayNoise, SamplingConfig, SeededNoise};

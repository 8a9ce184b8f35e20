//! The Moshi language model (issue 3, in progress): so far its configuration and the checkpoint
//! layout it implies. The model itself reuses `nn::transformer` (RMSNorm-f32, gated SiLU).

pub mod config;

pub use config::LmConfig;

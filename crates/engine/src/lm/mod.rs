//! The Moshi language model (issue 3, in progress): its configuration, the checkpoint layout it
//! implies, and the temporal model. The depformer and the streaming step come next.

pub mod config;
pub mod temporal;

pub use config::LmConfig;

//! The library's error type. Binaries wrap it in `anyhow`; the library never panics on bad input.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, each variant naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A tensor operation failed. Candle's own messages already name missing tensors
    /// ("cannot find tensor X") and wrong shapes ("shape mismatch for X, expected A, got B").
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A checkpoint tensor exists but has the wrong shape.
    #[error("checkpoint tensor `{name}` has shape {got:?}, expected {expected:?}")]
    WrongShape { name: String, expected: Vec<usize>, got: Vec<usize> },

    /// A checkpoint lacks a tensor the model needs.
    #[error("checkpoint is missing tensor `{name}` (expected shape {expected:?}){hint}")]
    MissingTensor { name: String, expected: Vec<usize>, hint: String },

    /// A checkpoint file does not fit the model (a missing tensor, a wrong shape, a tensor
    /// Candle cannot read): the inner error, with the file it came from.
    #[error("{}: {source}", path.display())]
    Checkpoint { path: PathBuf, source: Box<EngineError> },

    /// A configuration file could not be read or makes no sense.
    #[error("config {path}: {msg}")]
    Config { path: String, msg: String },

    /// A model file or folder could not be found or opened.
    #[error("model files: {msg} ({path})")]
    ModelFiles { path: PathBuf, msg: String },

    /// A streaming call was given input it cannot accept (e.g. a chunk that is not a whole
    /// number of frames, or a batch size that changed mid-stream).
    #[error("streaming: {0}")]
    Streaming(String),

    /// Input tensors of the wrong rank, length or batch size.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A persona or voice prompt cannot be used: a model without prompt training, a voice file
    /// that is missing or of the wrong shape, a prompt longer than the context.
    #[error("prompt: {0}")]
    Prompt(String),

    /// The model produced NaN or infinite values; the message names the step and the layer.
    #[error("numerical failure: {0}")]
    NonFinite(String),

    /// Audio decoding, resampling or writing failed.
    #[error(transparent)]
    Audio(#[from] crate::audio::AudioError),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    /// Name `paths` (the checkpoint files being loaded) in an error about their contents; errors
    /// that already name their file (opening, reading the header) are left as they are.
    pub(crate) fn in_checkpoint(self, paths: &[PathBuf]) -> Self {
        match self {
            EngineError::WrongShape { .. } | EngineError::MissingTensor { .. } | EngineError::Candle(_) => {
                let path = match paths {
                    [one] => one.clone(),
                    many => PathBuf::from(many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")),
                };
                EngineError::Checkpoint { path, source: Box::new(self) }
            }
            other => other,
        }
    }
}

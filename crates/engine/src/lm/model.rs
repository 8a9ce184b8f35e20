//! The whole Moshi LM (temporal model + depformer), loaded from either of Kyutai's checkpoint
//! layouts, with the checkpoint checked name by name from its header before any tensor is read.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::weights::{LoadOptions, Weights};

use super::config::LmConfig;
use super::depformer::Depformer;
use super::temporal::{Temporal, TemporalOut};
use crate::error::{EngineError, Result};

/// Which of Kyutai's checkpoint layouts a file uses (they differ in the depformer only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `kyutai/moshiko-pytorch-bf16` and friends: stacked per-step depformer projections.
    PyTorch,
    /// `kyutai/moshiko-candle-bf16`: the depformer split per step as `depformer.{k}.*`.
    Candle,
}

impl Layout {
    /// Guess from the tensor names present.
    pub fn detect(has: impl Fn(&str) -> bool) -> Option<Layout> {
        if has("depformer.0.linear_in.weight") {
            Some(Layout::Candle)
        } else if has("depformer_in.0.weight") {
            Some(Layout::PyTorch)
        } else {
            None
        }
    }

    /// Every tensor name and shape the layout has for `cfg`.
    pub fn tensors(self, cfg: &LmConfig) -> Vec<(String, Vec<usize>)> {
        match self {
            Layout::PyTorch => cfg.pytorch_layout_tensors(),
            Layout::Candle => cfg.candle_layout_tensors(),
        }
    }
}

/// Check a checkpoint's names and shapes (from its header: `(name, shape)` pairs) against `cfg`
/// without reading any tensor. Errors name the first missing tensor or the first wrong shape
/// (with both shapes); tensors the model does not use are reported by the caller if it wishes.
pub fn check_checkpoint(cfg: &LmConfig, header: &[(String, Vec<usize>)]) -> Result<(Layout, Vec<String>)> {
    let has = |n: &str| header.iter().any(|(h, _)| h == n);
    let layout = Layout::detect(has).ok_or_else(|| {
        let hint = if has("encoder.model.0.conv.conv.weight") { " (it looks like a Mimi checkpoint)" } else { "" };
        EngineError::MissingTensor {
            name: "depformer_in.0.weight".into(),
            expected: vec![cfg.depformer_dim, cfg.dim],
            hint: format!(
                "; neither Kyutai's PyTorch (depformer_in.*) nor Candle (depformer.0.linear_in.*) LM layout{hint}"
            ),
        }
    })?;
    let expected = layout.tensors(cfg);
    for (name, shape) in &expected {
        match header.iter().find(|(h, _)| h == name) {
            None => {
                return Err(EngineError::MissingTensor {
                    name: name.clone(),
                    expected: shape.clone(),
                    hint: format!(" ({layout:?} layout)"),
                })
            }
            Some((_, got)) if got != shape => {
                return Err(EngineError::WrongShape { name: name.clone(), expected: shape.clone(), got: got.clone() })
            }
            Some(_) => {}
        }
    }
    let unused = header.iter().filter(|(h, _)| !expected.iter().any(|(e, _)| e == h)).map(|(h, _)| h.clone()).collect();
    Ok((layout, unused))
}

/// The teacher-forced forward of a whole sequence.
#[derive(Debug, Clone)]
pub struct TeacherForced {
    /// What the temporal model reads, [B, 1 + n_q, T] (see `delay_streams`).
    pub delayed_input: Tensor,
    pub temporal: TemporalOut,
    /// The token each depformer step reads, [B, dep_q, T].
    pub depformer_tokens: Tensor,
    /// [B, dep_q, T, card], position p predicting the audio of delayed position p + 1.
    pub depformer_logits: Tensor,
}

/// The LM's weights, shared by every conversation (state lives in `LmGenState`).
#[derive(Debug, Clone)]
pub struct LmModel {
    cfg: LmConfig,
    layout: Layout,
    temporal: Temporal,
    depformer: Depformer,
}

impl LmModel {
    /// Build from weights under `vb`'s root (layout detected from the names present).
    pub fn new(cfg: &LmConfig, vb: &Weights) -> Result<Self> {
        cfg.validate("LM config")?;
        let layout = Layout::detect(|n| vb.contains_tensor(n)).ok_or_else(|| EngineError::MissingTensor {
            name: "depformer_in.0.weight".into(),
            expected: vec![cfg.depformer_dim, cfg.dim],
            hint: "; neither Kyutai's PyTorch nor Candle LM layout".into(),
        })?;
        Ok(Self {
            cfg: cfg.clone(),
            layout,
            temporal: Temporal::new(cfg, vb)?,
            depformer: Depformer::new(cfg, vb, layout)?,
        })
    }

    /// Load safetensors files, after checking every name and shape from their headers.
    pub fn load(paths: &[PathBuf], cfg: &LmConfig, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with(paths, cfg, &LoadOptions::dtype(dtype), device)
    }

    /// Load safetensors files or one GGUF file (Kyutai's q8 layout, `.gguf`: its 8-bit linear
    /// layers stay 8-bit whatever `options.weights` says), after checking every name and shape
    /// from the headers; `options.weights` q8 quantizes a float checkpoint at load.
    pub fn load_with(paths: &[PathBuf], cfg: &LmConfig, options: &LoadOptions, device: &Device) -> Result<Self> {
        let gguf = paths.iter().filter(|p| crate::gguf::is_gguf_path(p)).count();
        if gguf > 0 && paths.len() > 1 {
            return Err(EngineError::ModelFiles { path: paths[0].clone(), msg: "a GGUF checkpoint is one file; it cannot be combined with others".into() });
        }
        let mut header = Vec::new();
        for p in paths {
            header.extend(crate::weights::checkpoint_header(p)?);
        }
        let (_, unused) = check_checkpoint(cfg, &header).map_err(|e| e.in_checkpoint(paths))?;
        if !unused.is_empty() {
            tracing::warn!("{} checkpoint tensors are not used by the LM, e.g. {}", unused.len(), unused[0]);
        }
        let weights = if gguf == 1 {
            let file = std::sync::Arc::new(crate::gguf::GgufFile::open(&paths[0])?);
            Weights::gguf(file.var_builder(options.dtype, device), file)
        } else {
            Weights::new(crate::weights::open_safetensors(paths, options.dtype, device)?, options.weights)
        };
        Self::new(cfg, &weights).map_err(|e| e.in_checkpoint(paths))
    }

    /// Build from in-memory tensors (e.g. `lm::random::random_weights`), names checked first.
    pub fn from_tensors(cfg: &LmConfig, tensors: std::collections::HashMap<String, Tensor>, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_tensors_with(cfg, tensors, &LoadOptions::dtype(dtype), device)
    }

    /// As `from_tensors`, with the weights stored as `options.weights` says.
    pub fn from_tensors_with(cfg: &LmConfig, tensors: std::collections::HashMap<String, Tensor>, options: &LoadOptions, device: &Device) -> Result<Self> {
        let header: Vec<(String, Vec<usize>)> = tensors.iter().map(|(n, t)| (n.clone(), t.dims().to_vec())).collect();
        check_checkpoint(cfg, &header)?;
        Self::new(cfg, &Weights::new(VarBuilder::from_tensors(tensors, options.dtype, device), options.weights))
    }

    /// How the linear layers are stored: `Q8` when they are 8-bit (a GGUF or `--weights q8`).
    pub fn weight_format(&self) -> crate::weights::WeightFormat {
        if self.temporal.is_q8() { crate::weights::WeightFormat::Q8 } else { crate::weights::WeightFormat::Model }
    }

    /// Bytes the LM's weights hold on their device (8-bit blocks counted as stored).
    pub fn weight_bytes(&self) -> usize {
        self.temporal.weight_bytes() + self.depformer.weight_bytes()
    }

    /// Bytes a streaming step reads in full: every weight but the embedding tables (a step
    /// gathers a few of their rows), as stored; only the depformer steps a frame runs
    /// (PersonaPlex: 8 of 16). Over a step's time, the achieved weight bandwidth.
    pub fn streamed_weight_bytes(&self) -> usize {
        let dep = self.depformer.weight_bytes() - self.depformer.table_bytes();
        let run = self.cfg.agent_streams().min(self.cfg.dep_q);
        self.temporal.weight_bytes() - self.temporal.table_bytes() + dep * run / self.cfg.dep_q.max(1)
    }

    pub fn config(&self) -> &LmConfig {
        &self.cfg
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn temporal(&self) -> &Temporal {
        &self.temporal
    }

    pub fn depformer(&self) -> &Depformer {
        &self.depformer
    }

    /// Initial token of stream k (what is read where nothing was written yet).
    pub fn initial_token(&self, stream: usize) -> i64 {
        if stream == 0 {
            self.cfg.text_card as i64
        } else {
            self.cfg.card as i64
        }
    }

    /// Teacher-forced forward of un-delayed `codes` [B, 1 + n_q, T] (text, model audio, user
    /// audio; −1 = nothing): delays them as the reference's `LMModel.forward` does, runs the
    /// temporal model and every depformer step at every position.
    pub fn forward_teacher(&self, codes: &Tensor) -> Result<TeacherForced> {
        self.forward_teacher_map(codes, &mut |_, x| Ok(x))
    }

    /// As `forward_teacher`, with `map(layer, output)` after every temporal layer (to record or
    /// perturb them: `verify model`).
    pub fn forward_teacher_map(&self, codes: &Tensor, map: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>) -> Result<TeacherForced> {
        let (_, k, t) = codes.dims3()?;
        if k != self.cfg.num_streams() {
            return Err(EngineError::InvalidInput(format!("{k} streams given, the model has {}", self.cfg.num_streams())));
        }
        let full = self.delay_streams(codes)?.to_device(&self.temporal.device())?; // [B, K, T + 1]
        let delayed_input = full.narrow(2, 0, t)?;
        let temporal = self.temporal.forward_map(&delayed_input, map)?;
        let depformer_tokens = full.narrow(1, 0, self.cfg.dep_q)?.narrow(2, 1, t)?.contiguous()?;
        let depformer_logits = self.depformer.forward_all(&temporal.out, &depformer_tokens)?;
        Ok(TeacherForced { delayed_input, temporal, depformer_tokens, depformer_logits })
    }

    /// The delayed sequence of length T + 1: S[:, k, p] = initial_k if p = 0 or p − 1 < D_k,
    /// else codes[:, k, p − 1 − D_k].
    pub fn delay_streams(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, k, t) = codes.dims3()?;
        let v = codes.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        // Checked here, on the host: the embeddings of other devices gather without a check.
        for s in 0..k.min(self.cfg.num_streams()) {
            let rows = self.initial_token(s) + 1;
            for bi in 0..b {
                if let Some(bad) = v[(bi * k + s) * t..(bi * k + s + 1) * t].iter().find(|&&c| c < -1 || c >= rows) {
                    return Err(EngineError::InvalidInput(format!("stream {s}: token {bad} outside [-1, {rows})")));
                }
            }
        }
        let mut out = vec![0i64; b * k * (t + 1)];
        for bi in 0..b {
            for s in 0..k {
                let d = self.cfg.delays[s];
                for p in 0..=t {
                    let o = (bi * k + s) * (t + 1) + p;
                    out[o] = if p == 0 || p - 1 < d { self.initial_token(s) } else { v[(bi * k + s) * t + p - 1 - d] };
                }
            }
        }
        Ok(Tensor::from_vec(out, (b, k, t + 1), codes.device())?)
    }
}

//! The temporal half of the Moshi LM: per-stream embeddings summed, the temporal transformer
//! (RMSNorm-f32, gated SiLU, RoPE; `nn::transformer` configured, not copied), `out_norm` and the
//! text head. Same names in Kyutai's PyTorch and Candle layouts.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use super::config::LmConfig;
use crate::error::{EngineError, Result};
use crate::nn::norm::{Norm, NormKind};
use crate::nn::transformer::{FfnKind, Transformer, TransformerConfig, TransformerState};
use crate::nn::{linear_no_bias, Linear};
use crate::weights::get_checked;

/// An embedding table where token −1 contributes zero (the reference's "nothing here").
#[derive(Debug, Clone)]
pub struct ZeroableEmbedding {
    /// [card + 1, dim]
    table: Tensor,
}

impl ZeroableEmbedding {
    pub fn new(rows: usize, dim: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self { table: get_checked(vb, &[rows, dim], "weight")? })
    }

    /// `tokens` [B, T] (i64, −1 allowed) → [B, T, dim].
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let rows = self.table.dim(0)? as i64;
        let ids = tokens.to_dtype(DType::I64)?.flatten_all()?;
        let v = ids.to_vec1::<i64>()?;
        if let Some(bad) = v.iter().find(|&&x| x < -1 || x >= rows) {
            return Err(EngineError::InvalidInput(format!("token {bad} outside [-1, {rows})")));
        }
        let keep: Vec<f32> = v.iter().map(|&x| if x < 0 { 0.0 } else { 1.0 }).collect();
        let ids = ids.clamp(0i64, rows - 1)?.to_dtype(DType::U32)?;
        let keep = Tensor::from_vec(keep, (b * t, 1), tokens.device())?.to_dtype(self.table.dtype())?;
        let e = self.table.index_select(&ids, 0)?.broadcast_mul(&keep)?;
        Ok(e.reshape((b, t, ()))?)
    }
}

/// Outputs of the temporal model over a sequence.
#[derive(Debug, Clone)]
pub struct TemporalOut {
    /// Transformer output before `out_norm`, [B, T, dim].
    pub hidden: Tensor,
    /// `out_norm(hidden)`: what the depformer and the text head read.
    pub out: Tensor,
    /// [B, T, text_card]
    pub text_logits: Tensor,
}

#[derive(Debug, Clone)]
pub struct Temporal {
    text_emb: ZeroableEmbedding,
    emb: Vec<ZeroableEmbedding>,
    transformer: Transformer,
    out_norm: Norm,
    text_linear: Linear,
}

impl Temporal {
    /// `vb` points at the checkpoint root. The FFN width is read from the weights' shape.
    pub fn new(cfg: &LmConfig, vb: &VarBuilder) -> Result<Self> {
        let d = cfg.dim;
        let probe = "transformer.layers.0.gating.linear_out.weight";
        let hidden = if vb.contains_tensor(probe) { vb.get_unchecked(probe)?.dim(1)? } else { cfg.gated_hidden() };
        let tcfg = TransformerConfig {
            d_model: d,
            num_heads: cfg.num_heads,
            num_layers: cfg.num_layers,
            dim_feedforward: hidden,
            context: cfg.context,
            max_period: cfg.max_period,
            norm: NormKind::RmsNormF32,
            ffn: FfnKind::GatedSilu,
            layer_scale: false,
            rope: cfg.positional_embedding == "rope",
        };
        Ok(Self {
            text_emb: ZeroableEmbedding::new(cfg.text_card + 1, d, &vb.pp("text_emb"))?,
            emb: (0..cfg.n_q).map(|i| ZeroableEmbedding::new(cfg.card + 1, d, &vb.pp("emb").pp(i))).collect::<Result<_>>()?,
            transformer: Transformer::new(&tcfg, vb.pp("transformer"))?,
            out_norm: Norm::new(NormKind::RmsNormF32, d, vb.pp("out_norm"))?,
            text_linear: linear_no_bias(d, cfg.text_card, &vb.pp("text_linear"))?,
        })
    }

    /// The summed embeddings of `tokens` [B, 1 + n_q, T] (text, then audio streams; −1
    /// contributes nothing).
    fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (_b, k, _t) = tokens.dims3()?;
        if k != 1 + self.emb.len() {
            return Err(EngineError::InvalidInput(format!("{k} streams given, the model has {}", 1 + self.emb.len())));
        }
        let mut x = self.text_emb.forward(&tokens.narrow(1, 0, 1)?.squeeze(1)?)?;
        for (i, e) in self.emb.iter().enumerate() {
            x = (x + e.forward(&tokens.narrow(1, i + 1, 1)?.squeeze(1)?)?)?;
        }
        Ok(x)
    }

    fn head(&self, hidden: Tensor) -> Result<TemporalOut> {
        let out = self.out_norm.forward(&hidden)?;
        let text_logits = self.text_linear.forward(&out)?;
        Ok(TemporalOut { hidden, out, text_logits })
    }

    /// Whole-sequence forward of already-delayed streams `tokens` [B, 1 + n_q, T].
    pub fn forward(&self, tokens: &Tensor) -> Result<TemporalOut> {
        self.head(self.transformer.forward(&self.embed(tokens)?)?)
    }

    /// As `forward`, with `map(layer, output)` applied after every temporal layer (see
    /// `Transformer::forward_map`).
    pub fn forward_map(&self, tokens: &Tensor, map: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>) -> Result<TemporalOut> {
        self.head(self.transformer.forward_map(&self.embed(tokens)?, map)?)
    }

    /// Streaming forward of the next steps `tokens` [B, 1 + n_q, T], continuing `state`;
    /// `inspect` sees every layer's output (see `Transformer::step_inspect`).
    pub fn step(
        &self,
        tokens: &Tensor,
        state: &mut TransformerState,
        inspect: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<TemporalOut> {
        self.head(self.transformer.step_inspect(&self.embed(tokens)?, state, inspect)?)
    }

    pub fn device(&self) -> candle_core::Device {
        self.text_linear.weight().device().clone()
    }

    pub fn num_layers(&self) -> usize {
        self.transformer.config().num_layers
    }
}

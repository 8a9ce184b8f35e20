//! The temporal half of the Moshi LM: per-stream embeddings summed, the temporal transformer
//! (RMSNorm-f32, gated SiLU, RoPE; `nn::transformer` configured, not copied), `out_norm` and the
//! text head. Same names in Kyutai's PyTorch and Candle layouts.

use candle_core::{DType, Module, Tensor};

use super::config::LmConfig;
use crate::error::{EngineError, Result};
use crate::nn::norm::{Norm, NormKind};
use crate::nn::transformer::{FfnKind, PosEmb, Transformer, TransformerConfig, TransformerState};
use crate::nn::{linear_no_bias, Linear};
use crate::weights::Weights;

/// An embedding table where token −1 contributes zero (the reference's "nothing here"). The
/// table is kept with a zero row in front, so that the lookup is one gather of `token + 1` with
/// no host round trip (the range check needs the tokens on the host: it runs on the CPU only;
/// on other devices the callers' tokens are checked where they are made).
#[derive(Debug, Clone)]
pub struct ZeroableEmbedding {
    /// [1 + rows, dim or rank], row 0 zero.
    table: Tensor,
    rows: usize,
    /// Kyutai's low-rank embeddings: the table is `rank` wide and this projects it up to `dim`
    /// (a zero row stays zero: the projection has no bias).
    low_rank: Option<Linear>,
}

/// `table` [rows, dim] with a zero row in front.
fn with_zero_row(table: &Tensor) -> Result<Tensor> {
    let z = Tensor::zeros((1, table.dim(1)?), table.dtype(), table.device())?;
    Ok(Tensor::cat(&[&z, table], 0)?)
}

/// Refuse tokens outside [−1, rows) when they are on the host already (`exec::tokens_on_host`).
fn check_tokens(tokens: &Tensor, rows: usize, what: &str) -> Result<()> {
    if let Some(v) = crate::exec::tokens_on_host(tokens)? {
        if let Some(bad) = v.iter().find(|&&x| x < -1 || x >= rows as i64) {
            return Err(EngineError::InvalidInput(format!("{what}token {bad} outside [-1, {rows})")));
        }
    }
    Ok(())
}

impl ZeroableEmbedding {
    pub fn new(rows: usize, dim: usize, vb: &Weights) -> Result<Self> {
        Ok(Self { table: with_zero_row(&vb.table([rows, dim], "weight")?)?, rows, low_rank: None })
    }

    /// A table `rank` wide and its projection `low_rank.weight` [dim, rank].
    pub fn low_rank(rows: usize, rank: usize, dim: usize, vb: &Weights) -> Result<Self> {
        let table = with_zero_row(&vb.table([rows, rank], "weight")?)?;
        Ok(Self { table, rows, low_rank: Some(linear_no_bias(rank, dim, &vb.pp("low_rank"))?) })
    }

    /// Bytes of the table (and its projection, if low-rank).
    pub fn bytes(&self) -> usize {
        self.table.elem_count() * self.table.dtype().size_in_bytes() + self.low_rank.as_ref().map(Linear::bytes).unwrap_or(0)
    }

    /// `tokens` [B, T] (−1 allowed) → [B, T, dim].
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        tokens.dims2()?;
        check_tokens(tokens, self.rows, "")?;
        let ids = (tokens.to_dtype(DType::F32)? + 1.0)?.to_dtype(DType::U32)?;
        self.forward_shifted(&ids)
    }

    /// As `forward`, from `token + 1` as u32 [B, T] (0: nothing), made on the host by a caller
    /// that has the tokens there (one upload, no conversions on the device). Not range-checked.
    pub fn forward_shifted(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let e = crate::exec::embedding(&self.table, &ids.flatten_all()?)?.reshape((b, t, ()))?;
        Ok(match &self.low_rank {
            Some(l) => l.forward(&e)?,
            None => e,
        })
    }
}

/// The temporal model's K input embeddings (text, then each audio stream) in one table, each
/// with its zero row in front, so that a step's K lookups are one gather and one sum.
#[derive(Debug, Clone)]
pub struct StreamEmbeddings {
    /// [Σ (1 + rows_k), dim]
    table: Tensor,
    rows: Vec<usize>,
    /// The row of stream k's zero row in `table`.
    firsts: Vec<usize>,
    /// [1, K, 1] f32: `firsts` + 1 (token −1 → the zero row).
    shift: Tensor,
}

impl StreamEmbeddings {
    /// `tables[k]`: stream k's [rows_k, dim] table.
    pub fn new(tables: &[Tensor]) -> Result<Self> {
        let parts = tables.iter().map(with_zero_row).collect::<Result<Vec<_>>>()?;
        let rows: Vec<usize> = tables.iter().map(|t| t.dim(0)).collect::<candle_core::Result<_>>()?;
        let firsts: Vec<usize> = rows.iter().scan(0, |next, r| Some(std::mem::replace(next, *next + r + 1))).collect();
        let shift: Vec<f32> = firsts.iter().map(|&f| (f + 1) as f32).collect();
        let shift = Tensor::from_vec(shift, (1, rows.len(), 1), tables[0].device())?;
        Ok(Self { table: Tensor::cat(&parts, 0)?, rows, firsts, shift })
    }

    /// Gather table rows `ids` (u32, B·K·T of them) and sum each position's K rows in f32.
    fn gather_sum(&self, ids: &Tensor, (b, k, t): (usize, usize, usize)) -> Result<Tensor> {
        let e = crate::exec::embedding(&self.table, ids)?.reshape((b, k, t, ()))?;
        let dtype = e.dtype();
        Ok(e.to_dtype(DType::F32)?.sum(1)?.to_dtype(dtype)?)
    }

    /// One step's tokens on the host ([B, K] row-major, −1: nothing), checked there and
    /// uploaded once as table rows → [B, 1, dim] (the streaming step's form).
    pub fn forward_host(&self, tokens: &[i64], b: usize, device: &candle_core::Device) -> Result<Tensor> {
        let k = self.rows.len();
        if tokens.len() != b * k {
            return Err(EngineError::InvalidInput(format!("{} tokens for {b} rows of {k} streams", tokens.len())));
        }
        let mut ids = Vec::with_capacity(b * k);
        for (i, &tok) in tokens.iter().enumerate() {
            let s = i % k;
            if tok < -1 || tok >= self.rows[s] as i64 {
                return Err(EngineError::InvalidInput(format!("stream {s}: token {tok} outside [-1, {})", self.rows[s])));
            }
            ids.push((self.firsts[s] as i64 + tok + 1) as u32);
        }
        self.gather_sum(&Tensor::from_vec(ids, b * k, device)?, (b, k, 1))
    }

    /// `tokens` [B, K, T] (−1: nothing) → Σ_k emb_k(tokens[:, k]) [B, T, dim], summed in f32.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, k, t) = tokens.dims3()?;
        if k != self.rows.len() {
            return Err(EngineError::InvalidInput(format!("{k} streams given, the model has {}", self.rows.len())));
        }
        for (i, &rows) in self.rows.iter().enumerate() {
            check_tokens(&tokens.narrow(1, i, 1)?, rows, &format!("stream {i}: "))?;
        }
        let ids = tokens.to_dtype(DType::F32)?.broadcast_add(&self.shift)?.to_dtype(DType::U32)?.flatten_all()?;
        self.gather_sum(&ids, (b, k, t))
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
    /// `text_emb` and `emb.{i}`.
    embeddings: StreamEmbeddings,
    transformer: Transformer,
    out_norm: Norm,
    text_linear: Linear,
}

impl Temporal {
    /// `vb` points at the checkpoint root. The FFN width is read from the weights' shape.
    pub fn new(cfg: &LmConfig, vb: &Weights) -> Result<Self> {
        let d = cfg.dim;
        let unsupported = |what: &str| EngineError::InvalidInput(format!("{what} is not supported"));
        let ffn = FfnKind::from_name(&cfg.gating).ok_or_else(|| unsupported("gating"))?;
        let norm = NormKind::from_name(&cfg.norm).ok_or_else(|| unsupported("norm"))?;
        let pos = PosEmb::from_name(&cfg.positional_embedding).ok_or_else(|| unsupported("positional_embedding"))?;
        let (probe, axis) = match ffn {
            FfnKind::Gelu => ("transformer.layers.0.linear1.weight", 0),
            _ => ("transformer.layers.0.gating.linear_out.weight", 1),
        };
        let hidden = match vb.dims_of(probe)? {
            Some(d) if d.len() == 2 => d[axis],
            _ => cfg.ffn_hidden(),
        };
        let tcfg = TransformerConfig {
            d_model: d,
            num_heads: cfg.num_heads,
            num_layers: cfg.num_layers,
            dim_feedforward: hidden,
            context: cfg.context,
            max_period: cfg.max_period,
            norm,
            ffn,
            layer_scale: false,
            rope: pos.rope(),
            sin_scale: pos.sin().then_some(cfg.positional_scale),
            schedule: None,
        };
        Ok(Self {
            embeddings: {
                let mut tables = vec![vb.pp("text_emb").table([cfg.text_card + 1, d], "weight")?];
                for i in 0..cfg.n_q {
                    tables.push(vb.pp("emb").pp(i).table([cfg.card + 1, d], "weight")?);
                }
                StreamEmbeddings::new(&tables)?
            },
            transformer: Transformer::new(&tcfg, vb.pp("transformer"))?,
            out_norm: Norm::new(norm, d, &vb.pp("out_norm"))?,
            text_linear: linear_no_bias(d, cfg.text_card, &vb.pp("text_linear"))?,
        })
    }

    /// The summed embeddings of `tokens` [B, 1 + n_q, T] (text, then audio streams; −1
    /// contributes nothing).
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        self.embeddings.forward(tokens)
    }

    pub(super) fn head(&self, hidden: Tensor) -> Result<TemporalOut> {
        let out = self.out_norm.forward(&hidden)?;
        let text_logits = self.text_linear.forward(&out)?;
        Ok(TemporalOut { hidden, out, text_logits })
    }

    /// Whole-sequence forward of already-delayed streams `tokens` [B, 1 + n_q, T].
    pub fn forward(&self, tokens: &Tensor) -> Result<TemporalOut> {
        self.head(self.transformer.forward(&self.embed(tokens)?)?)
    }

    /// As `forward`, `tap(layer, op, output)` after every op group of every layer (`verify trace`).
    pub fn forward_tapped(
        &self,
        tokens: &Tensor,
        tap: &mut dyn FnMut(usize, &'static str, Tensor) -> Result<Tensor>,
    ) -> Result<TemporalOut> {
        self.head(self.transformer.forward_tapped(&self.embed(tokens)?, tap)?)
    }

    /// The temporal transformer (to re-run one layer op by op: `verify trace`).
    pub fn transformer(&self) -> &Transformer {
        &self.transformer
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

    /// As `step`, for one step whose tokens ([B, K] row-major) are on the host: they are
    /// checked and gathered with one upload (the generation loop's form).
    pub fn step_host(
        &self,
        tokens: &[i64],
        b: usize,
        state: &mut TransformerState,
        inspect: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<TemporalOut> {
        let x = self.embed_host(tokens, b)?;
        self.step_embedded(&x, state, inspect)
    }

    /// The summed input embedding [B, 1, dim] of one step's tokens on the host ([B, K]
    /// row-major): what `step_host` feeds the transformer (the reference's `embed_codes`).
    pub fn embed_host(&self, tokens: &[i64], b: usize) -> Result<Tensor> {
        self.embeddings.forward_host(tokens, b, &self.device())
    }

    /// One streaming step from input embeddings `x` [B, 1, dim] instead of tokens (the
    /// reference's `forward_embeddings`: PersonaPlex's voice presets hold them).
    pub fn step_embedded(
        &self,
        x: &Tensor,
        state: &mut TransformerState,
        inspect: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<TemporalOut> {
        self.head(self.transformer.step_inspect(x, state, inspect)?)
    }

    /// The dtype the model computes in (its activations; an 8-bit model's linear layers hold
    /// Q8_0 blocks but compute in this dtype too).
    pub fn dtype(&self) -> DType {
        self.embeddings.table.dtype()
    }

    pub fn device(&self) -> candle_core::Device {
        self.embeddings.table.device().clone()
    }

    /// Bytes of the weights: embeddings, transformer, norm and head.
    pub fn weight_bytes(&self) -> usize {
        let t = &self.embeddings.table;
        t.elem_count() * t.dtype().size_in_bytes() + self.transformer.weight_bytes() + self.out_norm.weight_bytes() + self.text_linear.bytes()
    }

    /// Bytes of the embedding tables.
    pub fn table_bytes(&self) -> usize {
        self.embeddings.table.elem_count() * self.embeddings.table.dtype().size_in_bytes()
    }

    /// Whether the linear layers are 8-bit (the text head is, whenever any is).
    pub fn is_q8(&self) -> bool {
        self.text_linear.q8_weight().is_some()
    }

    pub fn num_layers(&self) -> usize {
        self.transformer.config().num_layers
    }
}

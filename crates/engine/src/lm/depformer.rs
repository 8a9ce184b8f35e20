//! The depformer: a small transformer run along the codebook axis of one time step. Step k reads
//! `depformer_in[k](temporal output)` plus the embedding of the token chosen just before it (the
//! text token for k = 0, model audio codebook k−1 after) and predicts model audio codebook k
//! through its own head `linears[k]`. Attention and FFN weights are per step (or per weight set,
//! with `depformer_weights_per_step_schedule`), norms shared, positional embedding none (Moshi),
//! RoPE or sinusoidal over the steps; input embeddings full or low-rank; its KV cache starts empty
//! at every time step.
//!
//! Checkpoint names, Kyutai's PyTorch layout: `depformer_in.{k}`, `depformer_text_emb`,
//! `depformer_emb.{k-1}`, `linears.{k}`, `depformer.layers.{l}.*` (stacked per-step weights).
//! Kyutai's Candle layout: `depformer.{k}.{linear_in, emb, linear_out, transformer.layers.{l}.*}`.

use candle_core::{Module, Tensor};
use crate::weights::Weights;

use super::config::LmConfig;
use super::temporal::ZeroableEmbedding;
use super::model::Layout;
use crate::error::{EngineError, Result};
use crate::nn::norm::NormKind;
use crate::nn::per_step::StepLayout;
use crate::nn::transformer::{FfnKind, PosEmb, Transformer, TransformerConfig, TransformerState};
use crate::nn::{linear_no_bias, Linear};

#[derive(Debug, Clone)]
pub struct Depformer {
    /// Per step: input projection from the temporal width (one shared without multi_linear).
    inputs: Vec<Linear>,
    /// Per step: embedding of the previous token (step 0: text, rows text_card + 1).
    embs: Vec<ZeroableEmbedding>,
    transformer: Transformer,
    heads: Vec<Linear>,
}

fn ffn_width(vb: &Weights, probe: &str, fallback: usize) -> Result<usize> {
    Ok(match vb.dims_of(probe)? {
        Some(d) if d.len() == 2 => d[1],
        _ => fallback,
    })
}

impl Depformer {
    /// `vb` points at the checkpoint root.
    pub fn new(cfg: &LmConfig, vb: &Weights, layout: Layout) -> Result<Self> {
        let (d, dd, k) = (cfg.dim, cfg.depformer_dim, cfg.dep_q);
        let unsupported = |what: &str| EngineError::InvalidInput(format!("{what} is not supported"));
        let ffn = FfnKind::from_name(&cfg.depformer_gating).ok_or_else(|| unsupported("depformer_gating"))?;
        let norm = NormKind::from_name(&cfg.norm).ok_or_else(|| unsupported("norm"))?;
        let pos = PosEmb::from_name(&cfg.depformer_pos_emb).ok_or_else(|| unsupported("depformer_pos_emb"))?;
        if ffn == FfnKind::Gelu {
            return Err(unsupported("depformer_gating \"none\" (the reference refuses it with per-step weights)"));
        }
        let fallback = cfg.depformer_gated_hidden();
        let hidden = match layout {
            Layout::PyTorch => ffn_width(vb, "depformer.layers.0.gating.0.linear_out.weight", fallback)?,
            Layout::Candle => ffn_width(vb, "depformer.0.transformer.layers.0.gating.linear_out.weight", fallback)?,
        };
        let tcfg = TransformerConfig {
            d_model: dd,
            num_heads: cfg.depformer_num_heads,
            num_layers: cfg.depformer_num_layers,
            dim_feedforward: hidden,
            // The reference ignores `depformer_context`: its cache holds one entry per step and a
            // frame has `dep_q` steps, so every step sees all the earlier ones.
            context: k,
            max_period: cfg.depformer_max_period,
            norm,
            ffn,
            layer_scale: false,
            rope: pos.rope(),
            sin_scale: pos.sin().then_some(cfg.depformer_positional_scale),
            schedule: cfg.depformer_weights_per_step_schedule.clone(),
        };
        let emb_rows = |s: usize| if s == 0 { cfg.text_card + 1 } else { cfg.card + 1 };
        let emb = |s: usize, vb: &Weights| match cfg.depformer_low_rank_embeddings {
            Some(r) => ZeroableEmbedding::low_rank(emb_rows(s), r, dd, vb),
            None => ZeroableEmbedding::new(emb_rows(s), dd, vb),
        };
        match layout {
            Layout::PyTorch => {
                if !cfg.depformer_weights_per_step {
                    return Err(EngineError::InvalidInput(
                        "depformer_weights_per_step false is not supported (the reference cannot stream such a depformer either: its cache needs a capacity)".into(),
                    ));
                }
                let ins: Vec<Linear> = (0..cfg.depformer_inputs())
                    .map(|s| linear_no_bias(d, dd, &vb.pp("depformer_in").pp(s)))
                    .collect::<Result<_>>()?;
                let inputs = (0..k).map(|s| ins[cfg.depformer_input(s)].clone()).collect();
                let mut embs = vec![emb(0, &vb.pp("depformer_text_emb"))?];
                for s in 1..k {
                    embs.push(emb(s, &vb.pp("depformer_emb").pp(s - 1))?);
                }
                let heads = (0..k).map(|s| linear_no_bias(dd, cfg.card, &vb.pp("linears").pp(s))).collect::<Result<_>>()?;
                let layout = StepLayout::Stacked(vb.pp("depformer"), cfg.depformer_weight_sets());
                let transformer = Transformer::with_layout(&tcfg, &layout)?;
                Ok(Self { inputs, embs, transformer, heads })
            }
            Layout::Candle => {
                for (field, set) in [
                    ("depformer_weights_per_step_schedule", cfg.depformer_weights_per_step_schedule.is_some()),
                    ("depformer_low_rank_embeddings", cfg.depformer_low_rank_embeddings.is_some()),
                ] {
                    if set {
                        return Err(unsupported(&format!("{field} with Kyutai's Candle layout (use the PyTorch checkpoint)")));
                    }
                }
                let slices: Vec<Weights> = (0..k).map(|s| vb.pp("depformer").pp(s)).collect();
                let inputs = slices.iter().map(|v| linear_no_bias(d, dd, &v.pp("linear_in"))).collect::<Result<_>>()?;
                let embs = (0..k)
                    .map(|s| ZeroableEmbedding::new(emb_rows(s), dd, &slices[s].pp("emb")))
                    .collect::<Result<_>>()?;
                let heads = slices.iter().map(|v| linear_no_bias(dd, cfg.card, &v.pp("linear_out"))).collect::<Result<_>>()?;
                let layout = StepLayout::Sliced(slices.iter().map(|v| v.pp("transformer")).collect());
                let transformer = Transformer::with_layout(&tcfg, &layout)?;
                Ok(Self { inputs, embs, transformer, heads })
            }
        }
    }

    /// Bytes of the weights (a projection shared by several steps counted once per step).
    pub fn weight_bytes(&self) -> usize {
        let embs: usize = self.embs.iter().map(ZeroableEmbedding::bytes).sum();
        self.inputs.iter().chain(&self.heads).map(Linear::bytes).sum::<usize>() + embs + self.transformer.weight_bytes()
    }

    /// Bytes of the embedding tables.
    pub fn table_bytes(&self) -> usize {
        self.embs.iter().map(ZeroableEmbedding::bytes).sum()
    }

    /// Number of steps (codebooks generated per time step).
    pub fn steps(&self) -> usize {
        self.heads.len()
    }

    /// The transformer input of step `k`: `inputs[k](out) + embs[k](prev)`, `out` [B, T, dim],
    /// `prev` [B, T] (−1 contributes nothing).
    fn step_input(&self, k: usize, out: &Tensor, prev: &Tensor) -> Result<Tensor> {
        Ok((self.inputs[k].forward(out)? + self.embs[k].forward(prev)?)?)
    }

    /// Step `k` must come `k`-th in its frame (a fresh state at k = 0).
    fn check_step(&self, k: usize, state: &TransformerState) -> Result<()> {
        if k >= self.steps() || state.offset() != k {
            return Err(EngineError::Streaming(format!(
                "depformer step {k} called after {} steps of a {}-step frame",
                state.offset(),
                self.steps()
            )));
        }
        Ok(())
    }

    /// Step `k` of one time step, streaming: `out` [B, 1, dim] the temporal output (after
    /// `out_norm`), `prev` [B, 1] the token chosen before this step. Returns logits [B, 1, card].
    /// `state` must be fresh at k = 0 and carried through the frame's steps.
    pub fn step(&self, k: usize, out: &Tensor, prev: &Tensor, state: &mut TransformerState) -> Result<Tensor> {
        self.check_step(k, state)?;
        let y = self.transformer.step(&self.step_input(k, out, prev)?, state)?;
        Ok(self.heads[k].forward(&y)?)
    }

    /// As `step`, with the previous token given as `token + 1` u32 [B, 1] (see
    /// `ZeroableEmbedding::forward_shifted`): the generation loop's form, made on the host.
    pub fn step_shifted(&self, k: usize, out: &Tensor, prev_shifted: &Tensor, state: &mut TransformerState) -> Result<Tensor> {
        self.check_step(k, state)?;
        let x = (self.inputs[k].forward(out)? + self.embs[k].forward_shifted(prev_shifted)?)?;
        let y = self.transformer.step(&x, state)?;
        Ok(self.heads[k].forward(&y)?)
    }

    /// Every step of every position at once (the reference's training path): `out` [B, T, dim],
    /// `tokens` [B, K, T] the token each step reads. Returns logits [B, K, T, card].
    pub fn forward_all(&self, out: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        let (b, t, _) = out.dims3()?;
        let k = self.steps();
        if tokens.dims() != [b, k, t] {
            return Err(EngineError::InvalidInput(format!("depformer tokens {:?}, expected {:?}", tokens.dims(), [b, k, t])));
        }
        let xs = (0..k)
            .map(|s| self.step_input(s, out, &tokens.narrow(1, s, 1)?.squeeze(1)?))
            .collect::<Result<Vec<_>>>()?;
        // [B, T, K, dd] → one sequence of K steps per (b, t).
        let x = Tensor::stack(&xs, 2)?;
        let dd = x.dim(3)?;
        let y = self.transformer.forward(&x.reshape((b * t, k, dd))?)?;
        let logits = (0..k)
            .map(|s| self.heads[s].forward(&y.narrow(1, s, 1)?.squeeze(1)?.contiguous()?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let card = logits[0].dim(1)?;
        Ok(Tensor::stack(&logits, 1)?.reshape((b, t, k, card))?.permute((0, 2, 1, 3))?.contiguous()?)
    }
}

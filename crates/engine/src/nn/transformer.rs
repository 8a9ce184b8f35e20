//! The one transformer: pre-norm layers of causal self-attention and a feed-forward block, each
//! residual optionally scaled by a LayerScale. Mimi uses LayerNorm + GELU + LayerScale; the
//! temporal LM RMSNorm-f32 + gated SiLU + RoPE; the depformer the same without RoPE and with one
//! weight set per step (`nn::per_step`). Same code, different configuration.
//!
//! Checkpoint names under the transformer prefix: `layers.{i}.{norm1, self_attn, layer_scale_1,
//! norm2, linear1, linear2 | gating, layer_scale_2}`.

use candle_core::{DType, Device, Module, Tensor};

use super::attention::Attention;
use super::norm::{Norm, NormKind};
use super::per_step::{PerStep, StepLayout};
use super::rope::Rope;
use super::{linear_no_bias, Linear};
use crate::error::{EngineError, Result};
use crate::exec::{KvCache, KvCacheKind, StepCall, StepCtx};
use crate::weights::{get_checked, Weights};

/// The feed-forward block's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnKind {
    /// `linear2(gelu(linear1(x)))`, exact (erf) GELU (Kyutai's `gating: "none"`).
    Gelu,
    /// `linear_out(silu(a) * b)` with `[a, b] = linear_in(x)` (Kyutai's `gating: "silu"`).
    GatedSilu,
    /// `linear_out(gelu(a) * b)`, exact GELU (Kyutai's `gating: "gelu"`).
    GatedGelu,
}

impl FfnKind {
    /// The kind of a Kyutai `gating` name we implement.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Self::Gelu,
            "silu" => Self::GatedSilu,
            "gelu" => Self::GatedGelu,
            _ => return None,
        })
    }
}

/// Kyutai's `positional_embedding` kinds we implement (`rope_concat`, non-interleaved RoPE, is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosEmb {
    None,
    Rope,
    /// Sinusoidal embedding added to the input (`create_sin_embedding`).
    Sin,
    /// Both.
    SinRope,
}

impl PosEmb {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Self::None,
            "rope" => Self::Rope,
            "sin" => Self::Sin,
            "sin_rope" => Self::SinRope,
            _ => return None,
        })
    }

    pub fn rope(self) -> bool {
        matches!(self, Self::Rope | Self::SinRope)
    }

    pub fn sin(self) -> bool {
        matches!(self, Self::Sin | Self::SinRope)
    }
}

/// The op groups of one layer, in order: what `Layer` reports to a tap and `verify trace` names.
pub const LAYER_OPS: [&str; 6] = ["norm1", "self_attn", "residual_1", "norm2", "ffn", "residual_2"];

/// A tap on a layer's op groups: `(op, output) → output` (identity to observe, or a change).
pub type OpTap<'a> = dyn FnMut(&'static str, Tensor) -> Result<Tensor> + 'a;

/// Resolved transformer hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerConfig {
    pub d_model: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub dim_feedforward: usize,
    /// Attention span in steps; also the streaming KV-cache capacity.
    pub context: usize,
    pub max_period: f64,
    pub norm: NormKind,
    pub ffn: FfnKind,
    pub layer_scale: bool,
    pub rope: bool,
    /// Add a sinusoidal positional embedding to the input, times this scale.
    pub sin_scale: Option<f64>,
    /// Per-step weights: position p uses weight set `schedule[p]` (None: set p).
    pub schedule: Option<Vec<usize>>,
}

#[derive(Debug, Clone)]
enum Ffn {
    Gelu { linear1: Linear, linear2: Linear },
    GatedSilu { linear_in: Linear, linear_out: Linear, hidden: usize },
    GatedGelu { linear_in: Linear, linear_out: Linear, hidden: usize },
}

impl Ffn {
    /// `vb` points at the layer (GELU: `linear1`, `linear2`) or at the gating module
    /// (`linear_in`, `linear_out`).
    fn new(cfg: &TransformerConfig, vb: &Weights) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.dim_feedforward);
        Ok(match cfg.ffn {
            FfnKind::Gelu => Ffn::Gelu {
                linear1: linear_no_bias(d, f, &vb.pp("linear1"))?,
                linear2: linear_no_bias(f, d, &vb.pp("linear2"))?,
            },
            FfnKind::GatedSilu => Ffn::GatedSilu {
                linear_in: linear_no_bias(d, 2 * f, &vb.pp("linear_in"))?,
                linear_out: linear_no_bias(f, d, &vb.pp("linear_out"))?,
                hidden: f,
            },
            FfnKind::GatedGelu => Ffn::GatedGelu {
                linear_in: linear_no_bias(d, 2 * f, &vb.pp("linear_in"))?,
                linear_out: linear_no_bias(f, d, &vb.pp("linear_out"))?,
                hidden: f,
            },
        })
    }

    /// The FFN weights of a layer in any layout: gated FFNs are `gating` (shared), `gating.{k}`
    /// (stacked) or each slice's `gating`.
    fn load(cfg: &TransformerConfig, layout: &StepLayout) -> Result<PerStep<Self>> {
        match (cfg.ffn, layout) {
            (FfnKind::Gelu, StepLayout::Shared(vb)) => Ok(PerStep::shared(Self::new(cfg, vb)?)),
            (FfnKind::Gelu, _) => {
                Err(EngineError::InvalidInput("per-step weights are only supported with gated FFNs".into()))
            }
            (_, StepLayout::Shared(vb)) => Ok(PerStep::shared(Self::new(cfg, &vb.pp("gating"))?)),
            (_, StepLayout::Stacked(vb, steps)) => Ok(PerStep::per_step(
                (0..*steps).map(|s| Self::new(cfg, &vb.pp("gating").pp(s))).collect::<Result<_>>()?,
            )),
            (_, StepLayout::Sliced(vbs)) => {
                Ok(PerStep::per_step(vbs.iter().map(|vb| Self::new(cfg, &vb.pp("gating"))).collect::<Result<_>>()?))
            }
        }
    }

    fn weight_bytes(&self) -> usize {
        match self {
            Ffn::Gelu { linear1, linear2 } => linear1.bytes() + linear2.bytes(),
            Ffn::GatedSilu { linear_in, linear_out, .. } | Ffn::GatedGelu { linear_in, linear_out, .. } => {
                linear_in.bytes() + linear_out.bytes()
            }
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Ffn::Gelu { linear1, linear2 } => linear2.forward(&crate::exec::gelu_erf(&linear1.forward(x)?)?)?,
            Ffn::GatedSilu { linear_in, linear_out, hidden } => {
                linear_out.forward(&crate::exec::silu_gate(&linear_in.forward(x)?, *hidden)?)?
            }
            Ffn::GatedGelu { linear_in, linear_out, hidden } => {
                let ab = linear_in.forward(x)?;
                let n = ab.rank() - 1;
                let a = crate::exec::gelu_erf(&ab.narrow(n, 0, *hidden)?)?;
                linear_out.forward(&(a * ab.narrow(n, *hidden, *hidden)?)?)?
            }
        })
    }
}

#[derive(Debug, Clone)]
struct Layer {
    norm1: PerStep<Norm>,
    attn: Attention,
    layer_scale_1: Option<Tensor>,
    norm2: PerStep<Norm>,
    ffn: PerStep<Ffn>,
    layer_scale_2: Option<Tensor>,
}

fn scaled(x: Tensor, scale: &Option<Tensor>) -> Result<Tensor> {
    Ok(match scale {
        Some(s) => x.broadcast_mul(s)?,
        None => x,
    })
}

impl Layer {
    fn new(cfg: &TransformerConfig, layout: &StepLayout) -> Result<Self> {
        let d = cfg.d_model;
        let scale = |name: &str| -> Result<Option<Tensor>> {
            match (cfg.layer_scale, layout) {
                (false, _) => Ok(None),
                (true, StepLayout::Shared(vb)) => Ok(Some(get_checked(&vb.pp(name), &[d], "scale")?)),
                (true, _) => Err(EngineError::InvalidInput("LayerScale with per-step weights is not supported".into())),
            }
        };
        let norm = |name: &str| layout.shared_in_stacked(|vb| Norm::new(cfg.norm, d, &vb.pp(name)));
        let sched = cfg.schedule.as_deref();
        Ok(Self {
            norm1: norm("norm1")?.scheduled(sched)?,
            attn: Attention::new(d, cfg.num_heads, cfg.rope, &layout.pp("self_attn"))?.scheduled(sched)?,
            layer_scale_1: scale("layer_scale_1")?,
            norm2: norm("norm2")?.scheduled(sched)?,
            ffn: Ffn::load(cfg, layout)?.scheduled(sched)?,
            layer_scale_2: scale("layer_scale_2")?,
        })
    }

    fn weight_bytes(&self) -> usize {
        let scale = |s: &Option<Tensor>| s.as_ref().map(|t| t.elem_count() * t.dtype().size_in_bytes()).unwrap_or(0);
        self.norm1.items().iter().chain(self.norm2.items()).map(Norm::weight_bytes).sum::<usize>()
            + self.attn.weight_bytes()
            + self.ffn.items().iter().map(Ffn::weight_bytes).sum::<usize>()
            + scale(&self.layer_scale_1)
            + scale(&self.layer_scale_2)
    }

    /// The layer with the stream handed on unsummed: its input is x + r (x alone when r is
    /// None) and its output the sum of the pair it returns, so that each residual add runs with
    /// the norm after it (`Norm::add_forward`: one launch on CUDA), the last one in the next
    /// layer. The same ops as `forward_tapped` otherwise (bit-identical where nothing fuses).
    fn forward_deferred(&self, x: &Tensor, r: Option<&Tensor>, ctx: &StepCtx, cache: &mut KvCache) -> Result<(Tensor, Tensor)> {
        let offset = ctx.offset;
        let (x, n1) = add_norm(&self.norm1, x, r, offset)?;
        let a = scaled(self.attn.forward(&n1, ctx, cache)?, &self.layer_scale_1)?;
        let (x, n2) = add_norm(&self.norm2, &x, Some(&a), offset)?;
        let f = scaled(self.ffn.apply(&n2, offset, |f, x| f.forward(x))?, &self.layer_scale_2)?;
        Ok((x, f))
    }

    /// As `forward`, every op group's output through `tap` (see [`LAYER_OPS`]).
    fn forward_tapped(&self, x: &Tensor, ctx: &StepCtx, cache: &mut KvCache, tap: &mut OpTap) -> Result<Tensor> {
        let offset = ctx.offset;
        let n1 = tap("norm1", self.norm1.apply(x, offset, |n, x| Ok(n.forward(x)?))?)?;
        let a = tap("self_attn", self.attn.forward(&n1, ctx, cache)?)?;
        let x = tap("residual_1", (x + scaled(a, &self.layer_scale_1)?)?)?;
        let n2 = tap("norm2", self.norm2.apply(&x, offset, |n, x| Ok(n.forward(x)?))?)?;
        let f = tap("ffn", self.ffn.apply(&n2, offset, |f, x| f.forward(x))?)?;
        tap("residual_2", (x + scaled(f, &self.layer_scale_2)?)?)
    }
}

/// (s, norm(s)) for s = x + r (x alone when r is None), `norm` taken at `offset`: fused where
/// one norm serves the whole call (shared weights, or one step of per-step ones).
fn add_norm(norm: &PerStep<Norm>, x: &Tensor, r: Option<&Tensor>, offset: usize) -> Result<(Tensor, Tensor)> {
    let forward = |s: &Tensor| norm.apply(s, offset, |n, x| Ok(n.forward(x)?));
    match r {
        None => Ok((x.clone(), forward(x)?)),
        Some(r) if !norm.is_per_step() || x.dim(1)? == 1 => Ok(norm.at(offset)?.add_forward(x, r)?),
        Some(r) => {
            let s = (x + r)?;
            let n = forward(&s)?;
            Ok((s, n))
        }
    }
}

/// The stream after a chain of `Layer::forward_deferred`: its last residual add.
fn settle(x: Tensor, r: Option<Tensor>) -> Result<Tensor> {
    Ok(match r {
        Some(r) => (x + r)?,
        None => x,
    })
}

/// Per-stream transformer state: one KV cache per layer (of the state's [`KvCacheKind`]) and
/// the position of the next step. `Default` keeps keys and values in the model's dtype.
#[derive(Debug, Clone, Default)]
pub struct TransformerState {
    kv_cache: KvCacheKind,
    caches: Vec<KvCache>,
    offset: usize,
    /// Per batch row, the position at which its stream began (empty: every row at 0).
    starts: Vec<usize>,
}

impl TransformerState {
    /// A fresh state whose streaming caches store keys and values as `kv_cache`.
    pub fn new(kv_cache: KvCacheKind) -> Self {
        Self { kv_cache, ..Self::default() }
    }

    pub fn kv_cache(&self) -> KvCacheKind {
        self.kv_cache
    }

    /// Start batch row `row` (of `batch`) afresh at the next step: it forgets every key cached
    /// so far and counts its positions from there; the other rows go on.
    pub fn reset_row(&mut self, row: usize, batch: usize) {
        if self.starts.len() != batch {
            self.starts = vec![0; batch];
        }
        if row < batch {
            self.starts[row] = self.offset;
        }
    }

    /// Steps consumed so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Bytes held by the KV caches.
    pub fn cache_bytes(&self) -> usize {
        self.caches.iter().map(|c| c.bytes()).sum()
    }

    /// Advance every cache by `steps` positions without computing them (benchmarks: a state as
    /// deep into a conversation as `steps` more steps would make it; the ring's contents are
    /// whatever was written). Rows keep their starts.
    pub fn skip(&mut self, steps: usize) {
        self.offset += steps;
        for c in &mut self.caches {
            c.skip(steps);
        }
    }

    /// Make row `row` (of `batch`) continue `src`, a one-row state that ran alone from its own
    /// position 0 (a joining row's prompt, prefilled on its own): its `src.offset()` positions are
    /// copied into this state's last `src.offset()` positions of that row, and the row's start
    /// moved back to them, so that its next step attends to exactly what `src`'s would, at the
    /// same relative positions. The other rows are untouched. Needs this state to be at least
    /// `src.offset()` positions in, and `src` within the ring's `capacity`.
    pub fn splice_row(&mut self, row: usize, batch: usize, src: &TransformerState, capacity: usize) -> Result<()> {
        let n = src.offset;
        if n > self.offset || n > capacity || row >= batch {
            return Err(EngineError::Streaming(format!(
                "splice: {n} positions into row {row} of {batch} of a state at {} (ring of {capacity})",
                self.offset
            )));
        }
        if self.caches.len() != src.caches.len() {
            self.caches = vec![KvCache::new(self.kv_cache); src.caches.len()];
            for c in &mut self.caches {
                c.skip(self.offset);
            }
        }
        for (dst, s) in self.caches.iter_mut().zip(&src.caches) {
            dst.splice_row(s, row, batch, capacity)?;
        }
        if self.starts.len() != batch {
            self.starts = vec![0; batch];
        }
        self.starts[row] = self.offset - n;
        Ok(())
    }

    /// The identities of the layers' ring tensors, as one list (None before every layer's cache
    /// has its ring). Rings are written in place and only ever replaced by new tensors (new
    /// ids): a CUDA graph of a step, which holds their addresses, may be replayed while this
    /// list is unchanged (`lm::temporal_graph`).
    pub fn ring_fingerprint(&self) -> Option<Vec<candle_core::TensorId>> {
        let mut v = Vec::new();
        for c in &self.caches {
            let ts = c.ring_tensors();
            if ts.is_empty() {
                return None;
            }
            v.extend(ts.iter().map(|t| t.id()));
        }
        (!v.is_empty()).then_some(v)
    }

    /// Put the state back at position `offset` (≤ its own), every cache too: a step cut short
    /// (a failed graph capture) may have advanced some layers' caches and not others.
    pub fn rewind_to(&mut self, offset: usize) {
        self.offset = self.offset.min(offset);
        for c in &mut self.caches {
            c.rewind(c.written().saturating_sub(offset));
        }
        for s in &mut self.starts {
            *s = (*s).min(self.offset);
        }
    }

    /// Forget the last `steps` steps so that they can be run again (their ring slots are then
    /// overwritten with the same positions). Only steps still held by the caches can be re-run.
    pub fn rewind(&mut self, steps: usize) {
        let steps = steps.min(self.offset);
        self.offset -= steps;
        for c in &mut self.caches {
            c.rewind(steps);
        }
        for s in &mut self.starts {
            *s = (*s).min(self.offset);
        }
    }
}

/// What a transformer call's context depends on in its input [B, T, d].
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub batch: usize,
    pub steps: usize,
    pub dtype: DType,
    pub device: &'a Device,
}

/// A stack of layers over [B, T, d] inputs.
#[derive(Debug, Clone)]
pub struct Transformer {
    cfg: TransformerConfig,
    layers: Vec<Layer>,
    rope: Option<Rope>,
}

impl Transformer {
    /// `vb` points at the parent of `layers`; one weight set shared by every position.
    pub fn new<'a>(cfg: &TransformerConfig, vb: impl Into<Weights<'a>>) -> Result<Self> {
        Self::with_layout(cfg, &StepLayout::Shared(vb.into()))
    }

    /// Weights in any [`StepLayout`] (the depformer's per-step weights).
    pub fn with_layout(cfg: &TransformerConfig, layout: &StepLayout) -> Result<Self> {
        let layers = (0..cfg.num_layers).map(|i| Layer::new(cfg, &layout.layer(i))).collect::<Result<_>>()?;
        let rope = cfg.rope.then(|| Rope::new(cfg.d_model / cfg.num_heads, cfg.max_period));
        Ok(Self { cfg: cfg.clone(), layers, rope })
    }

    fn ctx(&self, x: &Tensor, offset: usize, capacity: Option<usize>, starts: &[usize]) -> Result<StepCtx> {
        let (batch, steps, _) = x.dims3()?;
        self.ctx_in(Shape { batch, steps, dtype: x.dtype(), device: x.device() }, offset, capacity, starts, false)
    }

    fn ctx_in(&self, shape: Shape, offset: usize, capacity: Option<usize>, starts: &[usize], fixed: bool) -> Result<StepCtx> {
        let Shape { batch, steps, dtype, device } = shape;
        let call = StepCall {
            batch,
            steps,
            offset,
            capacity,
            starts,
            context: self.cfg.context,
            rope: self.rope.as_ref(),
            dtype,
            head_dim: self.cfg.d_model / self.cfg.num_heads,
            heads: self.cfg.num_heads,
            fixed,
        };
        StepCtx::new(&call, device)
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Bytes of every layer's weights (8-bit blocks as stored).
    pub fn weight_bytes(&self) -> usize {
        self.layers.iter().map(Layer::weight_bytes).sum()
    }

    /// The input plus the sinusoidal embedding of its positions (each row's from its start),
    /// when the config has one: `cat[cos(p / P^(i/(h−1))), sin(…)]`, h = d/2, in f32.
    fn with_sin(&self, x: &Tensor, offset: usize, starts: &[usize]) -> Result<Tensor> {
        let Some(scale) = self.cfg.sin_scale else { return Ok(x.clone()) };
        let (b, t, c) = x.dims3()?;
        let half = c / 2;
        let period = self.cfg.max_period as f32;
        let denom: Vec<f32> = (0..half).map(|i| period.powf(i as f32 / (half as f32 - 1.0))).collect();
        let rows = if starts.len() == b { b } else { 1 };
        let mut v = Vec::with_capacity(rows * t * c);
        for r in 0..rows {
            let start = if rows == b && !starts.is_empty() { starts[r] } else { 0 };
            for p in 0..t {
                let pos = (offset + p).saturating_sub(start) as f32;
                v.extend(denom.iter().map(|d| (pos / d).cos()));
                v.extend(denom.iter().map(|d| (pos / d).sin()));
            }
        }
        let emb = (Tensor::from_vec(v, (rows, t, c), &candle_core::Device::Cpu)?.to_device(x.device())? * scale)?;
        Ok(x.broadcast_add(&emb.to_dtype(x.dtype())?)?)
    }

    /// Whole-sequence forward of layer `layer` alone, every op group through `tap` (for
    /// `verify trace`: one layer re-run op by op from a given input).
    pub fn forward_layer_tapped(&self, layer: usize, x: &Tensor, tap: &mut OpTap) -> Result<Tensor> {
        let ctx = self.ctx(x, 0, None, &[])?;
        let l = self.layers.get(layer).ok_or_else(|| EngineError::InvalidInput(format!("layer {layer} of {}", self.layers.len())))?;
        l.forward_tapped(x, &ctx, &mut KvCache::default(), tap)
    }

    /// Whole-sequence forward, `tap(layer, op, output)` after every op group of every layer
    /// (the sinusoidal embedding, if any, added first).
    pub fn forward_tapped(&self, x: &Tensor, tap: &mut dyn FnMut(usize, &'static str, Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let ctx = self.ctx(x, 0, None, &[])?;
        let mut x = self.with_sin(x, 0, &[])?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_tapped(&x, &ctx, &mut KvCache::default(), &mut |op, t| tap(i, op, t))?;
        }
        Ok(x)
    }

    /// Whole-sequence forward (every key kept; the context mask still applies).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, &mut TransformerState::default(), None, None)
    }

    /// As `forward`, calling `inspect(layer index, layer output)` after every layer; the
    /// output it returns replaces the layer's (for fault injection in `verify model`).
    pub fn forward_map(&self, x: &Tensor, map: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let ctx = self.ctx(x, 0, None, &[])?;
        let mut x = self.with_sin(x, 0, &[])?;
        for (i, layer) in self.layers.iter().enumerate() {
            let (s, r) = layer.forward_deferred(&x, None, &ctx, &mut KvCache::default())?;
            x = map(i, (s + r)?)?;
        }
        Ok(x)
    }

    /// Streaming forward of the next `T` steps, continuing `state`.
    pub fn step(&self, x: &Tensor, state: &mut TransformerState) -> Result<Tensor> {
        self.run(x, state, Some(self.cfg.context), None)
    }

    /// As `step`, calling `inspect(layer index, layer output)` after every layer (for finding
    /// the first layer that produces NaN, or timing layers).
    pub fn step_inspect(
        &self,
        x: &Tensor,
        state: &mut TransformerState,
        inspect: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        self.run(x, state, Some(self.cfg.context), Some(inspect))
    }

    /// The context of the next one-step streaming call of `x` [B, 1, d] on `state` (what
    /// `step` makes itself; `lm::temporal_graph` keeps one for its graph).
    pub fn step_ctx(&self, x: &Tensor, state: &TransformerState) -> Result<StepCtx> {
        self.ctx(x, state.offset, Some(self.cfg.context), &state.starts)
    }

    /// The context of the next streaming call of `x` [B, T, d] on `state` in the fixed layout
    /// (`exec::step_ctx`: whole-ring attention, writes at slots held on the device), which a
    /// CUDA graph can record with Candle's ops (`mimi::graph`). Where the fused decode kernel
    /// applies it is chosen instead (it reads its positions on the device too).
    pub fn step_ctx_fixed(&self, shape: Shape, state: &TransformerState) -> Result<StepCtx> {
        self.ctx_in(shape, state.offset, Some(self.cfg.context), &state.starts, true)
    }

    /// Whether this transformer's streaming step can be recorded as a CUDA graph with `ctx`
    /// (the step's inputs all on the device: fused decode attention or the fixed layout, no
    /// sinusoidal embedding made on the host).
    pub fn graphable(&self, ctx: &StepCtx) -> bool {
        (ctx.fused.is_some() || ctx.slots.is_some()) && self.cfg.sin_scale.is_none()
    }

    /// One streaming call of `x` [B, T, d] with a context made by `step_ctx` or
    /// `step_ctx_fixed` (possibly a captured one refilled in place); `state` advances as in
    /// `step`.
    pub fn step_with_ctx(&self, x: &Tensor, state: &mut TransformerState, ctx: &StepCtx) -> Result<Tensor> {
        if state.caches.len() != self.layers.len() {
            state.caches = vec![KvCache::new(state.kv_cache); self.layers.len()];
        }
        if ctx.offset != state.offset {
            return Err(EngineError::Streaming(format!("a step context at {} for a state at {}", ctx.offset, state.offset)));
        }
        let mut x = self.with_sin(x, state.offset, &state.starts)?;
        let mut r = None;
        for (layer, cache) in self.layers.iter().zip(state.caches.iter_mut()) {
            (x, r) = layer.forward_deferred(&x, r.as_ref(), ctx, cache).map(|(x, r)| (x, Some(r)))?;
        }
        state.offset += x.dim(1)?;
        settle(x, r)
    }

    fn run(
        &self,
        x: &Tensor,
        state: &mut TransformerState,
        capacity: Option<usize>,
        mut inspect: Option<&mut (dyn FnMut(usize, &Tensor) -> Result<()> + '_)>,
    ) -> Result<Tensor> {
        if state.caches.len() != self.layers.len() {
            state.caches = vec![KvCache::new(state.kv_cache); self.layers.len()];
        }
        let t = x.dim(1)?;
        if let Some(c) = capacity.filter(|&c| t > c) {
            // A ring of c slots keeps only the last c keys of a call, so the first queries of a
            // longer one would lose their own keys (the reference's ring then attends to nothing:
            // NaN). Such a call runs as calls of c steps, each as the reference streams it.
            let mut outs = Vec::with_capacity(t.div_ceil(c));
            for start in (0..t).step_by(c) {
                outs.push(self.run(&x.narrow(1, start, c.min(t - start))?, state, capacity, inspect.as_deref_mut())?);
            }
            return Ok(Tensor::cat(&outs, 1)?);
        }
        let ctx = self.ctx(x, state.offset, capacity, &state.starts)?;
        let mut x = self.with_sin(x, state.offset, &state.starts)?;
        let mut r = None;
        for (i, (layer, cache)) in self.layers.iter().zip(state.caches.iter_mut()).enumerate() {
            (x, r) = layer.forward_deferred(&x, r.as_ref(), &ctx, cache).map(|(x, r)| (x, Some(r)))?;
            if let Some(inspect) = inspect.as_mut() {
                inspect(i, &(&x + r.as_ref().expect("set above"))?)?;
            }
        }
        state.offset += t;
        settle(x, r)
    }
}

/// Kyutai's `ProjectedTransformer` with `conv_layout`: [B, C, T] in and out, optional input and
/// output projections when the model width differs from the signal's. Checkpoint names:
/// `{prefix}.transformer.layers.*`, `{prefix}.input_proj.weight`, `{prefix}.output_projs.0.weight`.
#[derive(Debug, Clone)]
pub struct ProjectedTransformer {
    input_proj: Option<Linear>,
    transformer: Transformer,
    output_proj: Option<Linear>,
}

impl ProjectedTransformer {
    pub fn new<'a>(cfg: &TransformerConfig, input_dim: usize, output_dim: usize, vb: impl Into<Weights<'a>>) -> Result<Self> {
        let vb: Weights<'a> = vb.into();
        let d = cfg.d_model;
        let input_proj = if input_dim != d { Some(linear_no_bias(input_dim, d, &vb.pp("input_proj"))?) } else { None };
        let output_proj =
            if output_dim != d { Some(linear_no_bias(d, output_dim, &vb.pp("output_projs").pp(0))?) } else { None };
        Ok(Self { input_proj, transformer: Transformer::new(cfg, vb.pp("transformer"))?, output_proj })
    }

    fn wrap(&self, x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let mut x = x.transpose(1, 2)?;
        if let Some(p) = &self.input_proj {
            x = p.forward(&x)?;
        }
        let mut y = f(&x)?;
        if let Some(p) = &self.output_proj {
            y = p.forward(&y)?;
        }
        Ok(y.transpose(1, 2)?.contiguous()?)
    }

    /// Whole-sequence forward of [B, C, T].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.wrap(x, |x| self.transformer.forward(x))
    }

    /// Streaming forward of the next steps of [B, C, T].
    pub fn step(&self, x: &Tensor, state: &mut TransformerState) -> Result<Tensor> {
        self.wrap(x, |x| self.transformer.step(x, state))
    }

    /// The fixed-layout context of the next streaming call of `steps` steps of `batch` rows in
    /// `dtype` on `state` (`Transformer::step_ctx_fixed`).
    pub fn step_ctx_fixed(&self, batch: usize, steps: usize, dtype: DType, device: &Device, state: &TransformerState) -> Result<StepCtx> {
        self.transformer.step_ctx_fixed(Shape { batch, steps, dtype, device }, state)
    }

    /// As `step`, with a context from `step_ctx_fixed` (possibly a captured one refilled in place).
    pub fn step_with_ctx(&self, x: &Tensor, state: &mut TransformerState, ctx: &StepCtx) -> Result<Tensor> {
        self.wrap(x, |x| self.transformer.step_with_ctx(x, state, ctx))
    }

    pub fn transformer(&self) -> &Transformer {
        &self.transformer
    }
}

//! Mimi, Kyutai's streaming neural audio codec: 24 kHz mono ⇄ 12.5 Hz frames of discrete codes.
//!
//! Encode: SEANet encoder (hop 960, 25 Hz) → transformer → conv downsample (×2, 12.5 Hz) →
//! split RVQ. Decode: RVQ sum → depthwise transposed-conv upsample (25 Hz) → transformer →
//! SEANet decoder. Weights are shared and immutable (`Mimi` is `Clone`-cheap behind an `Arc` if
//! the caller wants); all streaming state lives in [`EncoderState`]/[`DecoderState`], owned by the
//! caller's session, one per stream batch.

pub mod config;
pub mod graph;
pub mod quantizer;
pub mod seanet;
pub mod stream;
pub mod tiny;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::MimiConfig;
pub use graph::CodecGraphs;
use graph::{CodecGraph, Streamed};
use quantizer::SplitRvq;
use seanet::{SeanetDecoder, SeanetEncoder, SeanetState};

use crate::error::{EngineError, Result};
use crate::exec::StepCtx;
use crate::lm::GraphState;
use crate::nn::conv::{ConvSpec, ConvState, ConvTrState, PadMode, StreamingConv1d, StreamingConvTr1d};
use crate::nn::transformer::{ProjectedTransformer, TransformerState};

/// Every intermediate of an encode, for parity checks.
#[derive(Debug, Clone)]
pub struct EncodeStages {
    pub seanet_latent: Tensor,
    pub transformer_out: Tensor,
    pub downsampled: Tensor,
    pub codes: Tensor,
}

/// Every intermediate of a decode, for parity checks.
#[derive(Debug, Clone)]
pub struct DecodeStages {
    pub quantized: Tensor,
    pub upsampled: Tensor,
    pub decoder_transformer_out: Tensor,
    pub pcm: Tensor,
}

/// What an encoder stream carries between calls.
#[derive(Debug, Default)]
struct EncoderStreams {
    seanet: SeanetState,
    transformer: TransformerState,
    downsample: ConvState,
}

/// What a decoder stream carries between calls.
#[derive(Debug, Default)]
struct DecoderStreams {
    upsample: ConvTrState,
    transformer: TransformerState,
    seanet: SeanetState,
}

impl Streamed for EncoderStreams {
    fn carried_mut(&mut self) -> Vec<&mut Option<Tensor>> {
        let mut v = self.seanet.carried_mut();
        v.push(self.downsample.carried_mut());
        v
    }

    fn has_fresh_rows(&self) -> bool {
        self.seanet.has_fresh_rows() || self.downsample.has_fresh_rows()
    }

    fn transformer(&mut self) -> &mut TransformerState {
        &mut self.transformer
    }
}

impl Streamed for DecoderStreams {
    fn carried_mut(&mut self) -> Vec<&mut Option<Tensor>> {
        let mut v = vec![self.upsample.carried_mut()];
        v.extend(self.seanet.carried_mut());
        v
    }

    fn has_fresh_rows(&self) -> bool {
        self.seanet.has_fresh_rows() || self.upsample.has_fresh_rows()
    }

    fn transformer(&mut self) -> &mut TransformerState {
        &mut self.transformer
    }
}

/// Streaming encoder state for one batch of streams (and its CUDA graph, `mimi::graph`).
#[derive(Debug, Default)]
pub struct EncoderState {
    streams: EncoderStreams,
    graphs: CodecGraphs,
    graph: Option<CodecGraph>,
}

/// Streaming decoder state for one batch of streams (and its CUDA graph, `mimi::graph`).
#[derive(Debug, Default)]
pub struct DecoderState {
    streams: DecoderStreams,
    graphs: CodecGraphs,
    graph: Option<CodecGraph>,
}

impl EncoderState {
    /// A fresh state whose streaming calls run as `graphs` says.
    pub fn new(graphs: CodecGraphs) -> Self {
        Self { graphs, ..Self::default() }
    }

    /// Forget everything (the graph choice kept): the next call starts a new stream.
    pub fn reset(&mut self) {
        *self = Self::new(self.graphs);
    }

    /// Batch row `row` (of `batch`) starts a new stream at the next call; the other rows go on
    /// (a conversation joining a running batch).
    pub fn reset_row(&mut self, row: usize, batch: usize) {
        let s = &mut self.streams;
        s.seanet.reset_row(row);
        s.transformer.reset_row(row, batch);
        s.downsample.reset_row(row);
    }

    /// Where the encode's CUDA graph stands.
    pub fn graph_state(&self) -> GraphState {
        graph::slot_state(&self.graph, self.graphs)
    }
}

impl DecoderState {
    /// A fresh state whose streaming calls run as `graphs` says.
    pub fn new(graphs: CodecGraphs) -> Self {
        Self { graphs, ..Self::default() }
    }

    /// Forget everything (the graph choice kept): the next call starts a new stream.
    pub fn reset(&mut self) {
        *self = Self::new(self.graphs);
    }

    /// Batch row `row` (of `batch`) starts a new stream at the next call; the other rows go on.
    pub fn reset_row(&mut self, row: usize, batch: usize) {
        let s = &mut self.streams;
        s.upsample.reset_row(row);
        s.transformer.reset_row(row, batch);
        s.seanet.reset_row(row);
    }

    /// Where the decode's CUDA graph stands.
    pub fn graph_state(&self) -> GraphState {
        graph::slot_state(&self.graph, self.graphs)
    }
}

/// The Mimi codec's weights.
#[derive(Debug, Clone)]
pub struct Mimi {
    cfg: MimiConfig,
    encoder: SeanetEncoder,
    encoder_transformer: ProjectedTransformer,
    downsample: StreamingConv1d,
    quantizer: SplitRvq,
    upsample: StreamingConvTr1d,
    decoder_transformer: ProjectedTransformer,
    decoder: SeanetDecoder,
    device: Device,
    dtype: DType,
}

impl Mimi {
    /// Build from a `VarBuilder` rooted at the checkpoint's top level.
    pub fn new(cfg: &MimiConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(|msg| EngineError::Config { path: "<mimi config>".into(), msg })?;
        if !vb.contains_tensor("encoder.model.0.conv.conv.weight") {
            return Err(EngineError::MissingTensor {
                name: "encoder.model.0.conv.conv.weight".into(),
                expected: vec![cfg.seanet.n_filters, cfg.seanet.channels, cfg.seanet.kernel_size],
                hint: ": this does not look like a Mimi checkpoint (expected Kyutai's tensor names, e.g. \
                       tokenizer-e351c8d8-checkpoint125.safetensors)"
                    .into(),
            });
        }
        let dim = cfg.seanet.dimension;
        let stride = cfg.downsample_stride();
        let tcfg = cfg.transformer_config();
        let (tin, tout) = (cfg.transformer.input_dimension, cfg.transformer.output_dimensions[0]);
        let resample = ConvSpec {
            in_channels: dim,
            out_channels: dim,
            kernel: 2 * stride,
            stride,
            dilation: 1,
            bias: false,
            pad_mode: PadMode::Replicate,
        };
        Ok(Self {
            encoder: SeanetEncoder::new(&cfg.seanet, vb.pp("encoder"))?,
            encoder_transformer: ProjectedTransformer::new(&tcfg, tin, tout, vb.pp("encoder_transformer"))?,
            downsample: StreamingConv1d::new(resample, vb.pp("downsample").pp("conv"))?,
            quantizer: SplitRvq::new(&cfg.quantizer, cfg.codebooks(), vb.pp("quantizer"))?,
            upsample: StreamingConvTr1d::new(resample, dim, vb.pp("upsample").pp("convtr"))?,
            decoder_transformer: ProjectedTransformer::new(&tcfg, tin, tout, vb.pp("decoder_transformer"))?,
            decoder: SeanetDecoder::new(&cfg.seanet, vb.pp("decoder"))?,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            cfg: cfg.clone(),
        })
    }

    /// Load from a safetensors file in `dtype` on `device`.
    pub fn load(path: &Path, cfg: &MimiConfig, dtype: DType, device: &Device) -> Result<Self> {
        let paths = [path.to_path_buf()];
        let vb = crate::weights::open_safetensors(&paths, dtype, device)?;
        Self::new(cfg, vb).map_err(|e| e.in_checkpoint(&paths))
    }

    /// Load a model folder holding `config.json` (Kyutai's field names; the real Mimi's values
    /// when absent) and one Mimi safetensors file (`model.safetensors`, or the released
    /// `tokenizer-e351c8d8-checkpoint125.safetensors`, or the only `tokenizer*.safetensors`).
    pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = if cfg_path.exists() { MimiConfig::from_json_file(&cfg_path)? } else { MimiConfig::default() };
        let weights = find_weights(dir)?;
        Self::load(&weights, &cfg, dtype, device)
    }

    pub fn config(&self) -> &MimiConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Samples per frame (1920).
    pub fn frame_size(&self) -> usize {
        self.cfg.frame_size()
    }

    pub fn num_codebooks(&self) -> usize {
        self.quantizer.num_codebooks()
    }

    fn check_pcm(&self, pcm: &Tensor, streaming: bool) -> Result<usize> {
        let dims = pcm.dims();
        if dims.len() != 3 || dims[1] != 1 {
            return Err(EngineError::InvalidInput(format!("pcm must be [batch, 1, samples], got {dims:?}")));
        }
        let fs = self.frame_size();
        if streaming && (dims[2] == 0 || !dims[2].is_multiple_of(fs)) {
            return Err(EngineError::Streaming(format!(
                "streaming encode needs a positive multiple of {fs} samples, got {}",
                dims[2]
            )));
        }
        if dims[2] == 0 {
            return Err(EngineError::InvalidInput("pcm has no samples".into()));
        }
        Ok(dims[2])
    }

    /// An encode; `ctx`: a streaming call's transformer context when it is made by the caller
    /// (the graph path's fixed layout), else the transformer makes its own.
    fn encode_with(&self, pcm: &Tensor, st: &mut EncoderStreams, streaming: bool, ctx: Option<&StepCtx>) -> Result<EncodeStages> {
        let pcm = pcm.to_dtype(self.dtype)?;
        let seanet_latent = self.encoder.forward(&pcm, &mut st.seanet)?;
        let transformer_out = match (streaming, ctx) {
            (true, Some(ctx)) => self.encoder_transformer.step_with_ctx(&seanet_latent, &mut st.transformer, ctx)?,
            (true, None) => self.encoder_transformer.step(&seanet_latent, &mut st.transformer)?,
            (false, _) => self.encoder_transformer.forward(&seanet_latent)?,
        };
        let downsampled = self.downsample.forward(&transformer_out, &mut st.downsample)?;
        let codes = self.quantizer.encode(&downsampled)?;
        Ok(EncodeStages { seanet_latent, transformer_out, downsampled, codes })
    }

    /// A decode of codes the quantizer has checked (`SplitRvq::check_codes`); `ctx` as for
    /// `encode_with`.
    fn decode_with(&self, codes: &Tensor, st: &mut DecoderStreams, streaming: bool, ctx: Option<&StepCtx>) -> Result<DecodeStages> {
        let quantized = self.quantizer.decode_checked(codes)?.to_dtype(self.dtype)?;
        let upsampled = self.upsample.forward(&quantized, &mut st.upsample)?;
        let decoder_transformer_out = match (streaming, ctx) {
            (true, Some(ctx)) => self.decoder_transformer.step_with_ctx(&upsampled, &mut st.transformer, ctx)?,
            (true, None) => self.decoder_transformer.step(&upsampled, &mut st.transformer)?,
            (false, _) => self.decoder_transformer.forward(&upsampled)?,
        };
        let pcm = self.decoder.forward(&decoder_transformer_out, &mut st.seanet)?;
        Ok(DecodeStages { quantized, upsampled, decoder_transformer_out, pcm })
    }

    /// The fixed-layout context of a streaming call of `steps` transformer steps of `batch` rows
    /// on `state`, or None where the layout cannot take it (more steps than the ring holds).
    fn fixed_ctx(&self, tr: &ProjectedTransformer, batch: usize, steps: usize, state: &TransformerState) -> Result<Option<StepCtx>> {
        if steps > tr.transformer().config().context {
            return Ok(None);
        }
        let ctx = tr.step_ctx_fixed(batch, steps, self.dtype, &self.device, state)?;
        Ok(tr.transformer().graphable(&ctx).then_some(ctx))
    }

    /// Whole-signal encode with every intermediate. The signal is zero-padded on the right to a
    /// whole number of frames, as the reference does.
    pub fn encode_stages(&self, pcm: &Tensor) -> Result<EncodeStages> {
        let t = self.check_pcm(pcm, false)?;
        let fs = self.frame_size();
        let padded = t.div_ceil(fs) * fs;
        let pcm = if padded > t { pcm.pad_with_zeros(2, 0, padded - t)? } else { pcm.clone() };
        self.encode_with(&pcm, &mut EncoderStreams::default(), false, None)
    }

    /// Whole-signal encode: pcm [B, 1, T] → codes [B, K, ⌈T/1920⌉] (u32).
    pub fn encode(&self, pcm: &Tensor) -> Result<Tensor> {
        Ok(self.encode_stages(pcm)?.codes)
    }

    /// Whole-sequence decode with every intermediate.
    pub fn decode_stages(&self, codes: &Tensor) -> Result<DecodeStages> {
        self.quantizer.check_codes(codes)?;
        self.decode_with(codes, &mut DecoderStreams::default(), false, None)
    }

    /// Whole-sequence decode: codes [B, K, F] → pcm [B, 1, F · 1920].
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        Ok(self.decode_stages(codes)?.pcm)
    }

    /// Streaming encode of the next frames: pcm [B, 1, n·1920] → codes [B, K, n], with every
    /// intermediate (eagerly, in the layout the state's graph choice implies).
    pub fn encode_step_stages(&self, pcm: &Tensor, state: &mut EncoderState) -> Result<EncodeStages> {
        let t = self.check_pcm(pcm, true)?;
        let ctx = match state.graphs.on(&self.device) {
            CodecGraphs::Off => None,
            _ => self.fixed_ctx(&self.encoder_transformer, pcm.dim(0)?, t / self.cfg.hop(), &state.streams.transformer)?,
        };
        self.encode_with(pcm, &mut state.streams, true, ctx.as_ref())
    }

    /// Streaming encode of the next frames: pcm [B, 1, n·1920] → codes [B, K, n] (u32), through
    /// the state's CUDA graph where it has one (`mimi::graph`).
    pub fn encode_step(&self, pcm: &Tensor, state: &mut EncoderState) -> Result<Tensor> {
        let t = self.check_pcm(pcm, true)?;
        let mode = state.graphs.on(&self.device);
        let steps = t / self.cfg.hop();
        let fresh = match mode {
            CodecGraphs::Off => None,
            _ => self.fixed_ctx(&self.encoder_transformer, pcm.dim(0)?, steps, &state.streams.transformer)?,
        };
        let Some(fresh) = fresh else {
            state.graph = None;
            return Ok(self.encode_with(pcm, &mut state.streams, true, None)?.codes);
        };
        let pcm = pcm.to_dtype(self.dtype)?;
        let body = |x: &Tensor, st: &mut EncoderStreams, ctx: &StepCtx| Ok(self.encode_with(x, st, true, Some(ctx))?.codes);
        graph::run(&mut state.graph, graph::Call { input: &pcm, fresh, steps, mode }, &mut state.streams, &body)
    }

    fn check_step_codes(&self, codes: &Tensor) -> Result<()> {
        if codes.dims().len() != 3 || codes.dim(2)? == 0 {
            return Err(EngineError::Streaming(format!("codes must be [batch, K, n ≥ 1], got {:?}", codes.dims())));
        }
        self.quantizer.check_codes(codes)
    }

    /// Streaming decode of the next frames, with every intermediate (eagerly, in the layout the
    /// state's graph choice implies).
    pub fn decode_step_stages(&self, codes: &Tensor, state: &mut DecoderState) -> Result<DecodeStages> {
        self.check_step_codes(codes)?;
        let steps = codes.dim(2)? * self.downsample.stride();
        let ctx = match state.graphs.on(&self.device) {
            CodecGraphs::Off => None,
            _ => self.fixed_ctx(&self.decoder_transformer, codes.dim(0)?, steps, &state.streams.transformer)?,
        };
        self.decode_with(codes, &mut state.streams, true, ctx.as_ref())
    }

    /// Streaming decode of the next frames: codes [B, K, n] → pcm [B, 1, n·1920], through the
    /// state's CUDA graph where it has one (`mimi::graph`).
    pub fn decode_step(&self, codes: &Tensor, state: &mut DecoderState) -> Result<Tensor> {
        self.check_step_codes(codes)?;
        let mode = state.graphs.on(&self.device);
        let steps = codes.dim(2)? * self.downsample.stride();
        let fresh = match mode {
            CodecGraphs::Off => None,
            _ => self.fixed_ctx(&self.decoder_transformer, codes.dim(0)?, steps, &state.streams.transformer)?,
        };
        let Some(fresh) = fresh else {
            state.graph = None;
            return Ok(self.decode_with(codes, &mut state.streams, true, None)?.pcm);
        };
        let codes = codes.to_device(&self.device)?.to_dtype(DType::U32)?;
        let body = |x: &Tensor, st: &mut DecoderStreams, ctx: &StepCtx| Ok(self.decode_with(x, st, true, Some(ctx))?.pcm);
        graph::run(&mut state.graph, graph::Call { input: &codes, fresh, steps, mode }, &mut state.streams, &body)
    }
}

/// The Mimi weights file in `dir`.
fn find_weights(dir: &Path) -> Result<std::path::PathBuf> {
    let err = |msg: String| EngineError::ModelFiles { path: dir.to_path_buf(), msg };
    for name in ["model.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors"] {
        if dir.join(name).is_file() {
            return Ok(dir.join(name));
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| err(format!("cannot list folder: {e}")))?;
    let candidates: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("tokenizer") && n.ends_with(".safetensors")
        })
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(err("no Mimi weights: expected model.safetensors or tokenizer-*.safetensors".into())),
        many => Err(err(format!("{} candidate Mimi weight files; pass one file explicitly", many.len()))),
    }
}

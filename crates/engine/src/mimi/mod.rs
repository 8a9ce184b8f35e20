//! Mimi, Kyutai's streaming neural audio codec: 24 kHz mono ⇄ 12.5 Hz frames of discrete codes.
//!
//! Encode: SEANet encoder (hop 960, 25 Hz) → transformer → conv downsample (×2, 12.5 Hz) →
//! split RVQ. Decode: RVQ sum → depthwise transposed-conv upsample (25 Hz) → transformer →
//! SEANet decoder. Weights are shared and immutable (`Mimi` is `Clone`-cheap behind an `Arc` if
//! the caller wants); all streaming state lives in [`EncoderState`]/[`DecoderState`], owned by the
//! caller's session, one per stream batch.

pub mod config;
pub mod quantizer;
pub mod seanet;
pub mod stream;
pub mod tiny;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::MimiConfig;
use quantizer::SplitRvq;
use seanet::{SeanetDecoder, SeanetEncoder, SeanetState};

use crate::error::{EngineError, Result};
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

/// Streaming encoder state for one batch of streams.
#[derive(Debug, Clone, Default)]
pub struct EncoderState {
    seanet: SeanetState,
    transformer: TransformerState,
    downsample: ConvState,
}

/// Streaming decoder state for one batch of streams.
#[derive(Debug, Clone, Default)]
pub struct DecoderState {
    upsample: ConvTrState,
    transformer: TransformerState,
    seanet: SeanetState,
}

impl EncoderState {
    /// Forget everything: the next call starts a new stream.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Batch row `row` (of `batch`) starts a new stream at the next call; the other rows go on
    /// (a conversation joining a running batch).
    pub fn reset_row(&mut self, row: usize, batch: usize) {
        self.seanet.reset_row(row);
        self.transformer.reset_row(row, batch);
        self.downsample.reset_row(row);
    }
}

impl DecoderState {
    /// Forget everything: the next call starts a new stream.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Batch row `row` (of `batch`) starts a new stream at the next call; the other rows go on.
    pub fn reset_row(&mut self, row: usize, batch: usize) {
        self.upsample.reset_row(row);
        self.transformer.reset_row(row, batch);
        self.seanet.reset_row(row);
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

    fn encode_with(&self, pcm: &Tensor, st: &mut EncoderState, streaming: bool) -> Result<EncodeStages> {
        let pcm = pcm.to_dtype(self.dtype)?;
        let seanet_latent = self.encoder.forward(&pcm, &mut st.seanet)?;
        let transformer_out = if streaming {
            self.encoder_transformer.step(&seanet_latent, &mut st.transformer)?
        } else {
            self.encoder_transformer.forward(&seanet_latent)?
        };
        let downsampled = self.downsample.forward(&transformer_out, &mut st.downsample)?;
        let codes = self.quantizer.encode(&downsampled)?;
        Ok(EncodeStages { seanet_latent, transformer_out, downsampled, codes })
    }

    fn decode_with(&self, codes: &Tensor, st: &mut DecoderState, streaming: bool) -> Result<DecodeStages> {
        let quantized = self.quantizer.decode(codes)?.to_dtype(self.dtype)?;
        let upsampled = self.upsample.forward(&quantized, &mut st.upsample)?;
        let decoder_transformer_out = if streaming {
            self.decoder_transformer.step(&upsampled, &mut st.transformer)?
        } else {
            self.decoder_transformer.forward(&upsampled)?
        };
        let pcm = self.decoder.forward(&decoder_transformer_out, &mut st.seanet)?;
        Ok(DecodeStages { quantized, upsampled, decoder_transformer_out, pcm })
    }

    /// Whole-signal encode with every intermediate. The signal is zero-padded on the right to a
    /// whole number of frames, as the reference does.
    pub fn encode_stages(&self, pcm: &Tensor) -> Result<EncodeStages> {
        let t = self.check_pcm(pcm, false)?;
        let fs = self.frame_size();
        let padded = t.div_ceil(fs) * fs;
        let pcm = if padded > t { pcm.pad_with_zeros(2, 0, padded - t)? } else { pcm.clone() };
        self.encode_with(&pcm, &mut EncoderState::default(), false)
    }

    /// Whole-signal encode: pcm [B, 1, T] → codes [B, K, ⌈T/1920⌉] (u32).
    pub fn encode(&self, pcm: &Tensor) -> Result<Tensor> {
        Ok(self.encode_stages(pcm)?.codes)
    }

    /// Whole-sequence decode with every intermediate.
    pub fn decode_stages(&self, codes: &Tensor) -> Result<DecodeStages> {
        self.decode_with(codes, &mut DecoderState::default(), false)
    }

    /// Whole-sequence decode: codes [B, K, F] → pcm [B, 1, F · 1920].
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        Ok(self.decode_stages(codes)?.pcm)
    }

    /// Streaming encode of the next frames: pcm [B, 1, n·1920] → codes [B, K, n].
    pub fn encode_step_stages(&self, pcm: &Tensor, state: &mut EncoderState) -> Result<EncodeStages> {
        self.check_pcm(pcm, true)?;
        self.encode_with(pcm, state, true)
    }

    /// Streaming encode of the next frames: pcm [B, 1, n·1920] → codes [B, K, n] (u32).
    pub fn encode_step(&self, pcm: &Tensor, state: &mut EncoderState) -> Result<Tensor> {
        Ok(self.encode_step_stages(pcm, state)?.codes)
    }

    /// Streaming decode of the next frames, with every intermediate.
    pub fn decode_step_stages(&self, codes: &Tensor, state: &mut DecoderState) -> Result<DecodeStages> {
        if codes.dims().len() != 3 || codes.dim(2)? == 0 {
            return Err(EngineError::Streaming(format!("codes must be [batch, K, n ≥ 1], got {:?}", codes.dims())));
        }
        self.decode_with(codes, state, true)
    }

    /// Streaming decode of the next frames: codes [B, K, n] → pcm [B, 1, n·1920].
    pub fn decode_step(&self, codes: &Tensor, state: &mut DecoderState) -> Result<Tensor> {
        Ok(self.decode_step_stages(codes, state)?.pcm)
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

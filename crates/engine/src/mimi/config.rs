//! Mimi configuration in two layers: the file form, with Kyutai's field names
//! (`moshi/models/loaders.py`: `_seanet_kwargs`, `_transformer_kwargs`, `_quantizer_kwargs`,
//! `_mimi_config`), and its resolution into the plain structs the modules take.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::nn::conv::PadMode;
use crate::nn::norm::NormKind;
use crate::nn::transformer::{FfnKind, TransformerConfig};

/// `_seanet_kwargs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeanetConfig {
    pub channels: usize,
    /// Latent width (512).
    pub dimension: usize,
    pub causal: bool,
    pub n_filters: usize,
    pub n_residual_layers: usize,
    /// Only "ELU" exists in Mimi.
    pub activation: String,
    pub compress: usize,
    pub dilation_base: usize,
    #[serde(default)]
    pub disable_norm_outer_blocks: usize,
    pub kernel_size: usize,
    pub residual_kernel_size: usize,
    pub last_kernel_size: usize,
    /// "none": weight norm was folded into the weights before release.
    pub norm: String,
    pub pad_mode: PadMode,
    /// Decoder order (upsampling); the encoder uses them reversed.
    pub ratios: Vec<usize>,
    pub true_skip: bool,
}

/// `_transformer_kwargs` (Mimi's encoder and decoder transformers share it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MimiTransformerConfig {
    pub d_model: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub causal: bool,
    /// Initial LayerScale value; `null` means no LayerScale.
    pub layer_scale: Option<f64>,
    pub context: usize,
    pub conv_layout: bool,
    pub max_period: f64,
    /// "none" (plain GELU FFN) or "silu" (gated).
    pub gating: String,
    pub norm: NormKind,
    /// "rope" or "none".
    pub positional_embedding: String,
    pub dim_feedforward: usize,
    pub input_dimension: usize,
    pub output_dimensions: Vec<usize>,
}

/// `_quantizer_kwargs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizerConfig {
    /// Codebook vector width (256).
    pub dimension: usize,
    /// Codebooks in the checkpoint (32).
    pub n_q: usize,
    /// Entries per codebook (2048).
    pub bins: usize,
    pub input_dimension: usize,
    pub output_dimension: usize,
    /// Semantic codebooks quantized by `rvq_first` (1).
    #[serde(default = "one")]
    pub n_q_semantic: usize,
}

fn one() -> usize {
    1
}

/// `_mimi_config`, plus the number of codebooks in use (not a Kyutai field: Moshi uses 8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MimiConfig {
    pub sample_rate: usize,
    #[serde(default = "one")]
    pub channels: usize,
    pub frame_rate: f64,
    pub seanet: SeanetConfig,
    pub transformer: MimiTransformerConfig,
    pub quantizer: QuantizerConfig,
    /// Codebooks in use. Not a Kyutai field: absent, the reference derives it from the LM
    /// (`max(dep_q, n_q − dep_q)`, `MoshiFiles` does the same through
    /// [`MimiConfig::with_lm_codebooks`]) and uses 8 without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_codebooks: Option<usize>,
}

impl Default for MimiConfig {
    /// The released Mimi (`tokenizer-e351c8d8-checkpoint125.safetensors`), 8 codebooks in use.
    fn default() -> Self {
        Self {
            sample_rate: 24_000,
            channels: 1,
            frame_rate: 12.5,
            seanet: SeanetConfig {
                channels: 1,
                dimension: 512,
                causal: true,
                n_filters: 64,
                n_residual_layers: 1,
                activation: "ELU".into(),
                compress: 2,
                dilation_base: 2,
                disable_norm_outer_blocks: 0,
                kernel_size: 7,
                residual_kernel_size: 3,
                last_kernel_size: 3,
                norm: "none".into(),
                pad_mode: PadMode::Constant,
                ratios: vec![8, 6, 5, 4],
                true_skip: true,
            },
            transformer: MimiTransformerConfig {
                d_model: 512,
                num_heads: 8,
                num_layers: 8,
                causal: true,
                layer_scale: Some(0.01),
                context: 250,
                conv_layout: true,
                max_period: 10_000.0,
                gating: "none".into(),
                norm: NormKind::LayerNorm,
                positional_embedding: "rope".into(),
                dim_feedforward: 2048,
                input_dimension: 512,
                output_dimensions: vec![512],
            },
            quantizer: QuantizerConfig {
                dimension: 256,
                n_q: 32,
                bins: 2048,
                input_dimension: 512,
                output_dimension: 512,
                n_q_semantic: 1,
            },
            num_codebooks: None,
        }
    }
}

impl MimiConfig {
    /// Read a JSON file with Kyutai's field names and validate it.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::Config { path: path.display().to_string(), msg: e.to_string() })?;
        let cfg: Self = serde_json::from_str(&text)
            .map_err(|e| EngineError::Config { path: path.display().to_string(), msg: e.to_string() })?;
        cfg.validate().map_err(|msg| EngineError::Config { path: path.display().to_string(), msg })?;
        Ok(cfg)
    }

    /// The codebooks in use: the config's, else 8 (`get_mimi`'s default).
    pub fn codebooks(&self) -> usize {
        self.num_codebooks.unwrap_or(8)
    }

    /// The config for the Mimi of an LM that needs `lm_codebooks` (`LmConfig::mimi_codebooks`):
    /// a config that names its own count keeps it, as the reference's explicit argument would.
    pub fn with_lm_codebooks(mut self, lm_codebooks: usize) -> std::result::Result<Self, String> {
        if self.num_codebooks.is_none() {
            self.num_codebooks = Some(lm_codebooks);
            self.validate()?;
        }
        Ok(self)
    }

    /// Samples per frame (1920 for 24 kHz at 12.5 Hz).
    pub fn frame_size(&self) -> usize {
        (self.sample_rate as f64 / self.frame_rate).round() as usize
    }

    /// SEANet hop: samples per latent step (960).
    pub fn hop(&self) -> usize {
        self.seanet.ratios.iter().product()
    }

    /// Latent steps per frame (2): the conv downsample's stride.
    pub fn downsample_stride(&self) -> usize {
        self.frame_size() / self.hop()
    }

    /// Check what the implementation supports, with a message naming the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let s = &self.seanet;
        let t = &self.transformer;
        let q = &self.quantizer;
        let checks: [(bool, String); 12] = [
            (self.channels == 1 && s.channels == 1, format!("channels {} (only mono is supported)", s.channels)),
            (s.causal && t.causal, "causal must be true".into()),
            (s.activation == "ELU", format!("seanet.activation {:?} (only ELU)", s.activation)),
            (s.norm == "none", format!("seanet.norm {:?} (only \"none\": fold weight norm first)", s.norm)),
            (s.true_skip, "seanet.true_skip must be true".into()),
            (t.gating == "none", format!("transformer.gating {:?} (Mimi uses \"none\")", t.gating)),
            (
                matches!(t.positional_embedding.as_str(), "rope" | "none"),
                format!("transformer.positional_embedding {:?}", t.positional_embedding),
            ),
            (t.conv_layout, "transformer.conv_layout must be true".into()),
            (t.d_model.is_multiple_of(t.num_heads), format!("d_model {} not divisible by num_heads {}", t.d_model, t.num_heads)),
            (t.output_dimensions.len() == 1, "transformer.output_dimensions must have one entry".into()),
            (
                self.codebooks() >= 1 && self.codebooks() <= q.n_q && q.n_q_semantic >= 1 && q.n_q_semantic < q.n_q,
                format!("num_codebooks {} must be in 1..={} (n_q_semantic {})", self.codebooks(), q.n_q, q.n_q_semantic),
            ),
            (
                self.frame_size().is_multiple_of(self.hop()) && (self.sample_rate as f64 / self.frame_rate).fract() == 0.0,
                format!("frame size {} is not a multiple of the SEANet hop {}", self.frame_size(), self.hop()),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(msg),
            None => Ok(()),
        }
    }

    /// The resolved transformer configuration shared by the encoder and decoder transformers.
    pub fn transformer_config(&self) -> TransformerConfig {
        let t = &self.transformer;
        TransformerConfig {
            d_model: t.d_model,
            num_heads: t.num_heads,
            num_layers: t.num_layers,
            dim_feedforward: t.dim_feedforward,
            context: t.context,
            max_period: t.max_period,
            norm: t.norm,
            ffn: FfnKind::Gelu,
            layer_scale: t.layer_scale.is_some(),
            rope: t.positional_embedding == "rope",
            sin_scale: None,
            schedule: None,
        }
    }
}

//! Reading an LM configuration as Kyutai writes it (the `config.json` of a released repo: the
//! `LMModel` keyword arguments of `moshi/models/lm.py` 0.2.13 at top level, next to the file names
//! and settings `CheckpointInfo.from_hf_repo` in `loaders.py` takes out first), strictly: every key
//! the reference accepts is either implemented or refused with an error naming it, and a key the
//! reference does not know is refused too. Absent keys take the reference's defaults (those of
//! `LMModel.__init__`, `StreamingTransformer` and `StreamingTransformerLayer`), and the depformer's
//! `depformer_*` keys fall back to the temporal transformer's, as the reference's `kwargs_dep` does.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::{LmConfig, PersonaPlexConfig};
use super::generate::GenConfig;
use super::sampling::SamplingConfig;

/// A checkpoint's default sampling (`lm_gen_config`: keyword arguments of the reference's `LMGen`,
/// which `run_inference.py` and `server.py` pass through). Command-line flags and the server's
/// query parameters override it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmGenDefaults {
    #[serde(default = "yes")]
    pub use_sampling: bool,
    #[serde(default = "temp_audio")]
    pub temp: f64,
    #[serde(default = "temp_text")]
    pub temp_text: f64,
    #[serde(default = "top_k_audio")]
    pub top_k: usize,
    #[serde(default = "top_k_text")]
    pub top_k_text: usize,
    /// Classifier-free guidance: only 1 (none) is supported (it needs conditioning).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub cfg_coef: f64,
    /// The reference's debug assertions; no effect on the result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check: bool,
}

fn yes() -> bool {
    true
}
fn temp_audio() -> f64 {
    0.8
}
fn temp_text() -> f64 {
    0.7
}
fn top_k_audio() -> usize {
    250
}
fn top_k_text() -> usize {
    25
}
fn one() -> f64 {
    1.0
}
fn is_one(x: &f64) -> bool {
    *x == 1.0
}

impl Default for LmGenDefaults {
    fn default() -> Self {
        Self { use_sampling: true, temp: 0.8, temp_text: 0.7, top_k: 250, top_k_text: 25, cfg_coef: 1.0, check: false }
    }
}

impl LmGenDefaults {
    /// The sampling settings these defaults mean (the reference's rules: `use_sampling` false or a
    /// temperature of 0 is greedy), or an error naming the field that cannot be honoured.
    pub fn gen_config(&self) -> Result<GenConfig, String> {
        if self.cfg_coef != 1.0 {
            return Err(format!("lm_gen_config.cfg_coef {} (classifier-free guidance) is not supported", self.cfg_coef));
        }
        if !self.use_sampling {
            return Ok(GenConfig::greedy());
        }
        let text = SamplingConfig::from_user(self.temp_text, self.top_k_text).map_err(|e| format!("lm_gen_config.temp_text/top_k_text: {e}"))?;
        let audio = SamplingConfig::from_user(self.temp, self.top_k).map_err(|e| format!("lm_gen_config.temp/top_k: {e}"))?;
        Ok(GenConfig { text, audio })
    }
}

/// Every key of a Kyutai `config.json` the reference reads for a Moshi LM. `Option` = absent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LmConfigFile {
    // `CheckpointInfo` keys (file names, model kind, generation and traceability settings).
    moshi_name: Option<String>,
    mimi_name: Option<String>,
    tokenizer_name: Option<String>,
    mimi_config_name: Option<String>,
    lora_name: Option<String>,
    model_type: Option<String>,
    lm_gen_config: Option<LmGenDefaults>,
    tts_config: Option<Value>,
    stt_config: Option<Value>,
    /// Traceability only (signature, epoch): no effect on the model.
    #[allow(dead_code)]
    model_id: Option<Value>,
    // `get_moshi_lm`'s own keys.
    conditioners: Option<Value>,
    fuser: Option<Value>,
    /// Deprecated; the reference drops it.
    #[allow(dead_code)]
    depformer_causal: Option<Value>,
    lora: Option<bool>,
    lora_rank: Option<Value>,
    lora_scaling: Option<Value>,
    // `LMModel.__init__`.
    delays: Option<Vec<usize>>,
    n_q: Option<usize>,
    dep_q: Option<usize>,
    card: Option<usize>,
    text_card: Option<usize>,
    text_card_out: Option<usize>,
    demux_second_text_stream: Option<bool>,
    demux_second_stream: Option<bool>,
    dim: Option<usize>,
    num_heads: Option<usize>,
    hidden_scale: Option<f64>,
    norm: Option<String>,
    norm_emb: Option<bool>,
    bias_proj: Option<bool>,
    depformer_dim: Option<usize>,
    depformer_dim_feedforward: Option<Value>,
    depformer_multi_linear: Option<bool>,
    depformer_weights_per_step: Option<bool>,
    depformer_weights_per_step_schedule: Option<Vec<usize>>,
    depformer_low_rank_embeddings: Option<usize>,
    depformer_pos_emb: Option<String>,
    depformer_norm: Option<String>,
    existing_text_padding_id: Option<u32>,
    /// Only used by the reference's TTS: no effect on the LM.
    #[allow(dead_code)]
    existing_text_end_padding_id: Option<u32>,
    extra_heads_num_heads: Option<usize>,
    /// Only meaningful with extra heads (refused above).
    #[allow(dead_code)]
    extra_heads_dim: Option<usize>,
    context: Option<usize>,
    causal: Option<bool>,
    quantize: Option<bool>,
    /// Training only (activation checkpointing): no effect on inference.
    #[allow(dead_code)]
    gradient_checkpointing: Option<bool>,
    // `StreamingTransformer` / `StreamingTransformerLayer` (through `**kwargs`), and their
    // depformer overrides (`depformer_` + the same name).
    num_layers: Option<usize>,
    positional_embedding: Option<String>,
    max_period: Option<f64>,
    positional_scale: Option<f64>,
    layer_scale: Option<f64>,
    gating: Option<String>,
    kv_repeat: Option<usize>,
    skip_self_attn: Option<bool>,
    cross_attention: Option<bool>,
    depformer_num_heads: Option<usize>,
    depformer_num_layers: Option<usize>,
    depformer_max_period: Option<f64>,
    depformer_positional_scale: Option<f64>,
    depformer_layer_scale: Option<f64>,
    depformer_gating: Option<String>,
    depformer_kv_repeat: Option<usize>,
    /// The reference sets the depformer's context to None whatever this says (its cache holds
    /// one frame's steps): kept for display, ignored, as there.
    depformer_context: Option<usize>,
    // Ours: PersonaPlex's prompt constants.
    personaplex: Option<PersonaPlexConfig>,
}

/// Refuse a key whose value we do not implement, naming it.
fn refuse(field: &str, value: impl std::fmt::Display, why: &str) -> String {
    format!("{field} {value}: {why}")
}

impl LmConfigFile {
    fn resolve(self) -> Result<LmConfig, String> {
        let f = self;
        if let Some(t) = &f.model_type {
            if t != "moshi" {
                return Err(refuse("model_type", format!("{t:?}"), "only \"moshi\" models are supported (hibiki, STT and TTS models are not)"));
            }
        }
        for (name, v) in [("tts_config", &f.tts_config), ("stt_config", &f.stt_config), ("conditioners", &f.conditioners), ("fuser", &f.fuser)] {
            if let Some(v) = v {
                if !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty())) {
                    return Err(refuse(name, v, "conditioned, TTS and STT models are not supported"));
                }
            }
        }
        if f.lora == Some(true) || f.lora_name.is_some() {
            return Err("lora / lora_name: LoRA checkpoints are not supported (fuse the LoRA weights into the model first)".into());
        }
        let _ = (&f.lora_rank, &f.lora_scaling, &f.moshi_name, &f.mimi_name, &f.tokenizer_name, &f.mimi_config_name);
        let flags = [
            ("demux_second_text_stream", f.demux_second_text_stream.or(f.demux_second_stream), "two muxed text streams are not supported"),
            ("norm_emb", f.norm_emb, "normalised embeddings are not supported"),
            ("bias_proj", f.bias_proj, "biased output projections are not supported"),
            ("quantize", f.quantize, "the reference's int8 QLinear is not supported (load the float weights)"),
            ("skip_self_attn", f.skip_self_attn, "layers without self-attention are not supported"),
            ("cross_attention", f.cross_attention, "cross-attention (conditioned models) is not supported"),
        ];
        if let Some((name, _, why)) = flags.iter().find(|(_, v, _)| *v == Some(true)) {
            return Err(refuse(name, true, why));
        }
        if f.causal == Some(false) {
            return Err(refuse("causal", false, "a non-causal LM cannot stream"));
        }
        for (name, v) in [("kv_repeat", f.kv_repeat), ("depformer_kv_repeat", f.depformer_kv_repeat)] {
            if let Some(n) = v.filter(|&n| n != 1) {
                return Err(refuse(name, n, "grouped-query attention is not supported (only 1)"));
            }
        }
        for (name, v) in [("layer_scale", f.layer_scale), ("depformer_layer_scale", f.depformer_layer_scale.or(f.layer_scale))] {
            if let Some(s) = v {
                return Err(refuse(name, s, "LayerScale in the LM is not supported (no released LM has one)"));
            }
        }
        if let Some(n) = f.extra_heads_num_heads.filter(|&n| n != 0) {
            return Err(refuse("extra_heads_num_heads", n, "extra output heads are not supported"));
        }
        if let Some(n) = &f.depformer_norm {
            return Err(refuse("depformer_norm", format!("{n:?}"), "norms before the depformer heads are not supported"));
        }
        let text_card = f.text_card.unwrap_or(32000);
        if let Some(n) = f.text_card_out.filter(|&n| n != text_card) {
            return Err(refuse("text_card_out", n, "a text head of another size than text_card is not supported"));
        }
        let context = f.context.ok_or("context null or absent (unbounded attention) is not supported: give the number of steps")?;
        let depformer_dim_feedforward = match f.depformer_dim_feedforward {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(n.as_u64().ok_or("depformer_dim_feedforward must be a positive integer")? as usize),
            Some(v) => return Err(refuse("depformer_dim_feedforward", v, "one width per step (a list) is not supported: give one integer")),
        };
        let num_layers = f.num_layers.ok_or("num_layers is missing")?;
        let gating = f.gating.unwrap_or_else(|| "none".into());
        let max_period = f.max_period.unwrap_or(10_000.0);
        let positional_scale = f.positional_scale.unwrap_or(1.0);
        let gen = f.lm_gen_config;
        if let Some(g) = &gen {
            g.gen_config()?;
        }
        Ok(LmConfig {
            dim: f.dim.unwrap_or(128),
            text_card,
            existing_text_padding_id: f.existing_text_padding_id.unwrap_or(3),
            n_q: f.n_q.unwrap_or(8),
            dep_q: f.dep_q.unwrap_or(8),
            card: f.card.unwrap_or(1024),
            num_heads: f.num_heads.unwrap_or(8),
            num_layers,
            hidden_scale: f.hidden_scale.unwrap_or(4.0),
            causal: true,
            context,
            max_period,
            depformer_gating: f.depformer_gating.unwrap_or_else(|| gating.clone()),
            gating,
            norm: f.norm.unwrap_or_else(|| "layer_norm".into()),
            positional_embedding: f.positional_embedding.unwrap_or_else(|| "sin".into()),
            positional_scale,
            depformer_dim: f.depformer_dim.unwrap_or(256),
            depformer_dim_feedforward,
            depformer_num_heads: f.depformer_num_heads.ok_or("depformer_num_heads is missing")?,
            depformer_num_layers: f.depformer_num_layers.unwrap_or(num_layers),
            depformer_multi_linear: f.depformer_multi_linear.unwrap_or(false),
            depformer_context: f.depformer_context.unwrap_or(f.dep_q.unwrap_or(8)),
            depformer_max_period: f.depformer_max_period.unwrap_or(max_period),
            depformer_pos_emb: f.depformer_pos_emb.unwrap_or_else(|| "sin".into()),
            depformer_positional_scale: f.depformer_positional_scale.unwrap_or(positional_scale),
            depformer_weights_per_step: f.depformer_weights_per_step.unwrap_or(false),
            depformer_weights_per_step_schedule: f.depformer_weights_per_step_schedule,
            depformer_low_rank_embeddings: f.depformer_low_rank_embeddings,
            delays: f.delays.unwrap_or_else(|| vec![0]),
            lm_gen_config: gen,
            personaplex: f.personaplex,
        })
    }
}

/// Parse and resolve a config's JSON text (errors are messages naming the field).
pub(super) fn parse(text: &str) -> Result<LmConfig, String> {
    let file: LmConfigFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    file.resolve()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moshi_json(extra: &str) -> String {
        let base = include_str!("../../../../golden/moshi_tiny/config.json").trim_end().trim_end_matches('}').to_string();
        format!("{base}{extra}}}")
    }

    #[test]
    fn released_layout_reads_and_keeps_lm_gen_config() {
        let cfg = parse(&moshi_json("")).unwrap();
        let g = cfg.lm_gen_config.as_ref().unwrap();
        assert_eq!((g.temp, g.temp_text, g.top_k, g.top_k_text), (0.8, 0.7, 250, 25));
        assert_eq!(cfg.default_sampling(), GenConfig::default());
    }

    #[test]
    fn lm_gen_config_sets_the_default_sampling() {
        let text = moshi_json("").replace("\"temp\": 0.8", "\"temp\": 0.6").replace("\"top_k_text\": 25", "\"top_k_text\": 5");
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.default_sampling().audio, SamplingConfig::sampled(0.6, 250));
        assert_eq!(cfg.default_sampling().text, SamplingConfig::sampled(0.7, 5));
        let greedy = moshi_json("").replace("\"temp\": 0.8", "\"use_sampling\": false, \"temp\": 0.8");
        assert_eq!(parse(&greedy).unwrap().default_sampling(), GenConfig::greedy());
    }

    #[test]
    fn unknown_and_unsupported_fields_are_named() {
        for (extra, named) in [
            (", \"no_such_key\": 1", "no_such_key"),
            (", \"kv_repeat\": 2", "kv_repeat"),
            (", \"bias_proj\": true", "bias_proj"),
            (", \"depformer_norm\": \"rms_norm\"", "depformer_norm"),
            (", \"extra_heads_num_heads\": 2", "extra_heads_num_heads"),
            (", \"lora\": true", "lora"),
            (", \"conditioners\": {\"x\": {}}", "conditioners"),
            (", \"depformer_dim_feedforward_list\": [1]", "depformer_dim_feedforward_list"),
        ] {
            let e = parse(&moshi_json(extra)).unwrap_err();
            assert!(e.contains(named), "{extra}: {e}");
        }
        let e = parse(&moshi_json("").replace("\"layer_scale\": null", "\"layer_scale\": 0.1")).unwrap_err();
        assert!(e.contains("layer_scale"), "{e}");
        let e = parse(&moshi_json("").replace("\"depformer_dim_feedforward\": 132", "\"depformer_dim_feedforward\": [132]")).unwrap_err();
        assert!(e.contains("depformer_dim_feedforward"), "{e}");
        let e = parse(&moshi_json("").replace("\"model_type\": \"moshi\"", "\"model_type\": \"hibiki\"")).unwrap_err();
        assert!(e.contains("model_type"), "{e}");
        let e = parse(&moshi_json(", \"lm_gen_config2\": {}")).unwrap_err();
        assert!(e.contains("lm_gen_config2"), "{e}");
    }

    #[test]
    fn absent_keys_take_the_reference_defaults() {
        let cfg = parse(r#"{"num_layers": 2, "depformer_num_heads": 1, "context": 4, "n_q": 3, "dep_q": 3, "delays": [0, 1, 2, 4]}"#).unwrap();
        assert_eq!((cfg.norm.as_str(), cfg.gating.as_str(), cfg.positional_embedding.as_str(), cfg.depformer_pos_emb.as_str()), ("layer_norm", "none", "sin", "sin"));
        assert_eq!((cfg.dim, cfg.card, cfg.text_card, cfg.depformer_dim, cfg.depformer_num_layers), (128, 1024, 32000, 256, 2));
        assert_eq!(cfg.depformer_gating, "none", "the depformer inherits gating");
        let e = parse(r#"{"depformer_num_heads": 1, "context": 4}"#).unwrap_err();
        assert!(e.contains("num_layers"), "{e}");
        let e = parse(r#"{"num_layers": 2, "depformer_num_heads": 1}"#).unwrap_err();
        assert!(e.contains("context"), "{e}");
    }

    #[test]
    fn mimi_codebooks_are_derived_as_the_reference_does() {
        let cfg = parse(&moshi_json("")).unwrap();
        assert_eq!(cfg.mimi_codebooks(), 8);
        let c = LmConfig { n_q: 32, dep_q: 16, ..cfg.clone() };
        assert_eq!(c.mimi_codebooks(), 16);
        let c = LmConfig { n_q: 12, dep_q: 4, ..cfg };
        assert_eq!(c.mimi_codebooks(), 8);
    }
}

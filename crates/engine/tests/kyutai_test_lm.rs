//! Kyutai's own LM test (`moshi/tests/test_lm.py` in kyutai-labs/moshi, its assets copied to
//! golden/kyutai_test_lm/, MIT/Apache-2.0): a model of every non-Moshi kind the reference's
//! `LMModel` defaults to — LayerNorm, a plain GELU FFN (`gating: none`), sinusoidal positions in
//! both transformers, a context of 4, a depformer with a weight schedule [0, 1, 1], low-rank (8)
//! input embeddings and gated SiLU FFNs — loaded from their `test_lm_model.safetensors` with the
//! config of `_get_lm()` written as Kyutai's `config.json` (absent keys take the reference's
//! defaults), run on their codes and compared with their `test_lm_out.safetensors`.
//!
//! Their test compares cross-entropies within 1e-6 relative; here every valid logit (their
//! `mask`) is compared, within `F32_REL_TOL` of the peak (the same bound as the other LM fixtures).

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::{Fixture, Report, F32_REL_TOL};
use moshi_engine::lm::{LmConfig, LmModel};

/// The floats of the reference's output file, and its BOOL masks as bytes (Candle reads no BOOL).
struct RefOut {
    bytes: Vec<u8>,
}

impl RefOut {
    fn load() -> Self {
        Self { bytes: std::fs::read(common::golden_dir().join("kyutai_test_lm/test_lm_out.safetensors")).unwrap() }
    }

    fn mask(&self, name: &str) -> Vec<u8> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), safetensors::Dtype::BOOL);
        v.data().to_vec()
    }

    fn floats(&self, name: &str) -> Tensor {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), safetensors::Dtype::F32);
        let f: Vec<f32> = v.data().chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Tensor::from_vec(f, v.shape(), &Device::Cpu).unwrap()
    }
}

#[test]
fn kyutai_test_lm_assets_match_their_outputs() {
    let dir = common::golden_dir().join("kyutai_test_lm");
    let cfg = LmConfig::from_json_file(&dir.join("config.json")).unwrap();
    assert_eq!((cfg.norm.as_str(), cfg.gating.as_str(), cfg.positional_embedding.as_str()), ("layer_norm", "none", "sin"));
    assert_eq!(cfg.depformer_num_layers, 2, "the depformer inherits num_layers");
    let lm = LmModel::load(&[dir.join("test_lm_model.safetensors")], &cfg, DType::F32, &Device::Cpu).unwrap();
    let codes = Fixture::load("kyutai_test_lm/test_lm_codes.safetensors");
    let codes = codes.get("codes"); // [B, 1 + n_q, T]
    let out = RefOut::load();
    let tf = lm.forward_teacher(codes).unwrap();
    let (b, t) = (codes.dim(0).unwrap(), codes.dim(2).unwrap());

    // Text (delay 0): every position the reference marks valid.
    let mut r = Report::default();
    let text_mask = out.mask("text_mask");
    let ref_text = out.floats("text_logits").squeeze(1).unwrap(); // [B, T, text_card]
    let keep: Vec<(usize, usize)> = (0..b).flat_map(|i| (0..t).map(move |p| (i, p))).filter(|&(i, p)| text_mask[i * t + p] == 1).collect();
    assert!(keep.len() > b * t / 2, "the reference's text mask keeps {} of {}", keep.len(), b * t);
    let pick = |x: &Tensor, at: &[(usize, usize)]| Tensor::stack(&at.iter().map(|&(i, p)| x.i((i, p)).unwrap()).collect::<Vec<_>>(), 0).unwrap();
    r.float_rel("text_logits (valid positions)", &pick(&tf.temporal.text_logits, &keep), &pick(&ref_text, &keep), F32_REL_TOL);

    // Audio: the reference undelays (codebook k at time p comes from delayed position p + D_k);
    // ours are in delayed order.
    let mask = out.mask("mask");
    let ref_logits = out.floats("logits");
    let ref_logits = &ref_logits; // [B, dep_q, T, card]
    for k in 0..cfg.dep_q {
        let d = cfg.delays[1 + k];
        let at: Vec<(usize, usize)> = (0..b).flat_map(|i| (0..t).map(move |p| (i, p))).filter(|&(i, p)| mask[(i * cfg.dep_q + k) * t + p] == 1).collect();
        assert!(!at.is_empty() && at.iter().all(|&(_, p)| p + d < t), "codebook {k}: mask");
        let ours = Tensor::stack(&at.iter().map(|&(i, p)| tf.depformer_logits.i((i, k, p + d)).unwrap()).collect::<Vec<_>>(), 0).unwrap();
        let theirs = Tensor::stack(&at.iter().map(|&(i, p)| ref_logits.i((i, k, p)).unwrap()).collect::<Vec<_>>(), 0).unwrap();
        r.float_rel(&format!("depformer logits, codebook {k} ({} valid)", at.len()), &ours, &theirs, F32_REL_TOL);
    }
    r.finish("Kyutai's test_lm assets");
}

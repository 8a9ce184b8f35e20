//! The Moshi LM against the reference on the tiny reference-built LM (golden/lm_tiny): the
//! teacher-forced temporal forward. Floats within `F32_REL_TOL` of each tensor's peak (the same
//! 4e-6 relative bound as Mimi's 2e-6 at a 0.5 peak; the LM's values peak at 4–10).

mod common;

use candle_core::{DType, Device};
use common::{Fixture, Report, F32_REL_TOL};
use moshi_engine::lm::temporal::Temporal;
use moshi_engine::lm::LmConfig;

#[test]
fn teacher_forced_temporal_forward_matches_reference() {
    let dir = common::golden_dir().join("lm_tiny");
    let cfg = LmConfig::from_json_file(&dir.join("config.json")).unwrap();
    let vb = moshi_engine::weights::open_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu).unwrap();
    let model = Temporal::new(&cfg, &vb).unwrap();
    let fx = Fixture::load("lm_tiny/io.safetensors");
    let out = model.forward(fx.get("tf.delayed_input")).unwrap();
    let mut r = Report::default();
    r.float_rel("transformer_hidden", &out.hidden, fx.get("tf.transformer_hidden"), F32_REL_TOL);
    r.float_rel("transformer_out", &out.out, fx.get("tf.transformer_out"), F32_REL_TOL);
    let logits = fx.get("tf.text_logits_raw").squeeze(1).unwrap();
    r.float_rel("text_logits", &out.text_logits, &logits, F32_REL_TOL);
    r.finish("tiny LM, teacher-forced temporal forward");
}

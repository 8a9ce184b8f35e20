//! LM checkpoints: the 7B config implies exactly the released PyTorch file's 355 names and shapes
//! (golden/moshi7b_checkpoint_names.txt, copied from kyutai/moshiko-pytorch-bf16's header); both
//! of Kyutai's layouts are checked at full size from a safetensors header alone (a sparse file:
//! nothing is allocated); the tiny reference LM converted to the Candle layout gives bit-identical
//! outputs; wrong files fail with the tensor's name and both shapes; bf16 runs; NaN is located.

mod common;

use std::collections::HashMap;
use std::io::Write;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::temp_path;
use moshi_engine::exec::RunOptions;
use moshi_engine::lm::{check_checkpoint, GenConfig, Layout, LmConfig, LmModel};
use moshi_engine::EngineError;

#[test]
fn moshi_7b_config_implies_the_released_pytorch_layout() {
    let mut released = common::names_file("moshi7b_checkpoint_names.txt");
    released.sort();
    let ours = LmConfig::default().pytorch_layout_tensors();
    assert_eq!(released.len(), 355);
    let missing: Vec<_> = released.iter().filter(|r| !ours.contains(r)).collect();
    let extra: Vec<_> = ours.iter().filter(|o| !released.contains(o)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "not implied by the config: {missing:?}\nnot in the release: {extra:?}");
}

fn tiny_dir() -> std::path::PathBuf {
    common::golden_dir().join("lm_tiny")
}

fn tiny_cfg() -> LmConfig {
    LmConfig::from_json_file(&tiny_dir().join("config.json")).unwrap()
}

/// The tiny reference LM's config (Kyutai's field names) implies exactly its file's tensors.
#[test]
fn tiny_lm_config_implies_its_checkpoint() {
    let header: Vec<(String, Vec<usize>)> = moshi_engine::weights::read_header(&tiny_dir().join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    assert_eq!(header, tiny_cfg().pytorch_layout_tensors());
}

/// A safetensors file whose header declares `tensors` (bf16) and whose data is a hole: a 15 GB
/// checkpoint costs a few kB of disk and nothing is read but the header.
fn sparse_checkpoint(name: &str, tensors: &[(String, Vec<usize>)]) -> std::path::PathBuf {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (n, shape) in tensors {
        let bytes = 2 * shape.iter().product::<usize>();
        header.insert(n.clone(), serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let json = serde_json::to_vec(&header).unwrap();
    let path = temp_path(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&json).unwrap();
    f.set_len(8 + json.len() as u64 + offset as u64).unwrap();
    path
}

fn header_of(path: &std::path::Path) -> Vec<(String, Vec<usize>)> {
    moshi_engine::weights::read_header(path).unwrap().into_iter().map(|(n, s, _)| (n, s)).collect()
}

#[test]
fn full_size_checkpoints_of_both_layouts_check_from_the_header() {
    let cfg = LmConfig::default();
    let released = common::names_file("moshi7b_checkpoint_names.txt");
    let path = sparse_checkpoint("moshiko-pytorch.safetensors", &released);
    assert!(std::fs::metadata(&path).unwrap().len() > 15_000_000_000, "the header declares the whole 7B");
    let (layout, unused) = check_checkpoint(&cfg, &header_of(&path)).unwrap();
    assert_eq!((layout, unused.len()), (Layout::PyTorch, 0));

    let candle = cfg.candle_layout_tensors();
    let depformer = candle.iter().filter(|(n, _)| n.starts_with("depformer.")).count();
    assert_eq!(depformer, 8 * (3 + 6 * 6), "8 slices × (linear_in, emb, linear_out + 6 layers × 6 tensors)");
    let path = sparse_checkpoint("moshiko-candle.safetensors", &candle);
    assert_eq!(check_checkpoint(&cfg, &header_of(&path)).unwrap().0, Layout::Candle);

    // One wrong shape, one missing tensor, a Mimi file: each named.
    let mut bad = released.clone();
    let i = bad.iter().position(|(n, _)| n == "depformer.layers.3.self_attn.in_proj_weight").unwrap();
    bad[i].1 = vec![3072, 1024];
    let e = check_checkpoint(&cfg, &header_of(&sparse_checkpoint("bad.safetensors", &bad))).unwrap_err().to_string();
    assert!(e.contains("depformer.layers.3.self_attn.in_proj_weight") && e.contains("[3072, 1024]") && e.contains("[24576, 1024]"), "{e}");
    let mut missing = released.clone();
    missing.retain(|(n, _)| n != "emb.11.weight");
    let e = check_checkpoint(&cfg, &missing).unwrap_err().to_string();
    assert!(e.contains("emb.11.weight") && e.contains("[2049, 4096]"), "{e}");
    let mimi = common::names_file("mimi_checkpoint_names.txt");
    let e = check_checkpoint(&cfg, &mimi).unwrap_err().to_string();
    assert!(e.contains("looks like a Mimi checkpoint"), "{e}");
}

fn tiny_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny_dir().join("model.safetensors"), &Device::Cpu).unwrap()
}

/// Kyutai's Candle layout of the same weights: the depformer split per step.
fn to_candle_layout(cfg: &LmConfig, t: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let dd = cfg.depformer_dim;
    let mut out: HashMap<String, Tensor> =
        t.iter().filter(|(n, _)| !n.starts_with("depformer") && !n.starts_with("linears.")).map(|(n, v)| (n.clone(), v.clone())).collect();
    for k in 0..cfg.dep_q {
        let p = format!("depformer.{k}");
        out.insert(format!("{p}.linear_in.weight"), t[&format!("depformer_in.{k}.weight")].clone());
        let emb = if k == 0 { "depformer_text_emb.weight".to_string() } else { format!("depformer_emb.{}.weight", k - 1) };
        out.insert(format!("{p}.emb.weight"), t[&emb].clone());
        out.insert(format!("{p}.linear_out.weight"), t[&format!("linears.{k}.weight")].clone());
        for l in 0..cfg.depformer_num_layers {
            let (src, dst) = (format!("depformer.layers.{l}"), format!("{p}.transformer.layers.{l}"));
            let inp = t[&format!("{src}.self_attn.in_proj_weight")].narrow(0, 3 * dd * k, 3 * dd).unwrap().contiguous().unwrap();
            let outp = t[&format!("{src}.self_attn.out_proj.weight")].narrow(0, dd * k, dd).unwrap().contiguous().unwrap();
            out.insert(format!("{dst}.self_attn.in_proj_weight"), inp);
            out.insert(format!("{dst}.self_attn.out_proj.weight"), outp);
            for n in ["norm1.alpha", "norm2.alpha"] {
                out.insert(format!("{dst}.{n}"), t[&format!("{src}.{n}")].clone());
            }
            for n in ["linear_in", "linear_out"] {
                out.insert(format!("{dst}.gating.{n}.weight"), t[&format!("{src}.gating.{k}.{n}.weight")].clone());
            }
        }
    }
    out
}

#[test]
fn candle_layout_gives_the_same_model() {
    let cfg = tiny_cfg();
    let candle = to_candle_layout(&cfg, &tiny_tensors());
    let path = temp_path("lm_tiny_candle.safetensors");
    safetensors::serialize_to_file(candle.iter().map(|(k, v)| (k.as_str(), v)), None, &path).unwrap();
    assert_eq!(header_of(&path), cfg.candle_layout_tensors());
    let a = LmModel::load(&[tiny_dir().join("model.safetensors")], &cfg, DType::F32, &Device::Cpu).unwrap();
    let b = LmModel::load(&[path], &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!((a.layout(), b.layout()), (Layout::PyTorch, Layout::Candle));
    let codes = common::Fixture::load("lm_tiny/io.safetensors").get("tf.codes").clone();
    let (ta, tb) = (a.forward_teacher(&codes).unwrap(), b.forward_teacher(&codes).unwrap());
    assert_eq!(common::max_abs_diff(&ta.depformer_logits, &tb.depformer_logits), 0.0);
    assert_eq!(common::max_abs_diff(&ta.temporal.text_logits, &tb.temporal.text_logits), 0.0);
}

fn tiny_variant(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> Result<LmModel, EngineError> {
    let mut t = tiny_tensors();
    edit(&mut t);
    let path = temp_path(&format!("variant-{}.safetensors", t.len()));
    safetensors::serialize_to_file(t.iter().map(|(k, v)| (k.as_str(), v)), None, &path).unwrap();
    LmModel::load(&[path], &tiny_cfg(), DType::F32, &Device::Cpu)
}

#[test]
fn wrong_tiny_checkpoints_fail_with_names() {
    let e = tiny_variant(|t| {
        t.insert("depformer.layers.1.gating.5.linear_out.weight".into(), Tensor::zeros((32, 87), DType::F32, &Device::Cpu).unwrap());
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("depformer.layers.1.gating.5.linear_out.weight") && e.contains("[32, 87]") && e.contains("[32, 88]"), "{e}");
    let e = tiny_variant(|t| {
        t.remove("text_linear.weight");
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing tensor `text_linear.weight`") && e.contains("[48, 64]"), "{e}");
}

/// A NaN weight is reported with the step and the first layer whose output is not finite.
#[test]
fn nan_is_located_by_step_and_layer() {
    let cfg = tiny_cfg();
    let mut t = tiny_tensors();
    let w = &t["transformer.layers.1.gating.linear_out.weight"];
    let nan = w.affine(0.0, f64::NAN).unwrap();
    t.insert("transformer.layers.1.gating.linear_out.weight".into(), nan);
    let vb = VarBuilder::from_tensors(t, DType::F32, &Device::Cpu);
    let model = LmModel::new(&cfg, &vb.into()).unwrap();
    let mut st = model.new_state(1, GenConfig::greedy(), 0, &RunOptions::default()).unwrap();
    match model.step(&mut st, &[1; 8]) {
        Err(EngineError::NonFinite(msg)) => {
            assert!(msg.contains("step 0") && msg.contains("temporal transformer layer 1"), "{msg}")
        }
        other => panic!("expected a NonFinite error, got {:?}", other.map(|o| o.text)),
    }

    let mut t = tiny_tensors();
    let w = t["linears.4.weight"].affine(0.0, f64::INFINITY).unwrap();
    t.insert("linears.4.weight".into(), w);
    let model = LmModel::new(&cfg, &VarBuilder::from_tensors(t, DType::F32, &Device::Cpu).into()).unwrap();
    let mut st = model.new_state(1, GenConfig::greedy(), 0, &RunOptions::default()).unwrap();
    let e = model.step(&mut st, &[1; 8]).map(|o| o.text).unwrap_err().to_string();
    assert!(e.contains("step 0") && e.contains("depformer step 4"), "{e}");
}

/// bf16 weights and activations (RMSNorm and softmax in f32) against the f32 reference run.
#[test]
fn bf16_runs_and_stays_close_to_f32() {
    let cfg = tiny_cfg();
    let model = LmModel::load(&[tiny_dir().join("model.safetensors")], &cfg, DType::BF16, &Device::Cpu).unwrap();
    let fx = common::Fixture::load("lm_tiny/io.safetensors");
    let tf = model.forward_teacher(fx.get("tf.codes")).unwrap();
    assert_eq!(tf.temporal.text_logits.dtype(), DType::BF16);
    let mut r = common::Report::default();
    let text = fx.get("tf.text_logits_raw").squeeze(1).unwrap();
    r.float_rel("bf16 text_logits", &tf.temporal.text_logits, &text, BF16_REL_TOL);
    r.float_rel("bf16 depformer_logits", &tf.depformer_logits, fx.get("tf.depformer_logits_raw"), BF16_REL_TOL);
    r.finish("tiny LM in bf16 vs the f32 reference");
    let mut st = model.new_state(2, GenConfig::default(), 5, &RunOptions::default()).unwrap();
    for _ in 0..3 {
        model.step(&mut st, &[3; 16]).unwrap();
    }
}

/// bf16 keeps 8 bits of mantissa (relative rounding 2⁻⁹ ≈ 2e-3 per value); weights, embeddings
/// and every activation between ops are rounded, over 2 + 2 layers.
const BF16_REL_TOL: f32 = 3e-2;

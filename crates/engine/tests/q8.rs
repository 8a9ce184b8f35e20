//! 8-bit weights (issue 17): Kyutai's q8 GGUF layout, written here at test time from the tiny
//! reference LM with Candle's GGUF writer (`gguf::quantize_checkpoint`), and `--weights q8`
//! (quantized at load) give the same model: bit-identical logits and identical tokens; both are
//! really 8-bit and stay close to the f32 model; a wrong GGUF fails naming the tensor and shapes.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use moshi_engine::exec::RunOptions;
use moshi_engine::lm::{GenConfig, LmModel};
use moshi_engine::weights::{LoadOptions, WeightFormat};

fn tiny_lm() -> PathBuf {
    common::golden_dir().join("moshi_tiny/model.safetensors")
}

fn tiny_cfg() -> moshi_engine::lm::LmConfig {
    moshi_engine::tiny::lm_config()
}

fn write_gguf(name: &str) -> PathBuf {
    let out = common::temp_path(name);
    let report = moshi_engine::gguf::quantize_checkpoint(&[tiny_lm()], &out).unwrap();
    assert!(report.q8_tensors > 0 && report.q8_tensors < report.tensors, "{report:?}");
    out
}

fn load(path: &Path, weights: WeightFormat) -> LmModel {
    let opts = LoadOptions::dtype(DType::F32).with_weights(weights);
    LmModel::load_with(&[path.to_path_buf()], &tiny_cfg(), &opts, &Device::Cpu).unwrap()
}

/// Deterministic teacher-forcing codes [1, 17, T] within the tiny model's vocabularies.
fn codes(t: usize) -> Tensor {
    let cfg = tiny_cfg();
    let mut v = Vec::new();
    for k in 0..cfg.num_streams() {
        let card = if k == 0 { cfg.text_card } else { cfg.card } as i64;
        v.extend((0..t as i64).map(|i| (i * 31 + k as i64 * 7 + 3) % card));
    }
    Tensor::from_vec(v, (1, cfg.num_streams(), t), &Device::Cpu).unwrap()
}

/// Greedy generation for `steps` frames with deterministic user codes: every token.
fn greedy_tokens(lm: &LmModel, steps: usize) -> Vec<i64> {
    let cfg = lm.config().clone();
    let mut st = lm.new_state(1, GenConfig::greedy(), 7, &RunOptions::default()).unwrap();
    let mut out = Vec::new();
    for n in 0..steps {
        let user: Vec<i64> = (0..cfg.user_streams()).map(|q| ((n * 13 + q * 5) % cfg.card) as i64).collect();
        if let Some(t) = lm.step(&mut st, &user).unwrap().tokens {
            out.extend(t);
        }
    }
    out
}

#[test]
fn the_gguf_is_kyutais_layout_q8_where_the_rule_says() {
    let path = write_gguf("layout.q8.gguf");
    let file = moshi_engine::gguf::GgufFile::open(&path).unwrap();
    let header = file.header();
    // Kyutai's Candle names, checked against the config as any checkpoint is.
    let (layout, unused) = moshi_engine::lm::check_checkpoint(&tiny_cfg(), &header).unwrap();
    assert_eq!(layout, moshi_engine::lm::Layout::Candle);
    assert!(unused.is_empty(), "{unused:?}");
    for (name, dtype) in file.dtypes() {
        let shape = file.shape_of(&name).unwrap();
        let want = if shape.len() == 2 && shape[1] % 32 == 0 { GgmlDType::Q8_0 } else { GgmlDType::F32 };
        assert_eq!(dtype, want, "{name} {shape:?}");
    }
    // Both kinds occur in the tiny model: the gated FFN's linear_out rows (176, 88 wide) stay f32.
    let dt = |n: &str| file.dtypes().into_iter().find(|(m, _)| m == n).unwrap().1;
    assert_eq!(dt("transformer.layers.0.gating.linear_out.weight"), GgmlDType::F32);
    assert_eq!(dt("transformer.layers.0.gating.linear_in.weight"), GgmlDType::Q8_0);
    assert_eq!(dt("text_emb.weight"), GgmlDType::Q8_0);
    assert_eq!(dt("depformer.3.transformer.layers.1.self_attn.in_proj_weight"), GgmlDType::Q8_0);
}

/// The acceptance check: the same weights from Kyutai's q8 layout and quantized at load give
/// bit-identical logits (the same Q8_0 blocks, the same kernels) and identical greedy tokens
/// over 40 frames. Both are 8-bit (not float paths agreeing trivially), smaller than f32, and
/// differ from the f32 model by what 8 bits cost.
#[test]
fn gguf_and_quantize_on_load_give_the_same_tokens() {
    let path = write_gguf("same.q8.gguf");
    let gguf = load(&path, WeightFormat::Model);
    let on_load = load(&tiny_lm(), WeightFormat::Q8);
    let float = load(&tiny_lm(), WeightFormat::Model);
    assert_eq!(gguf.weight_format(), WeightFormat::Q8);
    assert_eq!(on_load.weight_format(), WeightFormat::Q8);
    assert_eq!(float.weight_format(), WeightFormat::Model);
    // The tiny model keeps much in f32 (narrow FFN rows, dequantized embedding tables): 54%.
    assert!(gguf.weight_bytes() * 10 < float.weight_bytes() * 6, "{} vs {}", gguf.weight_bytes(), float.weight_bytes());

    let c = codes(24);
    let (a, b, f) = (gguf.forward_teacher(&c).unwrap(), on_load.forward_teacher(&c).unwrap(), float.forward_teacher(&c).unwrap());
    assert_eq!(common::max_abs_diff(&a.temporal.text_logits, &b.temporal.text_logits), 0.0);
    assert_eq!(common::max_abs_diff(&a.depformer_logits, &b.depformer_logits), 0.0);
    // 8 bits cost something, not much: relative to the logits' peak, between 1e-5 (some
    // quantization happened) and 5e-2 (the tiny model's random weights, 2 layers; see
    // docs/verify.md for the q8 tolerances of the real sizes).
    // The depformer's per-step projections are cut from stacked tensors (PyTorch layout) on one
    // side and read as slices on the other: a step quantized from the wrong rows shows here.
    for (what, q8, f32) in [("text", &a.temporal.text_logits, &f.temporal.text_logits), ("depformer", &a.depformer_logits, &f.depformer_logits)] {
        let peak = f32.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let rel = common::max_abs_diff(q8, f32) / peak;
        assert!(rel > 1e-5 && rel < 5e-2, "q8 vs f32 {what} logits: {rel} of the peak");
    }

    let (ta, tb) = (greedy_tokens(&gguf, 40), greedy_tokens(&on_load, 40));
    assert_eq!(ta.len(), 39 * 9);
    assert_eq!(ta, tb);
}

/// bf16 activations over 8-bit weights: runs, and the two sources still agree exactly.
#[test]
fn q8_in_bf16_agrees_between_sources() {
    let path = write_gguf("bf16.q8.gguf");
    let opts = LoadOptions::dtype(DType::BF16);
    let gguf = LmModel::load_with(&[path], &tiny_cfg(), &opts, &Device::Cpu).unwrap();
    let on_load = LmModel::load_with(&[tiny_lm()], &tiny_cfg(), &opts.with_weights(WeightFormat::Q8), &Device::Cpu).unwrap();
    assert_eq!(greedy_tokens(&gguf, 12), greedy_tokens(&on_load, 12));
}

/// A GGUF whose tensor has the wrong shape, or lacks one, fails naming the tensor (and both shapes).
#[test]
fn wrong_gguf_files_fail_with_names() {
    let tensors = candle_core::safetensors::load(tiny_lm(), &Device::Cpu).unwrap();
    let header: Vec<(String, Vec<usize>)> = tensors.iter().map(|(n, t)| (n.clone(), t.dims().to_vec())).collect();
    let plan = moshi_engine::gguf::candle_layout_plan(&header).unwrap();
    let mut q: HashMap<String, QTensor> = plan
        .iter()
        .map(|p| {
            let t = moshi_engine::gguf::cut(p, &tensors[&p.source]).unwrap();
            (p.name.clone(), QTensor::quantize(&moshi_engine::exec::quant::owned_f32(&t).unwrap(), GgmlDType::F32).unwrap())
        })
        .collect();
    let write = |q: &HashMap<String, QTensor>, name: &str| {
        let out = common::temp_path(name);
        let refs: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (n.as_str(), t)).collect();
        gguf_file::write(&mut std::fs::File::create(&out).unwrap(), &[], &refs).unwrap();
        out
    };
    let opts = LoadOptions::dtype(DType::F32);
    let bad = "depformer.2.transformer.layers.1.self_attn.out_proj.weight";
    q.insert(bad.into(), QTensor::quantize(&Tensor::zeros((32, 64), DType::F32, &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap());
    let e = LmModel::load_with(&[write(&q, "wrong.gguf")], &tiny_cfg(), &opts, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains(bad) && e.contains("[32, 32]") && e.contains("[32, 64]") && e.contains("wrong.gguf"), "{e}");
    q.remove(bad);
    let e = LmModel::load_with(&[write(&q, "missing.gguf")], &tiny_cfg(), &opts, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains(bad) && e.contains("missing.gguf"), "{e}");
    // Not a GGUF at all.
    let junk = common::temp_path("junk.gguf");
    std::fs::write(&junk, b"not a gguf file at all").unwrap();
    let e = LmModel::load_with(&[junk], &tiny_cfg(), &opts, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("junk.gguf") && e.contains("GGUF"), "{e}");
}

/// A folder holding Kyutai's 8-bit release names (model.q8.gguf, no config.json, no
/// model.safetensors) is read as such; `MoshiFiles` then loads the GGUF.
#[test]
fn a_folder_with_model_q8_gguf_resolves() {
    let dir = common::temp_path("q8-folder");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(write_gguf("folder.q8.gguf"), dir.join("model.q8.gguf")).unwrap();
    let m = moshi_engine::model_files::Manifest::of_dir(&dir).unwrap();
    assert_eq!(m.lm, "model.q8.gguf");
    assert_eq!(moshi_engine::weights::checkpoint_header(&dir.join("model.q8.gguf")).unwrap().len(), {
        let f = moshi_engine::gguf::GgufFile::open(&dir.join("model.q8.gguf")).unwrap();
        f.header().len()
    });
}

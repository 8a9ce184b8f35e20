//! Loading real-layout checkpoints: a full-size random Mimi with exactly the released file's
//! 318 names and shapes (golden/mimi_checkpoint_names.txt, copied from the released
//! tokenizer-e351c8d8-checkpoint125.safetensors header), and the errors for wrong files.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use moshi_engine::mimi::{Mimi, MimiConfig};
use moshi_engine::EngineError;

use common::temp_path;

fn released_names() -> Vec<(String, Vec<usize>)> {
    common::names_file("mimi_checkpoint_names.txt")
}

fn save(tensors: &HashMap<String, Tensor>, path: &std::path::Path) {
    safetensors::serialize_to_file(tensors.iter().map(|(k, v)| (k.as_str(), v)), None, path).unwrap();
}

#[test]
fn full_size_random_checkpoint_with_released_names_loads_and_runs() {
    let names = released_names();
    assert_eq!(names.len(), 318, "the released Mimi file has 318 tensors");
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    for (name, shape) in &names {
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let t = if name.ends_with("cluster_usage") || name.ends_with("_initialized") {
            Tensor::ones(shape.as_slice(), DType::F32, &dev).unwrap()
        } else if name.contains("norm") && name.ends_with("weight") || name.ends_with("scale") {
            Tensor::full(if name.ends_with("scale") { 0.01f32 } else { 1.0 }, shape.as_slice(), &dev).unwrap()
        } else {
            Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, shape.as_slice(), &dev).unwrap()
        };
        tensors.insert(name.clone(), t);
    }
    let path = temp_path("mimi_full.safetensors");
    save(&tensors, &path);
    drop(tensors);

    let header = moshi_engine::weights::read_header(&path).unwrap();
    let from_header: Vec<(String, Vec<usize>)> = header.into_iter().map(|(n, s, _)| (n, s)).collect();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(from_header, expected);

    let mimi = Mimi::load(&path, &MimiConfig::default(), DType::F32, &dev).expect("full-size Mimi loads");
    let pcm = (Tensor::randn(0f32, 0.1, (2, 1, 1920), &dev).unwrap()).contiguous().unwrap();
    let codes = mimi.encode(&pcm).unwrap();
    assert_eq!(codes.dims(), &[2, 8, 1]);
    let out = mimi.decode(&codes).unwrap();
    assert_eq!(out.dims(), &[2, 1, 1920]);
    let finite = out.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite());
    assert!(finite, "decoded pcm is finite");
    std::fs::remove_file(&path).ok();
}

/// The tiny model's tensors, to corrupt one way or another.
fn tiny_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(common::golden_dir().join("mimi_tiny/model.safetensors"), &Device::Cpu).unwrap()
}

fn load_tiny_variant(tensors: &HashMap<String, Tensor>, name: &str) -> Result<Mimi, EngineError> {
    let path = temp_path(name);
    save(tensors, &path);
    let cfg = MimiConfig::from_json_file(&common::golden_dir().join("mimi_tiny/config.json")).unwrap();
    let r = Mimi::load(&path, &cfg, DType::F32, &Device::Cpu);
    std::fs::remove_file(&path).ok();
    r
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let mut t = tiny_tensors();
    let name = "decoder.model.2.convtr.convtr.weight";
    let orig = t[name].dims().to_vec();
    t.insert(name.into(), Tensor::zeros((orig[0], orig[1], orig[2] + 1), DType::F32, &Device::Cpu).unwrap());
    let msg = load_tiny_variant(&t, "wrong_shape.safetensors").unwrap_err().to_string();
    assert!(msg.contains(name), "{msg}");
    assert!(msg.contains(&format!("{:?}", orig)), "expected shape in: {msg}");
    assert!(msg.contains(&format!("{:?}", [orig[0], orig[1], orig[2] + 1])), "actual shape in: {msg}");
}

#[test]
fn missing_tensor_is_named() {
    let mut t = tiny_tensors();
    let name = "quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum";
    t.remove(name);
    let msg = load_tiny_variant(&t, "missing.safetensors").unwrap_err().to_string();
    assert!(msg.contains(name) && msg.contains("missing"), "{msg}");
}

#[test]
fn a_file_that_is_not_mimi_says_so() {
    let mut t = HashMap::new();
    t.insert("transformer.layers.0.self_attn.in_proj_weight".to_string(), Tensor::zeros((12, 4), DType::F32, &Device::Cpu).unwrap());
    let msg = load_tiny_variant(&t, "lm.safetensors").unwrap_err().to_string();
    assert!(msg.contains("does not look like a Mimi checkpoint"), "{msg}");
}

#[test]
fn garbage_and_missing_files_are_clear_errors() {
    let path = temp_path("garbage.safetensors");
    std::fs::write(&path, b"this is not a safetensors file at all").unwrap();
    let msg = Mimi::load(&path, &MimiConfig::default(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("garbage.safetensors"), "{msg}");
    let msg = Mimi::load(&temp_path("nope.safetensors"), &MimiConfig::default(), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nope.safetensors") && msg.contains("cannot open"), "{msg}");
}

#[test]
fn bf16_load_runs_and_stays_close_to_f32() {
    let cfg = MimiConfig::from_json_file(&common::golden_dir().join("mimi_tiny/config.json")).unwrap();
    let path = common::golden_dir().join("mimi_tiny/model.safetensors");
    let f = Mimi::load(&path, &cfg, DType::F32, &Device::Cpu).unwrap();
    let b = Mimi::load(&path, &cfg, DType::BF16, &Device::Cpu).unwrap();
    let fx = common::Fixture::load("mimi_tiny/io.safetensors");
    let codes = fx.get("batch.codes");
    let (pf, pb) = (f.decode(codes).unwrap(), b.decode(codes).unwrap());
    assert_eq!(pb.dtype(), DType::BF16);
    // bf16 keeps 8 bits of mantissa: a few 1e-3 of the signal's 0.3 peak after ~30 layers.
    let err = common::max_abs_diff(&pf, &pb);
    assert!(err < 2e-2, "bf16 decode differs from f32 by {err}");
    // Encoding runs too (the quantizer computes in f32), giving codes of the right shape.
    let codes = b.encode(fx.get("input.pcm")).unwrap();
    assert_eq!(codes.dims(), fx.get("batch.codes").dims());
}

//! The 7B config implies exactly the released checkpoint's 355 names and shapes
//! (golden/moshi7b_checkpoint_names.txt, copied from kyutai/moshiko-pytorch-bf16's header).

mod common;

use moshi_engine::lm::LmConfig;

#[test]
fn moshi_7b_config_implies_the_released_pytorch_layout() {
    let text = std::fs::read_to_string(common::golden_dir().join("moshi7b_checkpoint_names.txt")).unwrap();
    let mut released: Vec<(String, Vec<usize>)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut p = l.split('\t');
            let name = p.next().unwrap().to_string();
            let shape = p.next().unwrap().trim_matches(|c| c == '[' || c == ']');
            (name, shape.split(',').map(|d| d.trim().parse().unwrap()).collect())
        })
        .collect();
    released.sort();
    let ours = LmConfig::default().pytorch_layout_tensors();
    assert_eq!(released.len(), 355);
    let missing: Vec<_> = released.iter().filter(|r| !ours.contains(r)).collect();
    let extra: Vec<_> = ours.iter().filter(|o| !released.contains(o)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "not implied by the config: {missing:?}\nnot in the release: {extra:?}");
}

/// The tiny reference LM's config (Kyutai's field names) implies exactly its file's tensors.
#[test]
fn tiny_lm_config_implies_its_checkpoint() {
    let dir = common::golden_dir().join("lm_tiny");
    let cfg = LmConfig::from_json_file(&dir.join("config.json")).unwrap();
    let header: Vec<(String, Vec<usize>)> = moshi_engine::weights::read_header(&dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    assert_eq!(header, cfg.pytorch_layout_tensors());
}

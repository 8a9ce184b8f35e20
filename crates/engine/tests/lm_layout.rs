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

//! With the `cuda` feature: compile src/exec/cuda/kernels.cu to PTX with nvcc (the toolkit Candle's
//! own kernels already need). The PTX targets CUDA_COMPUTE_CAP when set (e.g. 90), else
//! compute_80 (bf16 needs sm_80 or newer); the driver compiles it for the GPU at load.
fn main() {
    println!("cargo:rerun-if-changed=src/exec/cuda/kernels.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("moshi_kernels.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "80".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = std::process::Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("src/exec/cuda/kernels.cu")
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc} for the CUDA kernels (is the CUDA toolkit on PATH?): {e}"));
    assert!(status.success(), "{nvcc} failed on src/exec/cuda/kernels.cu");
}

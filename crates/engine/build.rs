//! With the `cuda` feature: compile src/exec/cuda/kernels.cu and q8.cu to PTX with nvcc (the toolkit Candle's
//! own kernels already need). The PTX targets CUDA_COMPUTE_CAP when set (e.g. 90), else
//! compute_80 (bf16 needs sm_80 or newer); the driver compiles it for the GPU at load.
fn main() {
    println!("cargo:rerun-if-changed=src/exec/cuda/kernels.cu");
    println!("cargo:rerun-if-changed=src/exec/cuda/q8.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "80".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for (src, ptx) in [("src/exec/cuda/kernels.cu", "moshi_kernels.ptx"), ("src/exec/cuda/q8.cu", "moshi_q8.ptx")] {
        let status = std::process::Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
            .arg(dir.join(ptx))
            .arg(src)
            .status()
            .unwrap_or_else(|e| panic!("running {nvcc} for the CUDA kernels (is the CUDA toolkit on PATH?): {e}"));
        assert!(status.success(), "{nvcc} failed on {src}");
    }
}

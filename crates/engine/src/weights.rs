//! Checkpoint access: safetensors files opened memory-mapped, every tensor fetched by its full
//! checkpoint name with its shape checked, so a wrong file fails with the tensor's name and both
//! shapes rather than deep inside a matmul.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{EngineError, Result};

/// Fetch `name` under `vb`'s prefix, checking that it exists and has exactly `shape`.
pub fn get_checked(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Tensor> {
    let full = if vb.prefix().is_empty() { name.to_string() } else { format!("{}.{name}", vb.prefix()) };
    if !vb.contains_tensor(name) {
        return Err(EngineError::MissingTensor { name: full, expected: shape.to_vec(), hint: String::new() });
    }
    let t = vb.get_unchecked(name)?;
    if t.dims() != shape {
        return Err(EngineError::WrongShape { name: full, expected: shape.to_vec(), got: t.dims().to_vec() });
    }
    Ok(t)
}

/// Open safetensors files as one memory-mapped `VarBuilder` in `dtype` on `device`.
pub fn open_safetensors(paths: &[PathBuf], dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    for p in paths {
        check_file(p)?;
    }
    // SAFETY: the files are mapped read-only; as with every mmap, modifying them while the
    // model is loaded is undefined behaviour, which we document rather than prevent.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(paths, dtype, device) }.map_err(|e| {
        EngineError::ModelFiles {
            path: paths.first().cloned().unwrap_or_default(),
            msg: format!("not a readable safetensors file: {e}"),
        }
    })?;
    Ok(vb)
}

fn check_file(p: &Path) -> Result<()> {
    let meta = std::fs::metadata(p).map_err(|e| EngineError::ModelFiles {
        path: p.to_path_buf(),
        msg: format!("cannot open: {e}"),
    })?;
    if !meta.is_file() {
        return Err(EngineError::ModelFiles { path: p.to_path_buf(), msg: "not a file".into() });
    }
    if meta.len() < 8 {
        return Err(EngineError::ModelFiles {
            path: p.to_path_buf(),
            msg: format!("{} bytes is too short for a safetensors file", meta.len()),
        });
    }
    Ok(())
}

/// Names and shapes in a safetensors file, read from its header only (no tensor data is
/// touched), sorted by name.
pub fn read_header(path: &Path) -> Result<Vec<(String, Vec<usize>, String)>> {
    use std::io::Read;
    check_file(path)?;
    let io = |source| EngineError::Io { path: path.to_path_buf(), source };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(EngineError::ModelFiles { path: path.to_path_buf(), msg: format!("header length {n} is implausible") });
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(io)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&buf)
        .map_err(|e| EngineError::ModelFiles { path: path.to_path_buf(), msg: format!("bad header: {e}") })?;
    let mut out = Vec::new();
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let shape = v["shape"].as_array().map(|a| a.iter().filter_map(|d| d.as_u64()).map(|d| d as usize).collect());
        let dtype = v["dtype"].as_str().unwrap_or("?").to_string();
        match shape {
            Some(shape) => out.push((name, shape, dtype)),
            None => {
                return Err(EngineError::ModelFiles { path: path.to_path_buf(), msg: format!("tensor {name} has no shape") })
            }
        }
    }
    out.sort();
    Ok(out)
}

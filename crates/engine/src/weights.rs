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

/// How a model's linear layers are stored once loaded (a load option: the weights are made
/// this way, and every conversation over them computes with them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// As the checkpoint has them, in the load dtype (a GGUF's 8-bit tensors stay 8-bit).
    #[default]
    Model,
    /// 8-bit: every tensor Kyutai's `model.q8.gguf` holds as Q8_0 (`exec::is_q8_shape`) is
    /// quantized to Q8_0 at load, from its f32 values; linear layers then run the 8-bit product
    /// and embedding tables are kept as their dequantized values. A GGUF file reads the same.
    Q8,
}

impl WeightFormat {
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Model => "model",
            WeightFormat::Q8 => "q8",
        }
    }
}

/// What a loader is asked for: the dtype the model computes in and how its weights are stored.
/// The device is given beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    pub dtype: DType,
    pub weights: WeightFormat,
}

impl LoadOptions {
    /// `dtype`, weights as the checkpoint has them.
    pub fn dtype(dtype: DType) -> Self {
        Self { dtype, weights: WeightFormat::Model }
    }

    pub fn with_weights(self, weights: WeightFormat) -> Self {
        Self { weights, ..self }
    }
}

/// Where the 8-bit tensors come from.
#[derive(Clone)]
enum Quant {
    /// Float weights only.
    None,
    /// Quantize at load (`WeightFormat::Q8`).
    OnLoad,
    /// A GGUF file's own tensors.
    Gguf(std::sync::Arc<crate::gguf::GgufFile>),
}

/// A checkpoint as the model constructors read it: a `VarBuilder` for float tensors (norms,
/// embeddings, float linear layers; `Deref` gives its methods) and, for 8-bit models, where
/// linear layers get their Q8_0 blocks. `pp` keeps both.
#[derive(Clone)]
pub struct Weights<'a> {
    vb: VarBuilder<'a>,
    quant: Quant,
}

impl<'a> From<VarBuilder<'a>> for Weights<'a> {
    fn from(vb: VarBuilder<'a>) -> Self {
        Self { vb, quant: Quant::None }
    }
}

impl<'a> std::ops::Deref for Weights<'a> {
    type Target = VarBuilder<'a>;
    fn deref(&self) -> &VarBuilder<'a> {
        &self.vb
    }
}

impl<'a> Weights<'a> {
    /// Float weights stored as `format` says.
    pub fn new(vb: VarBuilder<'a>, format: WeightFormat) -> Self {
        let quant = match format {
            WeightFormat::Model => Quant::None,
            WeightFormat::Q8 => Quant::OnLoad,
        };
        Self { vb, quant }
    }

    /// A GGUF file: float tensors through `vb` (its backend reads the same file), Q8_0 linear
    /// weights from `file` as they are.
    pub(crate) fn gguf(vb: VarBuilder<'a>, file: std::sync::Arc<crate::gguf::GgufFile>) -> Self {
        Self { vb, quant: Quant::Gguf(file) }
    }

    pub fn pp<S: ToString>(&self, s: S) -> Self {
        Self { vb: self.vb.pp(s), quant: self.quant.clone() }
    }

    /// The float view (for constructors that read float tensors only).
    pub fn vb(&self) -> VarBuilder<'a> {
        self.vb.clone()
    }

    /// The shape of `name` under this prefix (None: not there), from a GGUF's table without
    /// reading it; a safetensors tensor is fetched (mapped, not copied).
    pub fn dims_of(&self, name: &str) -> Result<Option<Vec<usize>>> {
        if !self.vb.contains_tensor(name) {
            return Ok(None);
        }
        match &self.quant {
            Quant::Gguf(file) => Ok(file.shape_of(&self.full_name(name))),
            _ => Ok(Some(self.vb.get_unchecked(name)?.dims().to_vec())),
        }
    }

    /// Whether linear layers come out 8-bit (where their shape allows).
    pub fn is_q8(&self) -> bool {
        !matches!(self.quant, Quant::None)
    }

    fn full_name(&self, name: &str) -> String {
        if self.vb.prefix().is_empty() { name.to_string() } else { format!("{}.{name}", self.vb.prefix()) }
    }

    /// The linear layer `name` [out, in] under this prefix, name and shape checked: 8-bit when
    /// the file holds it so (GGUF) or when quantizing at load and the shape allows
    /// (`exec::is_q8_shape`); else in the model's dtype.
    pub fn linear(&self, shape: [usize; 2], name: &str) -> Result<crate::nn::Linear> {
        match &self.quant {
            Quant::Gguf(file) => {
                let full = self.full_name(name);
                get_shape_checked(file.shape_of(&full), &shape, &full)?;
                match file.q8_linear(&full, self.vb.device())? {
                    Some(q) => Ok(crate::nn::Linear::q8(q)),
                    None => Ok(crate::nn::Linear::new(get_checked(self, &shape, name)?)?),
                }
            }
            Quant::OnLoad if crate::exec::is_q8_shape(&shape) => {
                let w = get_checked(&self.vb.clone().set_device(Device::Cpu).set_dtype(DType::F32), &shape, name)?;
                self.linear_of(&w)
            }
            _ => Ok(crate::nn::Linear::new(get_checked(self, &shape, name)?)?),
        }
    }

    /// A weight [out, in] as this source fetches weights meant for `linear_of` (a stacked
    /// tensor to be cut per step first): in f32 on the CPU when quantizing at load, so that
    /// the blocks come from the checkpoint's own values; else as `get_checked`.
    pub fn linear_source(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        match self.quant {
            Quant::OnLoad => get_checked(&self.vb.clone().set_device(Device::Cpu).set_dtype(DType::F32), shape, name),
            _ => get_checked(self, shape, name),
        }
    }

    /// A linear layer from a weight [out, in] already fetched (`linear_source`, e.g. one step's
    /// rows of a stacked tensor): 8-bit when quantizing at load and the shape allows.
    pub fn linear_of(&self, w: &Tensor) -> Result<crate::nn::Linear> {
        if !matches!(self.quant, Quant::None) && crate::exec::is_q8_shape(w.dims()) {
            let q = crate::exec::quantize_q8(w)?;
            return Ok(crate::nn::Linear::q8(crate::exec::QWeight::on(q, self.vb.device())?));
        }
        Ok(crate::nn::Linear::new(w.to_device(self.vb.device())?.to_dtype(self.vb.dtype())?)?)
    }

    /// An embedding table `name` [rows, dim], checked, in the model's dtype. An 8-bit model's
    /// tables hold Q8_0 values (a GGUF's dequantized by its backend; at load quantized and
    /// dequantized here) so that both sources give the same model.
    pub fn table(&self, shape: [usize; 2], name: &str) -> Result<Tensor> {
        match self.quant {
            Quant::OnLoad if crate::exec::is_q8_shape(&shape) => {
                let w = get_checked(&self.vb.clone().set_device(Device::Cpu).set_dtype(DType::F32), &shape, name)?;
                let q = crate::exec::quantize_q8(&w)?;
                Ok(q.dequantize(&Device::Cpu)?.to_dtype(self.vb.dtype())?.to_device(self.vb.device())?)
            }
            _ => get_checked(self, &shape, name),
        }
    }
}

/// `got` (a tensor's shape, None: not in the file) against `expected`, errors naming `full`.
fn get_shape_checked(got: Option<Vec<usize>>, expected: &[usize], full: &str) -> Result<()> {
    match got {
        None => Err(EngineError::MissingTensor { name: full.to_string(), expected: expected.to_vec(), hint: String::new() }),
        Some(got) if got != expected => Err(EngineError::WrongShape { name: full.to_string(), expected: expected.to_vec(), got }),
        Some(_) => Ok(()),
    }
}

/// Names and shapes of an LM checkpoint, from its header only: a safetensors file's, or a GGUF
/// file's tensor table (`.gguf`).
pub fn checkpoint_header(path: &Path) -> Result<Vec<(String, Vec<usize>)>> {
    if crate::gguf::is_gguf_path(path) {
        return Ok(crate::gguf::GgufFile::open(path)?.header());
    }
    Ok(read_header(path)?.into_iter().map(|(n, s, _)| (n, s)).collect())
}

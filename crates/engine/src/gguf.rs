//! GGUF checkpoints in Kyutai's layout (`kyutai/moshiko-candle-q8`'s `model.q8.gguf`): the
//! tensor names of Kyutai's Candle safetensors layout, every tensor that `exec::is_q8_shape`
//! names in Q8_0 and the rest in f32, as Candle's `tensor-tools quantize` writes them (and as
//! Kyutai's `moshi-core` reads them: linear layers through the quantized product, embedding
//! tables and norms dequantized). Read and written with Candle's maintained `gguf_file`.
//!
//! `quantize_checkpoint` writes such a file from a safetensors LM checkpoint of either of
//! Kyutai's layouts (the PyTorch layout's depformer is cut into the Candle layout's slices,
//! `candle_layout_plan`).

use std::collections::HashMap;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::{EngineError, Result};
use crate::exec::QWeight;

/// Whether `path` names a GGUF file (by its extension, as Kyutai's loader decides).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// An open GGUF file: its tensor table, and the file to read tensors from on demand.
pub struct GgufFile {
    path: PathBuf,
    content: gguf_file::Content,
    reader: Mutex<BufReader<std::fs::File>>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).field("tensors", &self.content.tensor_infos.len()).finish()
    }
}

impl GgufFile {
    /// Open and read the tensor table (no tensor data is read).
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |msg: String| EngineError::ModelFiles { path: path.to_path_buf(), msg };
        let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| bad(format!("not a readable GGUF file: {e}")))?;
        Ok(Self { path: path.to_path_buf(), content, reader: Mutex::new(reader) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's name and shape, sorted by name.
    pub fn header(&self) -> Vec<(String, Vec<usize>)> {
        let mut h: Vec<_> = self.content.tensor_infos.iter().map(|(n, i)| (n.clone(), i.shape.dims().to_vec())).collect();
        h.sort();
        h
    }

    /// The storage type of each tensor (for reports: how many are Q8_0).
    pub fn dtypes(&self) -> Vec<(String, GgmlDType)> {
        let mut v: Vec<_> = self.content.tensor_infos.iter().map(|(n, i)| (n.clone(), i.ggml_dtype)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims().to_vec())
    }

    fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Tensor `name` as stored, onto `device`.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let mut reader = self.reader.lock().map_err(|_| EngineError::ModelFiles { path: self.path.clone(), msg: "reader poisoned".into() })?;
        reader.rewind().map_err(|e| EngineError::Io { path: self.path.clone(), source: e })?;
        self.content.tensor(&mut *reader, name, device).map_err(|e| EngineError::ModelFiles {
            path: self.path.clone(),
            msg: format!("tensor {name}: {e}"),
        })
    }

    /// Linear weight `name` as an 8-bit weight when the file holds it in Q8_0; None when it is a
    /// float tensor (read it through the float view). Other quantized formats are refused by name.
    pub fn q8_linear(&self, name: &str, device: &Device) -> Result<Option<QWeight>> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| EngineError::MissingTensor {
            name: name.to_string(),
            expected: vec![],
            hint: format!(" in {}", self.path.display()),
        })?;
        match info.ggml_dtype {
            // Read on the host: the seam re-packs the blocks for some devices (exec::quant).
            GgmlDType::Q8_0 => Ok(Some(QWeight::on(self.qtensor(name, &Device::Cpu)?, device)?)),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => Ok(None),
            other => Err(EngineError::ModelFiles {
                path: self.path.clone(),
                msg: format!("tensor {name} is {other:?}; moshi-rs reads 8-bit (Q8_0) and float GGUF tensors"),
            }),
        }
    }

    /// The float view of the file, in `dtype` on `device`: Q8_0 tensors dequantized, f32 ones
    /// as they are (norms, narrow layers, embedding tables).
    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(FloatView(self.clone())), dtype, device.clone())
    }
}

/// A GGUF file read as float tensors (`candle_nn`'s backend trait).
struct FloatView(Arc<GgufFile>);

impl SimpleBackend for FloatView {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("shape mismatch for {name}, got {:?}, expected {:?}", t.dims(), s.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let q = self.0.qtensor(name, &Device::Cpu).map_err(candle_core::Error::wrap)?;
        q.dequantize(&Device::Cpu)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// Where one tensor of Kyutai's Candle layout comes from in a checkpoint: a source tensor, whole
/// or rows `start .. start + len` of it (one step of a stacked depformer projection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutPiece {
    pub name: String,
    pub source: String,
    pub rows: Option<(usize, usize)>,
}

/// The Candle layout of a checkpoint with these tensor names and shapes: the PyTorch layout's
/// depformer (`depformer_in.{k}`, `depformer_text_emb`, `depformer_emb.{k-1}`, `linears.{k}`,
/// stacked `depformer.layers.{l}.*`) cut into slices `depformer.{k}.*`, every other tensor
/// under its own name; a Candle-layout checkpoint as it is.
pub fn candle_layout_plan(header: &[(String, Vec<usize>)]) -> Result<Vec<LayoutPiece>> {
    let shape = |n: &str| header.iter().find(|(h, _)| h == n).map(|(_, s)| s.clone());
    let whole = |n: &str, src: &str| LayoutPiece { name: n.to_string(), source: src.to_string(), rows: None };
    if shape("depformer.0.linear_in.weight").is_some() {
        return Ok(header.iter().map(|(n, _)| whole(n, n)).collect());
    }
    let steps = (0..).take_while(|k| shape(&format!("linears.{k}.weight")).is_some()).count();
    if steps == 0 || shape("depformer_in.0.weight").is_none() {
        return Err(EngineError::InvalidInput(
            "not an LM checkpoint of Kyutai's PyTorch or Candle layout (no depformer_in.0 and linears.0, nor depformer.0.linear_in)".into(),
        ));
    }
    let need = |n: String| -> Result<String> {
        match shape(&n) {
            Some(_) => Ok(n),
            None => Err(EngineError::MissingTensor { name: n, expected: vec![], hint: " (PyTorch layout)".into() }),
        }
    };
    let mut used = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut push = |p: LayoutPiece, used: &mut std::collections::HashSet<String>| {
        used.insert(p.source.clone());
        out.push(p);
    };
    let layers = (0..).take_while(|l| shape(&format!("depformer.layers.{l}.self_attn.in_proj_weight")).is_some()).count();
    for k in 0..steps {
        let p = format!("depformer.{k}");
        // Without multi_linear there is one input projection for every step.
        let input = if shape(&format!("depformer_in.{k}.weight")).is_some() { format!("depformer_in.{k}.weight") } else { "depformer_in.0.weight".into() };
        push(whole(&format!("{p}.linear_in.weight"), &input), &mut used);
        let emb = if k == 0 { "depformer_text_emb.weight".to_string() } else { format!("depformer_emb.{}.weight", k - 1) };
        push(whole(&format!("{p}.emb.weight"), &need(emb)?), &mut used);
        push(whole(&format!("{p}.linear_out.weight"), &need(format!("linears.{k}.weight"))?), &mut used);
        for l in 0..layers {
            let (src, dst) = (format!("depformer.layers.{l}"), format!("{p}.transformer.layers.{l}"));
            for proj in ["self_attn.in_proj_weight", "self_attn.out_proj.weight"] {
                let n = need(format!("{src}.{proj}"))?;
                let rows = shape(&n).expect("checked")[0] / steps;
                push(LayoutPiece { name: format!("{dst}.{proj}"), source: n, rows: Some((k * rows, rows)) }, &mut used);
            }
            for norm in ["norm1.alpha", "norm2.alpha"] {
                push(whole(&format!("{dst}.{norm}"), &need(format!("{src}.{norm}"))?), &mut used);
            }
            for w in ["linear_in", "linear_out"] {
                push(whole(&format!("{dst}.gating.{w}.weight"), &need(format!("{src}.gating.{k}.{w}.weight"))?), &mut used);
            }
        }
    }
    let depformer_only = |n: &str| n.starts_with("depformer") || n.starts_with("linears.");
    for (n, _) in header {
        if !used.contains(n) && !depformer_only(n) {
            push(whole(n, n), &mut used);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One piece of `candle_layout_plan` cut from its source tensor.
pub fn cut(piece: &LayoutPiece, source: &Tensor) -> Result<Tensor> {
    Ok(match piece.rows {
        Some((start, len)) => source.narrow(0, start, len)?.contiguous()?,
        None => source.clone(),
    })
}

/// What `quantize_checkpoint` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizeReport {
    pub tensors: usize,
    pub q8_tensors: usize,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

/// Write `out` (GGUF, Kyutai's q8 layout) from the safetensors LM checkpoint `inputs`: the
/// tensors in the Candle layout's names, those `exec::is_q8_shape` names in Q8_0 (from their
/// f32 values: exactly what `--weights q8` makes at load), the others in f32. Holds the
/// quantized model in memory while writing (≈ 8.2 GB for the 7B).
pub fn quantize_checkpoint(inputs: &[PathBuf], out: &Path) -> Result<QuantizeReport> {
    let mut header = Vec::new();
    let mut owner = HashMap::new();
    let mut input_bytes = 0;
    let mut vbs = Vec::new();
    for (i, p) in inputs.iter().enumerate() {
        input_bytes += std::fs::metadata(p).map_err(|e| EngineError::Io { path: p.clone(), source: e })?.len();
        for (name, shape, _) in crate::weights::read_header(p)? {
            owner.insert(name.clone(), i);
            header.push((name, shape));
        }
        vbs.push(crate::weights::open_safetensors(std::slice::from_ref(p), DType::F32, &Device::Cpu)?);
    }
    let plan = candle_layout_plan(&header)?;
    // One source tensor in f32 at a time (a stacked projection is read once for its steps).
    let mut cache: Option<(String, Tensor)> = None;
    let mut q = Vec::with_capacity(plan.len());
    for piece in &plan {
        let i = owner[&piece.source];
        if cache.as_ref().map(|(n, _)| n != &piece.source).unwrap_or(true) {
            let t = vbs[i].get_unchecked(&piece.source).map_err(|e| EngineError::ModelFiles { path: inputs[i].clone(), msg: format!("tensor {}: {e}", piece.source) })?;
            cache = Some((piece.source.clone(), t));
        }
        let t = cut(piece, &cache.as_ref().expect("just filled").1)?;
        let qt = if crate::exec::is_q8_shape(t.dims()) {
            crate::exec::quantize_q8(&t)?
        } else {
            QTensor::quantize(&crate::exec::quant::owned_f32(&t)?, GgmlDType::F32)?
        };
        q.push((piece.name.as_str(), qt));
    }
    drop(cache);
    let q8_tensors = q.iter().filter(|(_, t)| t.dtype() == GgmlDType::Q8_0).count();
    let refs: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (*n, t)).collect();
    let io = |e| EngineError::Io { path: out.to_path_buf(), source: e };
    let mut f = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
    gguf_file::write(&mut f, &[], &refs).map_err(|e| EngineError::ModelFiles { path: out.to_path_buf(), msg: format!("writing GGUF: {e}") })?;
    use std::io::Write;
    f.flush().map_err(io)?;
    drop(f);
    let output_bytes = std::fs::metadata(out).map_err(io)?.len();
    Ok(QuantizeReport { tensors: refs.len(), q8_tensors, input_bytes, output_bytes })
}

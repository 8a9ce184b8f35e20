//! `verify trace`: a reference run recorded by `tools/golden/record_trace.py` (the user's model,
//! the user's audio, the reference's own resampled input) recomputed here on the device under test,
//! stage by stage. Mimi encodes the trace's input (codes against the reference's) and decodes the
//! reference's reply codes; the LM is teacher-forced on the tokens the reference's temporal
//! transformer read at each step (so one flipped token cannot derail what follows): every temporal
//! layer and `out_norm` for the recorded first steps, the text logits the trace kept, and, for
//! greedy traces, how often our argmax is the reference's choice (text, and depformer audio fed
//! the reference's tokens). Where a temporal layer leaves its tolerance, that layer is re-run op
//! by op from the reference's own input to it, on the device and on the CPU in f32, and the first
//! op group whose device output leaves the CPU's is named; if none does, the CPU differs from the
//! reference too and the model code is to blame, not the backend.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};

use super::model::Tolerances;
use super::Check;
use crate::conversation::Moshi;
use crate::error::{EngineError, Result};
use crate::nn::transformer::LAYER_OPS;

/// A deliberate fault on the device side (tests, and to see a report): the output of op group
/// `op` (one of [`LAYER_OPS`]) of temporal layer `layer` scaled by `1 + scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpFault {
    pub layer: usize,
    pub op: String,
    pub scale: f64,
}

impl std::str::FromStr for OpFault {
    type Err = EngineError;
    /// `LAYER:OP` or `LAYER:OP:SCALE` (default scale 1e-2).
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: String| EngineError::InvalidInput(format!("fault {s:?}: {why} (LAYER:OP[:SCALE], OP one of {})", LAYER_OPS.join(", ")));
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(bad("expected two or three fields".into()));
        }
        let layer = parts[0].parse().map_err(|_| bad(format!("layer {:?} is not a number", parts[0])))?;
        if !LAYER_OPS.contains(&parts[1]) {
            return Err(bad(format!("unknown op {:?}", parts[1])));
        }
        let scale = match parts.get(2) {
            Some(v) => v.parse().map_err(|_| bad(format!("scale {v:?} is not a number")))?,
            None => 1e-2,
        };
        Ok(Self { layer, op: parts[1].into(), scale })
    }
}

/// What the run found, besides the table.
#[derive(Debug, Clone, Default)]
pub struct Diagnosis {
    /// The first temporal layer out of tolerance, if any.
    pub layer: Option<usize>,
    /// Within it, the first op group whose device output leaves the CPU's (the backend's fault).
    pub op: Option<String>,
    /// A sentence for the user.
    pub verdict: String,
}

/// A trace file's tensors and settings.
pub struct Trace {
    t: HashMap<String, Tensor>,
    pub meta: serde_json::Value,
}

impl Trace {
    pub fn load(path: &Path) -> Result<Self> {
        let err = |msg: String| EngineError::Config { path: path.display().to_string(), msg };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let (_, st) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let meta = st.metadata().as_ref().and_then(|m| m.get("trace")).ok_or_else(|| err("no `trace` metadata: not made by tools/golden/record_trace.py".into()))?;
        let meta = serde_json::from_str(meta).map_err(|e| err(format!("trace metadata: {e}")))?;
        let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| err(e.to_string()))?;
        let trace = Self { t, meta };
        for name in ["input_pcm", "user_codes", "lm_input", "text_tokens", "audio_tokens", "text_logits_top", "text_logits_idx", "reply_codes", "reply_pcm", "out_norm"] {
            if !trace.t.contains_key(name) {
                return Err(err(format!("the trace has no tensor `{name}`")));
            }
        }
        Ok(trace)
    }

    fn get(&self, name: &str) -> &Tensor {
        &self.t[name]
    }

    fn greedy(&self) -> bool {
        self.meta.get("greedy").and_then(|g| g.as_bool()).unwrap_or(false)
    }

    fn recorded_dtype(&self) -> DType {
        if self.meta.get("dtype").and_then(|d| d.as_str()) == Some("bf16") { DType::BF16 } else { DType::F32 }
    }
}

fn agreement(group: &str, name: &str, ours: &Tensor, reference: &Tensor, min: f64) -> Result<Check> {
    let mut c = Check::codes(group, name, ours, reference)?;
    c.tol = 1.0 - min;
    c.ok = 1.0 - c.max_rel >= min - 1e-12;
    Ok(c)
}

fn cpu(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
}

/// The tolerances of a comparison with a reference run in `recorded` on a device under test in
/// `dut`: the looser of the two dtypes' (`Tolerances::for_dtype`).
pub fn tolerances(recorded: DType, dut: DType) -> Tolerances {
    let (a, b) = (Tolerances::for_dtype(recorded), Tolerances::for_dtype(dut));
    Tolerances { rel: a.rel.max(b.rel), agreement: a.agreement.min(b.agreement) }
}

/// Run the trace on `dut`; `cpu_reference` gives the same model on the CPU in f32 (made only
/// when a layer fails, to name the op).
pub fn run(
    trace: &Trace,
    dut: &Moshi,
    cpu_reference: &mut dyn FnMut() -> Result<Moshi>,
    fault: Option<&OpFault>,
) -> Result<(Vec<Check>, Diagnosis)> {
    let tol = tolerances(trace.recorded_dtype(), dut.lm.temporal().dtype());
    let mut out = Vec::new();

    // Mimi encode: the reference's input plus its silence, as many frames as it encoded.
    let codes_ref = trace.get("user_codes"); // [K, F]
    let (k, frames) = codes_ref.dims2()?;
    let n = dut.frame_size();
    let input = trace.get("input_pcm");
    let len = input.dim(0)?;
    if len > frames * n {
        return Err(EngineError::InvalidInput(format!("the trace's input has {len} samples for {frames} frames of {n}")));
    }
    let pcm = input.pad_with_zeros(0, 0, frames * n - len)?.reshape((1, 1, frames * n))?.to_device(dut.mimi.device())?;
    let enc = dut.mimi.encode_stages(&pcm)?;
    let g = "mimi encode";
    let mf = trace.meta.get("mimi_frames").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    for (name, ours) in [("seanet_latent", &enc.seanet_latent), ("transformer_out", &enc.transformer_out), ("downsampled", &enc.downsampled)] {
        if let Some(r) = trace.t.get(&format!("mimi.{name}")) {
            let steps = r.dim(1)?;
            out.push(Check::float_rel(g, &format!("{name} (first {mf} frames)"), &cpu(&ours.i(0)?.narrow(1, 0, steps)?)?, r, tol.rel)?);
        }
    }
    let ours_codes = cpu(&enc.codes.i(0)?.narrow(0, 0, k)?)?.to_dtype(DType::I64)?;
    out.push(agreement(g, "codes (agreement)", &ours_codes, codes_ref, tol.agreement)?);

    // Mimi decode of the reference's reply codes.
    let reply = trace.get("reply_codes");
    if reply.dim(1)? > 0 {
        let dec = dut.mimi.decode_stages(&reply.unsqueeze(0)?.to_device(dut.mimi.device())?)?;
        let g = "mimi decode";
        for (name, ours) in [("quantized", &dec.quantized), ("upsampled", &dec.upsampled), ("decoder_transformer_out", &dec.decoder_transformer_out)] {
            if let Some(r) = trace.t.get(&format!("mimi.{name}")) {
                let steps = r.dim(1)?;
                out.push(Check::float_rel(g, &format!("{name} (first {mf} frames)"), &cpu(&ours.i(0)?.narrow(1, 0, steps)?)?, r, tol.rel)?);
            }
        }
        out.push(Check::float_rel(g, "reply pcm", &cpu(&dec.pcm.flatten_all()?)?, trace.get("reply_pcm"), tol.rel)?);
    }

    // The LM, teacher-forced on what the reference's temporal transformer read.
    let lm = &dut.lm;
    let device = lm.temporal().device();
    let lm_input = trace.get("lm_input").unsqueeze(0)?; // [1, K, S]
    let mut layers: Vec<Tensor> = Vec::new();
    let mut tap = |layer: usize, op: &'static str, t: Tensor| -> Result<Tensor> {
        let t = match fault {
            Some(f) if f.layer == layer && f.op == op => (t * (1.0 + f.scale))?,
            _ => t,
        };
        if op == "residual_2" {
            layers.push(t.clone());
        }
        Ok(t)
    };
    let tf = lm.temporal().forward_tapped(&lm_input.to_device(&device)?, &mut tap)?;
    let g = "lm temporal";
    let steps = trace.get("out_norm").dim(0)?;
    let mut first_layer = None;
    for (i, ours) in layers.iter().enumerate() {
        let Some(r) = trace.t.get(&format!("layer.{i}")) else { continue };
        let c = Check::float_rel(g, &format!("layer {i} (first {steps} steps)"), &cpu(&ours.i(0)?.narrow(0, 0, steps)?)?, r, tol.rel)?;
        if !c.ok && first_layer.is_none() {
            first_layer = Some(i);
        }
        out.push(c);
    }
    out.push(Check::float_rel(g, "out_norm", &cpu(&tf.out.i(0)?.narrow(0, 0, steps)?)?, trace.get("out_norm"), tol.rel)?);
    let idx = trace.get("text_logits_idx");
    let ours_logits = cpu(&tf.text_logits.i(0)?)?.gather(&idx.to_dtype(DType::U32)?, 1)?;
    out.push(Check::float_rel(g, "text_logits (the trace's top-k)", &ours_logits, trace.get("text_logits_top"), tol.rel)?);
    let greedy = trace.greedy();
    if greedy {
        let ours = cpu(&tf.text_logits.i(0)?)?.argmax(1)?.to_dtype(DType::I64)?;
        out.push(agreement(g, "greedy text (agreement)", &ours, trace.get("text_tokens"), tol.agreement)?);
        // The depformer, fed the reference's tokens: the text token, then each audio codebook.
        let audio = trace.get("audio_tokens"); // [dep_q, S]
        let dq = audio.dim(0)?;
        let dtokens = Tensor::cat(&[&trace.get("text_tokens").unsqueeze(0)?, &audio.narrow(0, 0, dq - 1)?], 0)?.unsqueeze(0)?;
        let logits = lm.depformer().forward_all(&tf.out, &dtokens.to_device(&device)?)?; // [1, dq, S, card]
        let ours = cpu(&logits.i(0)?)?.argmax(2)?.to_dtype(DType::I64)?;
        out.push(agreement("lm depformer", "greedy audio (agreement)", &ours, audio, tol.agreement)?);
    }

    let mut diag = Diagnosis::default();
    match first_layer {
        None => {
            diag.verdict = match super::first_failure(&out) {
                None => "every stage within its tolerance".into(),
                Some(c) => format!("first out of tolerance: {} / {}", c.group, c.name),
            }
        }
        Some(layer) => {
            diag.layer = Some(layer);
            let (op, ops) = op_by_op(trace, dut, cpu_reference, layer, steps, fault, tol)?;
            out.extend(ops);
            diag.verdict = match &op {
                Some(op) => format!(
                    "temporal layer {layer} leaves its tolerance; re-run op by op from the reference's input, the device's `{op}` \
                     leaves the CPU's: a backend fault in that op"
                ),
                None => format!(
                    "temporal layer {layer} leaves its tolerance, but every op of it on the device equals the CPU's: the CPU \
                     differs from the reference too (the model code or the weights, not the backend)"
                ),
            };
            diag.op = op;
        }
    }
    Ok((out, diag))
}

/// Re-run temporal layer `layer` on the first `steps` steps from the reference's input to it (the
/// trace's previous layer output; for layer 0 our CPU embedding of the trace's tokens), on the
/// device and on the CPU in f32; one row per op group, device against CPU.
fn op_by_op(
    trace: &Trace,
    dut: &Moshi,
    cpu_reference: &mut dyn FnMut() -> Result<Moshi>,
    layer: usize,
    steps: usize,
    fault: Option<&OpFault>,
    tol: Tolerances,
) -> Result<(Option<String>, Vec<Check>)> {
    let reference = cpu_reference()?;
    let x = match layer {
        0 => {
            let tokens = trace.get("lm_input").narrow(1, 0, steps)?.unsqueeze(0)?;
            reference.lm.temporal().embed(&tokens)?
        }
        l => trace.get(&format!("layer.{}", l - 1)).unsqueeze(0)?,
    };
    let record = |fault: Option<&OpFault>, moshi: &Moshi| -> Result<Vec<(&'static str, Tensor)>> {
        let mut ops = Vec::new();
        let t = moshi.lm.temporal();
        let input = x.to_dtype(t.dtype())?.to_device(&t.device())?;
        t.transformer().forward_layer_tapped(layer, &input, &mut |op, y| {
            let y = match fault {
                Some(f) if f.layer == layer && f.op == op => (y * (1.0 + f.scale))?,
                _ => y,
            };
            ops.push((op, cpu(&y)?));
            Ok(y)
        })?;
        Ok(ops)
    };
    let on_cpu = record(None, &reference)?;
    let on_dut = record(fault, dut)?;
    let g = format!("layer {layer} op by op (device vs cpu f32)");
    let mut first = None;
    let mut rows = Vec::new();
    for ((op, a), (_, b)) in on_dut.iter().zip(&on_cpu) {
        let c = Check::float_rel(&g, op, a, b, tol.rel)?;
        if !c.ok && first.is_none() {
            first = Some(op.to_string());
        }
        rows.push(c);
    }
    Ok((first, rows))
}

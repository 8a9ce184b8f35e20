//! `verify model`: the same input through a model on the device under test and on the CPU in f32,
//! stage by stage and layer by layer, so that the first stage or layer whose error leaves its
//! tolerance is named. Mimi: encode stages from a deterministic test signal, decode stages from
//! the CPU's codes (so a flipped code cannot hide a decoder error); on CUDA, Mimi's graphs
//! (`verify::codec_graphs`). LM: teacher-forced on the CPU's
//! codes (model and user streams) and deterministic text tokens: every temporal layer, `out_norm`,
//! text logits, depformer logits, and how often the greedy choices agree.

use candle_core::{DType, Device, Tensor};

use super::Check;
use crate::conversation::Moshi;
use crate::error::Result;
use crate::exec::KvCacheKind;
use crate::nn::transformer::TransformerState;

/// A deliberate fault on the device side: temporal layer `layer`'s output scaled by `1 + scale`.
#[derive(Debug, Clone, Copy)]
pub struct LayerFault {
    pub layer: usize,
    pub scale: f64,
}

/// Tolerances of a device run against the CPU in f32, relative to each tensor's peak.
#[derive(Debug, Clone, Copy)]
pub struct Tolerances {
    pub rel: f64,
    /// Minimum fraction of greedy choices (codes, argmax tokens) that must agree.
    pub agreement: f64,
}

impl Tolerances {
    /// 8-bit weights (Q8_0: a scale per 32 weights, stored as f16, each weight within half a
    /// step, 1/254 of its block's peak, plus 1/2048 for the f16 scale; the CPU and CUDA kernels quantize the activations the same way) against
    /// f32: each product's relative error is ≈ 1/254 · √2 / √(terms' spread), about 0.3–0.5% of
    /// a layer's output, compounded over the layers and amplified where the residual stream
    /// cancels. 8e-2 of each tensor's peak (bf16's 5e-2 plus the 8-bit steps being 2× bf16's
    /// rounding at the output scale) still catches a wrong block scale, a transposed or a
    /// wrong step's weight (off by ≥ 0.3 of the peak). Greedy agreement: 0.85 (bf16's 0.9 less
    /// the extra flips of near-ties; the target, within 3 points of bf16's, is reported
    /// beside it rather than enforced, as it depends on the model's weights).
    pub fn q8() -> Self {
        Self { rel: 8e-2, agreement: 0.85 }
    }

    /// f32 on another backend: summation order and fused kernels differ (≈ 1e-6 relative per
    /// layer); 1e-4 leaves room for deep models while a wrong op is off by ≥ 1e-3.
    /// bf16: 8-bit mantissa, 2⁻⁹ relative rounding per value, compounded over the layers.
    pub fn for_dtype(dtype: DType) -> Self {
        match dtype {
            DType::F32 => Self { rel: 1e-4, agreement: 0.99 },
            _ => Self { rel: 5e-2, agreement: 0.9 },
        }
    }
}

/// A deterministic test signal: three partials with a slow glide and a little noise, peak ≈ 0.4.
pub fn test_signal(samples: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..samples)
        .map(|i| {
            let t = i as f64 / 24_000.0;
            let f = 140.0 + 60.0 * (t * 1.3).sin();
            let s = 0.2 * (2.0 * std::f64::consts::PI * f * t).sin() + 0.1 * (4.0 * std::f64::consts::PI * f * t).sin()
                + 0.05 * (6.0 * std::f64::consts::PI * f * t).sin();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (s + 0.01 * ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5)) as f32
        })
        .collect()
}

pub(super) fn agreement(group: &str, name: &str, ours: &Tensor, reference: &Tensor, min: f64) -> Result<Check> {
    let mut c = Check::codes(group, name, ours, reference)?;
    c.tol = 1.0 - min;
    // At least `min` of the tokens agree, exactly `min` included: compared as agreement, with
    // room for the rounding of 1 − min (1 − 0.9 is 0.09999999999999998, which failed 3 of 30).
    c.ok = 1.0 - c.max_rel >= min - 1e-12;
    Ok(c)
}

fn argmax(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.argmax(candle_core::D::Minus1)?)
}

/// Compare `dut` (the device under test) with `reference` (the same weights on the CPU, f32)
/// over `frames` frames; then stream the LM on `dut` once per KV cache kind in `kv`.
pub fn run(
    reference: &Moshi,
    dut: &Moshi,
    frames: usize,
    tol: Tolerances,
    fault: Option<LayerFault>,
    kv: &[KvCacheKind],
) -> Result<Vec<Check>> {
    let mut out = Vec::new();
    let clock = std::time::Instant::now();
    let progress = |what: &str| eprintln!("verify model: {what} done at {:.1} s", clock.elapsed().as_secs_f64());
    let n = reference.frame_size();
    let signal = test_signal(frames * n);
    let cpu = Device::Cpu;
    let x_ref = Tensor::from_slice(&signal, (1, 1, frames * n), &cpu)?;
    let x_dut = x_ref.to_device(dut.mimi.device())?;

    let g = "mimi encode";
    let (er, ed) = (reference.mimi.encode_stages(&x_ref)?, dut.mimi.encode_stages(&x_dut)?);
    for (name, a, b) in [
        ("seanet_latent", &ed.seanet_latent, &er.seanet_latent),
        ("transformer_out", &ed.transformer_out, &er.transformer_out),
        ("downsampled", &ed.downsampled, &er.downsampled),
    ] {
        out.push(Check::float_rel(g, name, &a.to_device(&cpu)?, b, tol.rel)?);
    }
    out.push(agreement(g, "codes (agreement)", &ed.codes.to_device(&cpu)?, &er.codes, tol.agreement)?);
    progress("Mimi encode (CPU f32 and device)");
    let codes = er.codes.to_dtype(DType::I64)?; // [1, K, T]
    let g = "mimi decode";
    let (dr, dd) = (reference.mimi.decode_stages(&codes)?, dut.mimi.decode_stages(&codes.to_device(dut.mimi.device())?)?);
    for (name, a, b) in [
        ("quantized", &dd.quantized, &dr.quantized),
        ("upsampled", &dd.upsampled, &dr.upsampled),
        ("decoder_transformer_out", &dd.decoder_transformer_out, &dr.decoder_transformer_out),
        ("pcm", &dd.pcm, &dr.pcm),
    ] {
        out.push(Check::float_rel(g, name, &a.to_device(&cpu)?, b, tol.rel)?);
    }

    progress("Mimi decode");
    let graphs = crate::exec::RunOptions { cuda_graphs: true, ..crate::exec::RunOptions::default() };
    if crate::exec::graph::applies(dut.mimi.device(), &graphs) {
        // Past the transformers' rings (250 steps, 2 a frame), so that they wrap.
        let mimi_frames = frames.max(140);
        out.extend(super::codec_graphs::run(&dut.mimi, &test_signal(mimi_frames * n), mimi_frames, tol.rel, tol.agreement)?);
        progress("Mimi CUDA graphs");
    }
    // The LM, teacher-forced: text tokens pseudo-random, both audio sides the CPU's codes.
    let cfg = reference.lm.config();
    let t = codes.dim(2)?;
    let k = codes.dim(1)?;
    let text: Vec<i64> = (0..t as i64).map(|i| (i * 7919 + 13) % cfg.text_card as i64).collect();
    let text = Tensor::from_vec(text, (1, 1, t), &cpu)?;
    let model_audio = codes.narrow(1, 0, cfg.dep_q.min(k))?;
    let user_audio = codes.narrow(1, 0, cfg.user_streams().min(k))?;
    let lm_codes = Tensor::cat(&[&text, &model_audio, &user_audio], 1)?;
    let mut ref_layers = Vec::new();
    let tr = reference.lm.forward_teacher_map(&lm_codes, &mut |_, x| {
        ref_layers.push(x.clone());
        Ok(x)
    })?;
    progress("LM teacher-forced on the CPU in f32");
    let mut dut_layers = Vec::new();
    let td = dut.lm.forward_teacher_map(&lm_codes.to_device(&dut.lm.temporal().device())?, &mut |i, x| {
        let x = match fault {
            Some(f) if f.layer == i => (x * (1.0 + f.scale))?,
            _ => x,
        };
        dut_layers.push(x.clone());
        Ok(x)
    })?;
    progress("LM teacher-forced on the device");
    let g = "lm temporal";
    for (i, (a, b)) in dut_layers.iter().zip(&ref_layers).enumerate() {
        out.push(Check::float_rel(g, &format!("layer {i}"), &a.to_device(&cpu)?, b, tol.rel)?);
    }
    out.push(Check::float_rel(g, "out_norm", &td.temporal.out.to_device(&cpu)?, &tr.temporal.out, tol.rel)?);
    out.push(Check::float_rel(g, "text_logits", &td.temporal.text_logits.to_device(&cpu)?, &tr.temporal.text_logits, tol.rel)?);
    out.push(agreement(g, "greedy text (agreement)", &argmax(&td.temporal.text_logits)?, &argmax(&tr.temporal.text_logits)?, tol.agreement)?);
    let g = "lm depformer";
    out.push(Check::float_rel(g, "logits", &td.depformer_logits.to_device(&cpu)?, &tr.depformer_logits, tol.rel)?);
    out.push(agreement(g, "greedy audio (agreement)", &argmax(&td.depformer_logits)?, &argmax(&tr.depformer_logits)?, tol.agreement)?);

    // The LM as conversations run it: streamed step by step through its KV cache (in each
    // kind asked for), teacher-forced with the same tokens, against the CPU's whole sequence.
    for &kind in kv {
        let (text, audio) = stream_teacher(dut, kind, &td.delayed_input, &td.depformer_tokens)?;
        let g = format!("lm streamed, {} KV cache", kind_name(kind));
        // The 8-bit cache's own error (≤ 1/254 of each cached vector's peak per value, about twice
        // bf16's rounding) is not a backend's: it gets the bf16 bounds whatever the model dtype.
        let (rel, agree) = match kind {
            KvCacheKind::Int8 => (tol.rel.max(Tolerances::for_dtype(DType::BF16).rel), tol.agreement.min(Tolerances::for_dtype(DType::BF16).agreement)),
            KvCacheKind::Model => (tol.rel, tol.agreement),
        };
        out.push(Check::float_rel(&g, "text_logits", &text.to_device(&cpu)?, &tr.temporal.text_logits, rel)?);
        out.push(agreement(&g, "greedy text (agreement)", &argmax(&text)?, &argmax(&tr.temporal.text_logits)?, agree)?);
        out.push(Check::float_rel(&g, "depformer logits", &audio.to_device(&cpu)?, &tr.depformer_logits, rel)?);
        out.push(agreement(&g, "greedy audio (agreement)", &argmax(&audio)?, &argmax(&tr.depformer_logits)?, agree)?);
        progress(&format!("LM streamed with the {} KV cache", kind_name(kind)));
    }
    out.extend(sampled_tokens(dut, &codes)?);
    progress("LM sampled with the device and the host sampler (and a CUDA graph on CUDA)");
    Ok(out)
}

/// The `lm q8` group: the LM with 8-bit weights (`q8`: the same weights as `reference`, on the
/// device under test, quantized at load or from a GGUF) teacher-forced over the same input as
/// `run`'s LM checks (`frames` frames of the test signal's CPU codes), against the CPU in f32:
/// every temporal layer, `out_norm`, the heads, greedy agreement; then streamed step by step
/// through its KV cache. Its agreement rows stand beside the `lm temporal` / `lm depformer`
/// groups' (the model-dtype path) in the same table.
pub fn run_q8(reference: &Moshi, q8: &Moshi, frames: usize, tol: Tolerances) -> Result<Vec<Check>> {
    let cpu = Device::Cpu;
    let n = reference.frame_size();
    let x = Tensor::from_slice(&test_signal(frames * n), (1, 1, frames * n), &cpu)?;
    let codes = reference.mimi.encode_stages(&x)?.codes.to_dtype(DType::I64)?;
    let cfg = reference.lm.config();
    let (k, t) = (codes.dim(1)?, codes.dim(2)?);
    let text: Vec<i64> = (0..t as i64).map(|i| (i * 7919 + 13) % cfg.text_card as i64).collect();
    let text = Tensor::from_vec(text, (1, 1, t), &cpu)?;
    let lm_codes = Tensor::cat(&[&text, &codes.narrow(1, 0, cfg.dep_q.min(k))?, &codes.narrow(1, 0, cfg.user_streams().min(k))?], 1)?;
    let mut ref_layers = Vec::new();
    let tr = reference.lm.forward_teacher_map(&lm_codes, &mut |_, x| {
        ref_layers.push(x.clone());
        Ok(x)
    })?;
    let mut q_layers = Vec::new();
    let tq = q8.lm.forward_teacher_map(&lm_codes.to_device(&q8.lm.temporal().device())?, &mut |_, x| {
        q_layers.push(x.clone());
        Ok(x)
    })?;
    let g = "lm q8";
    let mut out = Vec::new();
    for (i, (a, b)) in q_layers.iter().zip(&ref_layers).enumerate() {
        out.push(Check::float_rel(g, &format!("layer {i}"), &a.to_device(&cpu)?, b, tol.rel)?);
    }
    out.push(Check::float_rel(g, "out_norm", &tq.temporal.out.to_device(&cpu)?, &tr.temporal.out, tol.rel)?);
    out.push(Check::float_rel(g, "text_logits", &tq.temporal.text_logits.to_device(&cpu)?, &tr.temporal.text_logits, tol.rel)?);
    out.push(agreement(g, "greedy text (agreement)", &argmax(&tq.temporal.text_logits)?, &argmax(&tr.temporal.text_logits)?, tol.agreement)?);
    out.push(Check::float_rel(g, "depformer logits", &tq.depformer_logits.to_device(&cpu)?, &tr.depformer_logits, tol.rel)?);
    out.push(agreement(g, "greedy audio (agreement)", &argmax(&tq.depformer_logits)?, &argmax(&tr.depformer_logits)?, tol.agreement)?);
    let (text, audio) = stream_teacher(q8, KvCacheKind::Model, &tq.delayed_input, &tq.depformer_tokens)?;
    let g = "lm q8 streamed";
    out.push(Check::float_rel(g, "text_logits", &text.to_device(&cpu)?, &tr.temporal.text_logits, tol.rel)?);
    out.push(agreement(g, "greedy text (agreement)", &argmax(&text)?, &argmax(&tr.temporal.text_logits)?, tol.agreement)?);
    out.push(Check::float_rel(g, "depformer logits", &audio.to_device(&cpu)?, &tr.depformer_logits, tol.rel)?);
    out.push(agreement(g, "greedy audio (agreement)", &argmax(&audio)?, &argmax(&tr.depformer_logits)?, tol.agreement)?);
    Ok(out)
}

/// The `lm sampled` group: the LM on the device under test generating with sampling, once with
/// the device sampler and once with the host sampler, the same seeds: every text and audio token
/// must be equal. Two conversation slots with different settings (the reference's defaults, and
/// text greedy with audio at 1.0 / top 100), fed the CPU's codes as the user's audio. Where the
/// device has no sampler kernel both runs sample on the host, and the row checks only that
/// generation is deterministic. On CUDA a third run replays the depformer's CUDA graph
/// (`lm::frame_graph`) and must give the same tokens again, having replayed it (a run that fell
/// back to eager execution fails the row, with the reason).
fn sampled_tokens(dut: &Moshi, codes: &Tensor) -> Result<Vec<Check>> {
    use crate::exec::{RunOptions, Sampler};
    use crate::lm::generate::GenConfig;
    use crate::lm::sampling::SamplingConfig;
    use crate::lm::GraphState;
    let lm = &dut.lm;
    let user_k = lm.config().user_streams();
    let frames = codes.dim(2)?;
    let user_k = user_k.min(codes.dim(1)?);
    let codes: Vec<i64> = codes.to_device(&Device::Cpu)?.squeeze(0)?.to_vec2::<i64>()?.concat(); // [K, T]
    let configs = [GenConfig::default(), GenConfig { text: SamplingConfig::greedy(), audio: SamplingConfig::sampled(1.0, 100) }];
    let run = |opts: RunOptions| -> Result<(Tensor, [GraphState; 2])> {
        let mut st = lm.new_slots(2, &opts)?;
        for (r, c) in configs.iter().enumerate() {
            st.reset_row(r, *c, 4242 + r as u64)?;
        }
        let mut tokens = Vec::new();
        for p in 0..frames {
            if p == frames / 2 && frames >= 4 {
                // Row 1 starts a new conversation mid-way: per-row starts from here on (a new
                // temporal graph layout, recorded again), row 0 goes on.
                st.reset_row(1, configs[1], 77)?;
            }
            // The same user codes in both rows: frame p's first `user_k` codebooks.
            let user: Vec<i64> = (0..2).flat_map(|_| (0..user_k).map(move |q| (q, p))).map(|(q, p)| codes[q * frames + p]).collect();
            let o = lm.step(&mut st, &user)?;
            tokens.extend(o.text.iter().map(|&x| x as i64));
            tokens.extend(o.audio.iter().map(|&x| x as i64));
        }
        Ok((Tensor::from_vec(tokens.clone(), tokens.len(), &Device::Cpu)?, [st.graph_state(), st.temporal_graph_state()]))
    };
    let (device, _) = run(RunOptions { sampler: Sampler::Device, ..RunOptions::default() })?;
    let (host, _) = run(RunOptions { sampler: Sampler::Host, ..RunOptions::default() })?;
    let mut out = vec![Check::codes("lm sampled", "device vs host sampler, tokens", &device, &host)?];
    let graphs = RunOptions { sampler: Sampler::Device, cuda_graphs: true, ..RunOptions::default() };
    if crate::exec::graph::applies(&lm.temporal().device(), &graphs) {
        for kind in [KvCacheKind::Model, KvCacheKind::Int8] {
            let eager = if kind == KvCacheKind::Model { device.clone() } else { run(RunOptions { sampler: Sampler::Device, kv_cache: kind, ..RunOptions::default() })?.0 };
            let (graphed, [dep, temporal]) = run(RunOptions { kv_cache: kind, ..graphs })?;
            let what = format!("CUDA graphs (temporal + depformer) vs eager, {} KV cache, tokens", kind_name(kind));
            let mut c = Check::codes("lm sampled", &what, &graphed, &eager)?;
            // The bf16 model's temporal step is graphed; in f32 it runs eagerly (no fused kernel).
            let temporal_ok = temporal == GraphState::Replaying || lm.temporal().dtype() != DType::BF16;
            if dep != GraphState::Replaying || !temporal_ok {
                c.name = format!("{} (did not replay: depformer {dep:?}, temporal {temporal:?})", c.name);
                c.ok = false;
            }
            out.push(c);
        }
    }
    Ok(out)
}

fn kind_name(kind: KvCacheKind) -> &'static str {
    match kind {
        KvCacheKind::Model => "model-dtype",
        KvCacheKind::Int8 => "8-bit",
    }
}

/// Stream `moshi`'s LM over the delayed input [B, K, T] one step at a time (a temporal KV cache
/// of `kind`, depformer reading `dep_tokens` [B, dep_q, T]): text logits [B, T, text_card] and
/// depformer logits [B, dep_q, T, card], as `forward_teacher` lays them out.
fn stream_teacher(moshi: &Moshi, kind: KvCacheKind, input: &Tensor, dep_tokens: &Tensor) -> Result<(Tensor, Tensor)> {
    let lm = &moshi.lm;
    let t = input.dim(2)?;
    let mut state = TransformerState::new(kind);
    let (mut text, mut audio) = (Vec::with_capacity(t), Vec::with_capacity(t));
    for p in 0..t {
        let out = lm.temporal().step(&input.narrow(2, p, 1)?.contiguous()?, &mut state, &mut |_, _| Ok(()))?;
        text.push(out.text_logits);
        let mut ds = TransformerState::default();
        let mut steps = Vec::with_capacity(lm.depformer().steps());
        for k in 0..lm.depformer().steps() {
            let prev = dep_tokens.narrow(1, k, 1)?.narrow(2, p, 1)?.squeeze(1)?.contiguous()?;
            steps.push(lm.depformer().step(k, &out.out, &prev, &mut ds)?); // [B, 1, card]
        }
        audio.push(Tensor::stack(&steps, 1)?); // [B, dep_q, 1, card]
    }
    Ok((Tensor::cat(&text, 1)?, Tensor::cat(&audio, 2)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 27 of 30 equal is 90% agreement: it meets a 90% bound; 26 of 30 does not.
    #[test]
    fn agreement_at_the_bound_passes() {
        let reference = Tensor::zeros(30, DType::I64, &Device::Cpu).unwrap();
        let with_diffs = |n: usize| Tensor::from_vec((0..30).map(|i| i64::from(i < n)).collect::<Vec<i64>>(), 30, &Device::Cpu).unwrap();
        assert!(agreement("g", "n", &with_diffs(3), &reference, 0.9).unwrap().ok);
        assert!(!agreement("g", "n", &with_diffs(4), &reference, 0.9).unwrap().ok);
    }
}

//! "Streaming equals batch" for every streaming module, table-driven over shapes and chunk sizes,
//! on seeded random weights; the convolutions are also pinned to naive direct implementations
//! written here. Each test collects every failing case and reports them all at the end.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use moshi_engine::mimi::config::SeanetConfig;
use moshi_engine::mimi::seanet::{SeanetDecoder, SeanetEncoder, SeanetState};
use moshi_engine::nn::conv::{ConvSpec, ConvState, ConvTrState, PadMode, StreamingConv1d, StreamingConvTr1d};
use moshi_engine::nn::norm::NormKind;
use moshi_engine::nn::transformer::{FfnKind, Transformer, TransformerConfig, TransformerState};
use moshi_engine::EngineError;

/// Absolute tolerance for streaming vs batch and module vs naive reference (f32, values O(1)).
const TOL: f32 = 1e-5;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// xorshift64*: reproducible weights and inputs (Tensor::randn is unseeded).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Uniform in [-scale, scale), f32 on the CPU.
    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.uniform() * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn vb_of(map: HashMap<String, Tensor>) -> VarBuilder<'static> {
    VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
}

/// Build a module whose tensors are not named by hand: every `MissingTensor` the constructor
/// reports is filled with seeded random values of the expected shape, then it is retried.
fn build_filled<T>(seed: u64, build: impl Fn(VarBuilder<'static>) -> moshi_engine::Result<T>) -> T {
    let mut rng = Rng::new(seed);
    let mut map = HashMap::new();
    loop {
        match build(vb_of(map.clone())) {
            Ok(m) => return m,
            Err(EngineError::MissingTensor { name, expected, .. }) => {
                let fan_in: usize = expected.iter().skip(1).product();
                let scale = if name.ends_with("bias") { 0.1 } else { 1.0 / (fan_in.max(1) as f32).sqrt() };
                map.insert(name, rng.tensor(&expected, scale));
            }
            Err(e) => panic!("cannot build module: {e}"),
        }
    }
}

/// Feed `x` to `f` in successive chunks of `chunk` steps along `dim` (the last chunk may be
/// shorter) and concatenate the outputs along the same dim.
fn stream(
    x: &Tensor,
    dim: usize,
    chunk: usize,
    mut f: impl FnMut(&Tensor) -> moshi_engine::Result<Tensor>,
) -> anyhow::Result<Tensor> {
    let total = x.dim(dim)?;
    let mut parts = Vec::new();
    let mut start = 0;
    while start < total {
        let n = chunk.min(total - start);
        parts.push(f(&x.narrow(dim, start, n)?)?);
        start += n;
    }
    Ok(Tensor::cat(&parts, dim)?)
}

fn max_err(got: &Tensor, want: &Tensor) -> anyhow::Result<f32> {
    anyhow::ensure!(got.dims() == want.dims(), "shape {:?}, expected {:?}", got.dims(), want.dims());
    Ok(common::max_abs_diff(got, want))
}

/// Collects the outcome of every case; `finish` panics listing all failing ones.
#[derive(Default)]
struct Cases {
    n: usize,
    worst: f32,
    failures: Vec<String>,
}

impl Cases {
    /// Compare `f`'s (got, want) within `tol`; an error inside `f` is a failure too.
    fn check(&mut self, case: &str, tol: f32, f: impl FnOnce() -> anyhow::Result<(Tensor, Tensor)>) {
        self.n += 1;
        match f().and_then(|(got, want)| max_err(&got, &want)) {
            Ok(err) if err <= tol => self.worst = self.worst.max(err),
            Ok(err) => self.failures.push(format!("{case}: max abs err {err:.3e} > tol {tol:.0e}")),
            Err(e) => self.failures.push(format!("{case}: error: {e:#}")),
        }
    }

    fn finish(self, what: &str) {
        eprintln!("{what}: {} cases, {} failed, worst passing err {:.3e}", self.n, self.failures.len(), self.worst);
        assert!(
            self.failures.is_empty(),
            "{what}: {} of {} cases failed:\n{}",
            self.failures.len(),
            self.n,
            self.failures.join("\n")
        );
    }
}

/// Direct causal conv: left pad of (k−1)·d+1−s zeros (or the first sample, `replicate`), no
/// right pad, output length T / s. x [B, C, T], w [O, C, K], bias [O].
fn naive_conv1d(x: &Tensor, w: &Tensor, bias: &Tensor, s: usize, d: usize, replicate: bool) -> Tensor {
    let (b, c, t) = x.dims3().unwrap();
    let (o, _, k) = w.dims3().unwrap();
    let (xv, wv, bv) = (vec_of(x), vec_of(w), vec_of(bias));
    let pad = ((k - 1) * d + 1 - s) as isize;
    let t_out = t / s;
    let mut y = vec![0f32; b * o * t_out];
    for bi in 0..b {
        for oi in 0..o {
            for ti in 0..t_out {
                let mut acc = bv[oi] as f64;
                for ci in 0..c {
                    for ki in 0..k {
                        let pos = (ti * s + ki * d) as isize - pad;
                        let v = match (pos < 0, replicate) {
                            (true, false) => 0.0,
                            (true, true) => xv[(bi * c + ci) * t],
                            (false, _) => xv[(bi * c + ci) * t + pos as usize],
                        };
                        acc += wv[(oi * c + ci) * k + ki] as f64 * v as f64;
                    }
                }
                y[(bi * o + oi) * t_out + ti] = acc as f32;
            }
        }
    }
    Tensor::from_vec(y, (b, o, t_out), &Device::Cpu).unwrap()
}

/// Full transposed conv, no bias, no trim: y[b, co, t·S + k] += x[b, ci, t] · w[ci, co, k]
/// (depthwise: co = ci, w [C, 1, K]). Output [B, C_out, (T−1)·S + K].
fn naive_convtr_full(x: &Tensor, w: &Tensor, s: usize, depthwise: bool) -> Tensor {
    let (b, c_in, t) = x.dims3().unwrap();
    let (_, per_group, k) = w.dims3().unwrap();
    let c_out = if depthwise { c_in } else { per_group };
    let l = (t - 1) * s + k;
    let (xv, wv) = (vec_of(x), vec_of(w));
    let mut y = vec![0f64; b * c_out * l];
    for bi in 0..b {
        for ci in 0..c_in {
            for ti in 0..t {
                let xs = xv[(bi * c_in + ci) * t + ti] as f64;
                for j in 0..per_group {
                    let co = if depthwise { ci } else { j };
                    for ki in 0..k {
                        y[(bi * c_out + co) * l + ti * s + ki] += xs * wv[(ci * per_group + j) * k + ki] as f64;
                    }
                }
            }
        }
    }
    let y: Vec<f32> = y.into_iter().map(|v| v as f32).collect();
    Tensor::from_vec(y, (b, c_out, l), &Device::Cpu).unwrap()
}

/// The causal transposed conv: the full one trimmed by K − S on the right, plus bias.
fn naive_convtr(x: &Tensor, w: &Tensor, bias: &Tensor, s: usize, depthwise: bool) -> Tensor {
    let full = naive_convtr_full(x, w, s, depthwise);
    let t = x.dim(2).unwrap();
    full.narrow(2, 0, t * s).unwrap().broadcast_add(&bias.reshape((1, (), 1)).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// StreamingConv1d
// ---------------------------------------------------------------------------------------------

#[test]
fn conv1d_streaming_equals_batch_and_naive() {
    let mut rng = Rng::new(1);
    let mut cases = Cases::default();
    let (b, c_in, c_out) = (2, 3, 4);
    for k in [1usize, 3, 4, 7, 8, 16] {
        for s in [1, 2, 4, 5, 8].into_iter().filter(|&s| s <= k) {
            for d in [1, 2].into_iter().filter(|&d| d == 1 || s == 1) {
                for pad_mode in [PadMode::Constant, PadMode::Replicate] {
                    let name = format!("k={k} s={s} d={d} {pad_mode:?} B={b}");
                    let effective = (k - 1) * d + 1;
                    // Long enough that the carried context is crossed several times.
                    let frames = 2 * effective.div_ceil(s) + 5;
                    let t = frames * s;
                    let w = rng.tensor(&[c_out, c_in, k], 1.0 / ((c_in * k) as f32).sqrt());
                    let bias = rng.tensor(&[c_out], 0.1);
                    let x = rng.tensor(&[b, c_in, t], 1.0);
                    let spec = ConvSpec {
                        in_channels: c_in,
                        out_channels: c_out,
                        kernel: k,
                        stride: s,
                        dilation: d,
                        bias: true,
                        pad_mode,
                    };
                    let map = HashMap::from([
                        ("x.conv.conv.weight".to_string(), w.clone()),
                        ("x.conv.conv.bias".to_string(), bias.clone()),
                    ]);
                    let conv = StreamingConv1d::new(spec, vb_of(map).pp("x")).unwrap();
                    let batch = match conv.forward(&x, &mut ConvState::default()) {
                        Ok(y) => y,
                        Err(e) => {
                            cases.failures.push(format!("{name}: batch forward error: {e}"));
                            continue;
                        }
                    };
                    cases.check(&format!("{name} T={t}: batch vs naive"), TOL, || {
                        Ok((batch.clone(), naive_conv1d(&x, &w, &bias, s, d, pad_mode == PadMode::Replicate)))
                    });
                    for chunk in [1, 2, 3, frames] {
                        cases.check(&format!("{name} T={t}: chunks of {chunk} frames vs batch"), TOL, || {
                            let mut state = ConvState::default();
                            Ok((stream(&x, 2, chunk * s, |c| conv.forward(c, &mut state))?, batch.clone()))
                        });
                    }
                }
            }
        }
    }
    cases.finish("StreamingConv1d");
}

// ---------------------------------------------------------------------------------------------
// StreamingConvTr1d
// ---------------------------------------------------------------------------------------------

#[test]
fn convtr1d_streaming_equals_batch_and_naive() {
    let mut rng = Rng::new(2);
    let mut cases = Cases::default();
    let mut shapes: Vec<(usize, usize)> = Vec::new();
    for k in [2, 4, 8, 10, 12, 16] {
        shapes.extend([1, 2, 4, 5, 6, 8].into_iter().filter(|&s| s <= k).map(|s| (k, s)));
    }
    shapes.push((5, 2)); // K not a multiple of S (so are 10/4, 10/6, 10/8, 12/5, 12/8, 16/5, 16/6).
    let t = 9;
    for depthwise in [false, true] {
        let (c_in, c_out, groups) = if depthwise { (4, 4, 4) } else { (3, 5, 1) };
        for b in [1, 3] {
            for &(k, s) in &shapes {
                let name = format!("k={k} s={s} groups={groups} {c_in}->{c_out} B={b} T={t}");
                let w = rng.tensor(&[c_in, c_out / groups, k], 1.0 / ((c_in * k / s).max(1) as f32).sqrt());
                let bias = rng.tensor(&[c_out], 0.1);
                let x = rng.tensor(&[b, c_in, t], 1.0);
                let spec = ConvSpec {
                    in_channels: c_in,
                    out_channels: c_out,
                    kernel: k,
                    stride: s,
                    dilation: 1,
                    bias: true,
                    pad_mode: PadMode::Constant,
                };
                let map = HashMap::from([
                    ("x.convtr.convtr.weight".to_string(), w.clone()),
                    ("x.convtr.convtr.bias".to_string(), bias.clone()),
                ]);
                let convtr = StreamingConvTr1d::new(spec, groups, vb_of(map).pp("x")).unwrap();
                let batch = match convtr.forward(&x, &mut ConvTrState::default()) {
                    Ok(y) => y,
                    Err(e) => {
                        cases.failures.push(format!("{name}: batch forward error: {e}"));
                        continue;
                    }
                };
                cases.check(&format!("{name}: batch vs naive"), TOL, || {
                    Ok((batch.clone(), naive_convtr(&x, &w, &bias, s, depthwise)))
                });
                for chunk in [1, 2, 3, t] {
                    cases.check(&format!("{name}: chunks of {chunk} steps vs batch"), TOL, || {
                        let mut state = ConvTrState::default();
                        Ok((stream(&x, 2, chunk, |c| convtr.forward(c, &mut state))?, batch.clone()))
                    });
                }
            }
        }
    }
    cases.finish("StreamingConvTr1d");
}

/// candle-core 0.11.1's CPU `conv_transpose1d` is wrong for batch > 1, which is why
/// `StreamingConvTr1d` computes its own. This test fails once Candle is fixed, so that we notice.
#[test]
fn candle_conv_transpose1d_batch_bug_still_present() {
    let mut rng = Rng::new(3);
    let (c_in, c_out, k, s, t) = (3, 5, 8, 4, 6);
    let x = rng.tensor(&[2, c_in, t], 1.0);
    let w = rng.tensor(&[c_in, c_out, k], 0.3);
    let naive = naive_convtr_full(&x, &w, s, false);
    // The naive reference is right: Candle agrees with it one batch item at a time.
    for i in 0..2 {
        let one = x.narrow(0, i, 1).unwrap().conv_transpose1d(&w, 0, 0, s, 1, 1).unwrap();
        let err = max_err(&one, &naive.narrow(0, i, 1).unwrap()).unwrap();
        assert!(err <= TOL, "naive transposed conv disagrees with candle at batch 1 (item {i}): {err:.3e}");
    }
    let both = x.conv_transpose1d(&w, 0, 0, s, 1, 1).unwrap();
    let err = max_err(&both, &naive).unwrap();
    eprintln!("candle conv_transpose1d, batch 2: max abs diff to the naive reference {err:.3e}");
    assert!(
        err > 1e-3,
        "candle fixed conv_transpose1d for batch>1: StreamingConvTr1d may use it again \
         (batch-2 max abs diff to the naive reference is {err:.3e})"
    );
}

// ---------------------------------------------------------------------------------------------
// Transformer
// ---------------------------------------------------------------------------------------------

fn mimi_like_config(context: usize) -> TransformerConfig {
    TransformerConfig {
        d_model: 32,
        num_heads: 4,
        num_layers: 2,
        dim_feedforward: 64,
        context,
        max_period: 10_000.0,
        norm: NormKind::LayerNorm,
        ffn: FfnKind::Gelu,
        layer_scale: true,
        rope: true,
        sin_scale: None,
        schedule: None,
    }
}

/// A transformer with seeded weights under Mimi's checkpoint names. Layer scales are 0.2–0.6
/// (not Mimi's 0.01) so attention visibly moves the output.
fn transformer(cfg: &TransformerConfig, seed: u64) -> Transformer {
    let mut rng = Rng::new(seed);
    let (d, f) = (cfg.d_model, cfg.dim_feedforward);
    let mut map = HashMap::new();
    for i in 0..cfg.num_layers {
        let mut put = |name: &str, t: Tensor| map.insert(format!("layers.{i}.{name}"), t);
        put("norm1.weight", rng.tensor(&[d], 0.1).affine(1.0, 1.0).unwrap());
        put("norm1.bias", rng.tensor(&[d], 0.1));
        put("self_attn.in_proj_weight", rng.tensor(&[3 * d, d], 1.0 / (d as f32).sqrt()));
        put("self_attn.out_proj.weight", rng.tensor(&[d, d], 1.0 / (d as f32).sqrt()));
        put("layer_scale_1.scale", rng.tensor(&[d], 0.2).affine(1.0, 0.4).unwrap());
        put("norm2.weight", rng.tensor(&[d], 0.1).affine(1.0, 1.0).unwrap());
        put("norm2.bias", rng.tensor(&[d], 0.1));
        put("linear1.weight", rng.tensor(&[f, d], 1.0 / (d as f32).sqrt()));
        put("linear2.weight", rng.tensor(&[d, f], 1.0 / (f as f32).sqrt()));
        put("layer_scale_2.scale", rng.tensor(&[d], 0.2).affine(1.0, 0.4).unwrap());
    }
    Transformer::new(cfg, vb_of(map)).unwrap()
}

#[test]
fn transformer_streaming_equals_batch() {
    let mut cases = Cases::default();
    let mut rng = Rng::new(4);
    // (context, steps, chunk sizes): (a) context beyond the sequence, any chunking;
    // (b) context 4 < steps with 1-step chunks: the ring cache never drops a needed key.
    let table: [(usize, usize, &[usize]); 2] = [(32, 15, &[1, 2, 3, 5, 15]), (4, 15, &[1])];
    for (context, steps, chunks) in table {
        let cfg = mimi_like_config(context);
        let tf = transformer(&cfg, 10 + context as u64);
        let x = rng.tensor(&[2, steps, cfg.d_model], 1.0);
        let batch = tf.forward(&x).unwrap();
        for &chunk in chunks {
            cases.check(&format!("context={context} steps={steps} chunk={chunk}"), TOL, || {
                let mut state = TransformerState::default();
                let y = stream(&x, 1, chunk, |c| tf.step(c, &mut state))?;
                anyhow::ensure!(state.offset() == steps, "offset {} after {steps} steps", state.offset());
                Ok((y, batch.clone()))
            });
        }
    }
    cases.finish("Transformer streaming");
}

/// (c) Context 4, chunks of 3: each chunk's keys are written into the 4-step ring cache before
/// attending, so the first queries of a chunk lose keys still inside their context. This is the
/// reference's `RingKVCache` behaviour (see nn/attention.rs); streaming then differs from batch.
#[test]
fn transformer_multi_step_chunks_beyond_context_differ_from_batch() {
    let cfg = mimi_like_config(4);
    let tf = transformer(&cfg, 20);
    let x = Rng::new(5).tensor(&[2, 12, cfg.d_model], 1.0);
    let batch = tf.forward(&x).unwrap();
    let mut state = TransformerState::default();
    let streamed = stream(&x, 1, 3, |c| tf.step(c, &mut state)).unwrap();
    // The first chunk has lost nothing yet.
    let first = max_err(&streamed.narrow(1, 0, 3).unwrap(), &batch.narrow(1, 0, 3).unwrap()).unwrap();
    assert!(first <= TOL, "context 4, chunk 3: first chunk should match batch, max abs err {first:.3e}");
    let all = max_err(&streamed, &batch).unwrap();
    eprintln!("context 4, chunk 3: first chunk err {first:.3e}, whole stream diff {all:.3e}");
    assert!(
        all > 1e-4,
        "context 4, chunk 3 over 12 steps: expected streaming to differ from batch (ring cache), \
         max abs diff only {all:.3e}"
    );
}

/// (e) The 8-bit KV cache: each position is quantised on its own (one scale per row, head and
/// position), so any chunking streams to the same result; against the full-precision batch the
/// error is the quantisation's (≤ max|x|/254 per cached value), visible but small.
#[test]
fn transformer_int8_kv_cache_streams_close_to_batch() {
    use moshi_engine::exec::{dequantize_i8, quantize_i8, KvCacheKind};
    let cfg = mimi_like_config(32);
    let tf = transformer(&cfg, 40);
    let x = Rng::new(7).tensor(&[2, 15, cfg.d_model], 1.0);
    let batch = tf.forward(&x).unwrap();
    let mut state = TransformerState::new(KvCacheKind::Int8);
    let one = stream(&x, 1, 1, |c| tf.step(c, &mut state)).unwrap();
    let mut state = TransformerState::new(KvCacheKind::Int8);
    let five = stream(&x, 1, 5, |c| tf.step(c, &mut state)).unwrap();
    let chunking = max_err(&five, &one).unwrap();
    let quant = max_err(&one, &batch).unwrap();
    eprintln!("8-bit KV: chunk 5 vs 1 {chunking:.2e}, vs full-precision batch {quant:.2e}");
    assert!(chunking <= TOL, "8-bit KV cache: chunking changed the result by {chunking:.3e}");
    assert!(quant > 1e-5, "8-bit KV cache: no quantisation error at all ({quant:.3e}): is the cache really 8-bit?");
    assert!(quant < 2e-2, "8-bit KV cache: error {quant:.3e} against the full-precision batch");

    // The quantiser itself: per-vector error within half a step (max|x| / 254), zeros exact.
    let v = Rng::new(8).tensor(&[3, 5, 16], 2.0);
    let v = Tensor::cat(&[&v, &Tensor::zeros((3, 1, 16), DType::F32, &Device::Cpu).unwrap()], 1).unwrap();
    let (q, scale) = quantize_i8(&v).unwrap();
    assert_eq!((q.dtype(), scale.dims()), (DType::U8, &[3usize, 6][..]));
    let back = dequantize_i8(&q, &scale).unwrap();
    let amax = v.abs().unwrap().max_keepdim(2).unwrap();
    let worst = ((back - &v).unwrap().abs().unwrap().broadcast_div(&(amax + 1e-30).unwrap()).unwrap())
        .max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(worst <= 0.5 / 127.0 + 1e-6, "8-bit round trip: error {worst:.3e} of max|x|");
    let zeros = vec_of(&dequantize_i8(&q.narrow(1, 5, 1).unwrap(), &scale.narrow(1, 5, 1).unwrap()).unwrap());
    assert!(zeros.iter().all(|&z| z == 0.0), "a zero vector must round-trip exactly");
}

/// (d) A fresh `TransformerState` starts a new stream: same output as the very first call.
#[test]
fn transformer_state_reset() {
    let cfg = mimi_like_config(8);
    let tf = transformer(&cfg, 30);
    let x = Rng::new(6).tensor(&[2, 10, cfg.d_model], 1.0);
    let head = x.narrow(1, 0, 5).unwrap();
    let mut state = TransformerState::default();
    let y0 = tf.step(&head, &mut state).unwrap();
    tf.step(&x.narrow(1, 5, 5).unwrap(), &mut state).unwrap();
    assert_eq!(state.offset(), 10);
    // Without a reset the same input is at positions 10.. and sees the cached past: different.
    let continued = tf.step(&head, &mut state.clone()).unwrap();
    let diff = max_err(&continued, &y0).unwrap();
    assert!(diff > 1e-4, "continuing the state should change the output, max abs diff {diff:.3e}");
    state = TransformerState::default();
    assert_eq!(state.offset(), 0);
    let y1 = tf.step(&head, &mut state).unwrap();
    let err = max_err(&y1, &y0).unwrap();
    assert!(err <= 1e-6, "after reset the output should equal the first call's, max abs err {err:.3e}");
}

// ---------------------------------------------------------------------------------------------
// SEANet
// ---------------------------------------------------------------------------------------------

fn small_seanet_config() -> SeanetConfig {
    // The real Mimi's SEANet, narrowed, with two residual layers (dilations 1 and 2).
    SeanetConfig {
        dimension: 8,
        n_filters: 4,
        n_residual_layers: 2,
        ratios: vec![4, 2],
        ..moshi_engine::mimi::MimiConfig::default().seanet
    }
}

#[test]
fn seanet_streaming_equals_batch() {
    let cfg = small_seanet_config();
    let hop: usize = cfg.ratios.iter().product();
    let frames = 12;
    let enc = build_filled(40, |vb| SeanetEncoder::new(&cfg, vb.pp("encoder")));
    let dec = build_filled(41, |vb| SeanetDecoder::new(&cfg, vb.pp("decoder")));
    let mut rng = Rng::new(7);
    let pcm = rng.tensor(&[2, 1, frames * hop], 0.5);
    let latent = rng.tensor(&[2, cfg.dimension, frames], 1.0);
    let enc_batch = enc.forward(&pcm, &mut SeanetState::default()).unwrap();
    let dec_batch = dec.forward(&latent, &mut SeanetState::default()).unwrap();
    assert_eq!(enc_batch.dims(), &[2, cfg.dimension, frames]);
    assert_eq!(dec_batch.dims(), &[2, 1, frames * hop]);
    let mut cases = Cases::default();
    for chunk in [1, 2, 3] {
        cases.check(&format!("encoder hop={hop} chunks of {chunk} hops"), TOL, || {
            let mut state = SeanetState::default();
            Ok((stream(&pcm, 2, chunk * hop, |c| enc.forward(c, &mut state))?, enc_batch.clone()))
        });
        cases.check(&format!("decoder hop={hop} chunks of {chunk} steps"), TOL, || {
            let mut state = SeanetState::default();
            Ok((stream(&latent, 2, chunk, |c| dec.forward(c, &mut state))?, dec_batch.clone()))
        });
    }
    cases.finish("SEANet streaming");
}

/// A row restarted mid-stream (`TransformerState::reset_row`, what `serve` does when a new client
/// takes a slot), with the ring cache wrapping several times before and after the restart (context
/// 4, 21 steps): from its restart on, the row computes what a fresh stream of its own inputs does,
/// and the other row is undisturbed.
#[test]
fn transformer_row_restart_past_the_context_equals_a_fresh_stream() {
    let cfg = mimi_like_config(4);
    let tf = transformer(&cfg, 77);
    let mut rng = Rng::new(5);
    let (steps, restart) = (21, 9);
    let x = rng.tensor(&[2, steps, cfg.d_model], 1.0);
    let mut state = TransformerState::default();
    let mut rows: [Vec<Tensor>; 2] = Default::default();
    for t in 0..steps {
        if t == restart {
            state.reset_row(1, 2);
        }
        let y = tf.step(&x.narrow(1, t, 1).unwrap(), &mut state).unwrap();
        rows[0].push(y.narrow(0, 0, 1).unwrap());
        rows[1].push(y.narrow(0, 1, 1).unwrap());
    }
    let alone = |row: usize, from: usize| {
        let mut st = TransformerState::default();
        let xi = x.narrow(0, row, 1).unwrap();
        (from..steps).map(|t| tf.step(&xi.narrow(1, t, 1).unwrap(), &mut st).unwrap()).collect::<Vec<_>>()
    };
    let cat = |v: &[Tensor]| Tensor::cat(v, 1).unwrap();
    let e0 = max_err(&cat(&rows[0]), &cat(&alone(0, 0))).unwrap();
    let e1 = max_err(&cat(&rows[1][restart..]), &cat(&alone(1, restart))).unwrap();
    // Without the restart the row would remember its first 9 steps' keys (and rotate from 9):
    let e_control = max_err(&cat(&rows[0][restart..restart + 2]), &cat(&alone(0, restart)[..2])).unwrap();
    eprintln!("row 0 vs alone {e0:.2e}; restarted row 1 vs a fresh stream {e1:.2e}; control {e_control:.2e}");
    assert!(e0 <= TOL && e1 <= TOL, "row 0 {e0}, row 1 {e1} (tolerance {TOL})");
    assert!(e_control > 100.0 * TOL, "the control should differ: {e_control}");
}

/// A streaming call of more steps than the ring holds (context 4, 10 steps) runs as calls of 4, 4
/// and 2 steps: the same values bit for bit, and none lost (a single write would overwrite the first
/// queries' own keys, and they would attend to nothing).
#[test]
fn transformer_call_longer_than_the_ring_runs_in_ring_sized_pieces() {
    let cfg = mimi_like_config(4);
    let tf = transformer(&cfg, 31);
    let x = Rng::new(9).tensor(&[2, 11, cfg.d_model], 1.0);
    let (mut long, mut pieces) = (TransformerState::default(), TransformerState::default());
    // One step first, so that the long call's pieces start mid-ring.
    let a = Tensor::cat(&[tf.step(&x.narrow(1, 0, 1).unwrap(), &mut long).unwrap(), tf.step(&x.narrow(1, 1, 10).unwrap(), &mut long).unwrap()], 1).unwrap();
    let b = Tensor::cat(
        &[(0, 1), (1, 4), (5, 4), (9, 2)].map(|(s, n)| tf.step(&x.narrow(1, s, n).unwrap(), &mut pieces).unwrap()),
        1,
    )
    .unwrap();
    assert!(vec_of(&a).iter().all(|v| v.is_finite()), "the long call gave non-finite values");
    assert_eq!(max_err(&a, &b).unwrap(), 0.0, "a 10-step call differs from calls of 4, 4 and 2 steps");
    assert_eq!(long.offset(), 11);
}

/// The fixed layout a CUDA graph records (`Transformer::step_ctx_fixed`: keys scattered at slots
/// held on the device, attention over the whole ring under a mask) computes what the usual streaming
/// layout does, call by call, with the ring wrapping several times, calls of 1 to 4 steps and a row
/// restarted mid-way. Only the order of the attention's sums differs (masked keys add exact zeros),
/// hence `TOL`.
#[test]
fn transformer_fixed_layout_equals_usual_layout() {
    let cfg = mimi_like_config(4);
    let tf = transformer(&cfg, 41);
    let x = Rng::new(11).tensor(&[2, 24, cfg.d_model], 1.0);
    let (mut usual, mut fixed) = (TransformerState::default(), TransformerState::default());
    let (mut t, mut worst) = (0, 0f32);
    for (i, n) in [1, 2, 3, 4, 1, 4, 2, 3, 4].into_iter().enumerate() {
        if i == 5 {
            usual.reset_row(1, 2);
            fixed.reset_row(1, 2);
        }
        let xi = x.narrow(1, t, n).unwrap();
        let a = tf.step(&xi, &mut usual).unwrap();
        let shape = moshi_engine::nn::transformer::Shape { batch: 2, steps: n, dtype: DType::F32, device: &Device::Cpu };
        let ctx = tf.step_ctx_fixed(shape, &fixed).unwrap();
        assert!(tf.graphable(&ctx), "the fixed layout should be graphable");
        let b = tf.step_with_ctx(&xi, &mut fixed, &ctx).unwrap();
        worst = worst.max(max_err(&b, &a).unwrap());
        t += n;
    }
    eprintln!("fixed vs usual layout over {t} steps: max abs diff {worst:.2e}");
    assert!(worst <= TOL, "fixed layout differs by {worst:e} (tolerance {TOL})");
}

/// An LM-like transformer (RMSNorm in f32, gated SiLU, no LayerScale) with seeded weights under
/// the LM's checkpoint names.
fn lm_like_transformer(seed: u64) -> Transformer {
    let cfg = TransformerConfig {
        norm: NormKind::RmsNormF32,
        ffn: FfnKind::GatedSilu,
        layer_scale: false,
        num_layers: 3,
        ..mimi_like_config(16)
    };
    let mut rng = Rng::new(seed);
    let (d, f) = (cfg.d_model, cfg.dim_feedforward);
    let mut map = HashMap::new();
    for i in 0..cfg.num_layers {
        let mut put = |name: &str, t: Tensor| map.insert(format!("layers.{i}.{name}"), t);
        put("norm1.alpha", rng.tensor(&[1, 1, d], 0.1).affine(1.0, 1.0).unwrap());
        put("self_attn.in_proj_weight", rng.tensor(&[3 * d, d], 1.0 / (d as f32).sqrt()));
        put("self_attn.out_proj.weight", rng.tensor(&[d, d], 1.0 / (d as f32).sqrt()));
        put("norm2.alpha", rng.tensor(&[1, 1, d], 0.1).affine(1.0, 1.0).unwrap());
        put("gating.linear_in.weight", rng.tensor(&[2 * f, d], 1.0 / (d as f32).sqrt()));
        put("gating.linear_out.weight", rng.tensor(&[d, f], 1.0 / (f as f32).sqrt()));
    }
    Transformer::new(&cfg, vb_of(map)).unwrap()
}

/// The layers' fast form (each residual add handed to the norm after it, `Norm::add_forward`,
/// fused into one kernel on CUDA) against the op-by-op form `verify` taps: on the CPU the same
/// ops in the same order, so bit for bit, whole-sequence and streamed, every layer's output.
#[test]
fn transformer_deferred_residual_adds_equal_the_op_by_op_layers() {
    for (name, tf) in [("mimi-like", transformer(&mimi_like_config(16), 43)), ("lm-like", lm_like_transformer(44))] {
        let d = tf.config().d_model;
        let x = Rng::new(12).tensor(&[2, 6, d], 1.0);
        let mut tapped = Vec::new();
        let want = tf
            .forward_tapped(&x, &mut |_, op, t| {
                if op == "residual_2" {
                    tapped.push(t.clone());
                }
                Ok(t)
            })
            .unwrap();
        assert_eq!(max_err(&tf.forward(&x).unwrap(), &want).unwrap(), 0.0, "{name}: forward vs tapped");
        let mapped = tf.forward_map(&x, &mut |_, t| Ok(t)).unwrap();
        assert_eq!(max_err(&mapped, &want).unwrap(), 0.0, "{name}: forward_map vs tapped");
        // Streamed in one call: every layer's output (inspected) equals the tapped layer's.
        let mut seen = Vec::new();
        let mut state = TransformerState::default();
        let got = tf.step_inspect(&x, &mut state, &mut |i, t| Ok(seen.push((i, t.clone())))).unwrap();
        assert_eq!(max_err(&got, &want).unwrap(), 0.0, "{name}: streamed vs tapped");
        assert_eq!(seen.len(), tapped.len(), "{name}: layers inspected");
        for ((i, s), t) in seen.iter().zip(&tapped) {
            assert_eq!(max_err(s, t).unwrap(), 0.0, "{name}: layer {i}");
        }
    }
}

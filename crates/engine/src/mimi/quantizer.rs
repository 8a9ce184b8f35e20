//! Split residual vector quantizer (`moshi.quantization.vq.SplitResidualVectorQuantizer`).
//!
//! `rvq_first` quantizes the semantic codebook(s), `rvq_rest` the acoustic ones; both start from
//! the same latent (not from each other's residual), each through its own 1×1 input projection.
//! Within one RVQ each codebook quantizes the residual left by the previous ones. Codebook
//! vectors are `embedding_sum / max(cluster_usage, 1e-5)`; the code is the nearest vector in
//! Euclidean distance. Decoding sums the vectors, projects out, and sums the two halves.
//! The quantizer always computes in f32, whatever the model dtype: a code is an argmin, and
//! bf16 distances would flip near-ties.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::VarBuilder;

use super::config::QuantizerConfig;
use crate::error::{EngineError, Result};
use crate::nn::conv::PointwiseConv;
use crate::weights::get_checked;

const CLUSTER_USAGE_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
struct Codebook {
    /// [bins, dim]
    embedding: Tensor,
    /// ‖e‖² per entry, [bins]
    norms: Tensor,
}

impl Codebook {
    /// `vb` points at `vq.layers.{i}._codebook`.
    fn new(cfg: &QuantizerConfig, vb: VarBuilder) -> Result<Self> {
        let sum = get_checked(&vb, &[cfg.bins, cfg.dimension], "embedding_sum")?.to_dtype(DType::F32)?;
        let usage = get_checked(&vb, &[cfg.bins], "cluster_usage")?.to_dtype(DType::F32)?;
        let embedding = sum.broadcast_div(&usage.clamp(CLUSTER_USAGE_EPS, f64::INFINITY)?.unsqueeze(1)?)?;
        let norms = embedding.sqr()?.sum(1)?;
        Ok(Self { embedding, norms })
    }

    /// Nearest entry for each row of `x` [N, dim] → [N] (u32).
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        // argmin ‖x − e‖² = argmin (‖e‖² − 2 x·e): ‖x‖² is the same for every entry.
        let dots = x.matmul(&self.embedding.t()?)?;
        let dist = self.norms.unsqueeze(0)?.broadcast_sub(&(dots * 2.0)?)?;
        Ok(dist.argmin(D::Minus1)?)
    }

    /// Rows for `codes` [N] → [N, dim].
    fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        crate::exec::embedding(&self.embedding, codes)
    }
}

/// One residual VQ with its projections (`rvq_first` or `rvq_rest`).
#[derive(Debug, Clone)]
struct Rvq {
    input_proj: PointwiseConv,
    output_proj: PointwiseConv,
    codebooks: Vec<Codebook>,
}

impl Rvq {
    fn new(cfg: &QuantizerConfig, n_q: usize, vb: VarBuilder) -> Result<Self> {
        let codebooks = (0..n_q)
            .map(|i| Codebook::new(cfg, vb.pp("vq").pp("layers").pp(i).pp("_codebook")))
            .collect::<Result<_>>()?;
        Ok(Self {
            input_proj: PointwiseConv::new(cfg.input_dimension, cfg.dimension, vb.pp("input_proj"))?,
            output_proj: PointwiseConv::new(cfg.dimension, cfg.output_dimension, vb.pp("output_proj"))?,
            codebooks,
        })
    }

    /// Latent [B, C, T] → codes [B, n, T] (u32) using the first `n` codebooks.
    fn encode(&self, x: &Tensor, n: usize) -> Result<Tensor> {
        let (b, _c, t) = x.dims3()?;
        let projected = self.input_proj.forward(x)?; // [B, D, T]
        let mut residual = projected.transpose(1, 2)?.reshape((b * t, ()))?.contiguous()?;
        let mut codes = Vec::with_capacity(n);
        for cb in &self.codebooks[..n] {
            let c = cb.encode(&residual)?;
            residual = (residual - cb.decode(&c)?)?;
            codes.push(c.reshape((b, 1, t))?);
        }
        Ok(Tensor::cat(&codes, 1)?)
    }

    /// Codes [B, n, T] → latent [B, C_out, T].
    fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, n, t) = codes.dims3()?;
        let mut sum: Option<Tensor> = None;
        for (k, cb) in self.codebooks[..n].iter().enumerate() {
            let c = codes.narrow(1, k, 1)?.flatten_all()?;
            let v = cb.decode(&c)?;
            sum = Some(match sum {
                None => v,
                Some(s) => (s + v)?,
            });
        }
        let sum = sum.ok_or_else(|| EngineError::InvalidInput("no codebooks to decode".into()))?;
        let latent = sum.reshape((b, t, ()))?.transpose(1, 2)?;
        Ok(self.output_proj.forward(&latent)?)
    }
}

/// The split RVQ with `n_q` codebooks in the checkpoint, of which `num_codebooks` are used.
#[derive(Debug, Clone)]
pub struct SplitRvq {
    first: Rvq,
    rest: Rvq,
    n_q_semantic: usize,
    bins: usize,
    num_codebooks: usize,
}

impl SplitRvq {
    /// `vb` points at `quantizer`.
    pub fn new(cfg: &QuantizerConfig, num_codebooks: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            first: Rvq::new(cfg, cfg.n_q_semantic, vb.pp("rvq_first"))?,
            rest: Rvq::new(cfg, cfg.n_q - cfg.n_q_semantic, vb.pp("rvq_rest"))?,
            n_q_semantic: cfg.n_q_semantic,
            bins: cfg.bins,
            num_codebooks,
        })
    }

    pub fn num_codebooks(&self) -> usize {
        self.num_codebooks
    }

    /// Latent [B, C, F] → codes [B, K, F] (u32), K = num_codebooks.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let semantic = self.first.encode(&x, self.n_q_semantic.min(self.num_codebooks))?;
        if self.num_codebooks <= self.n_q_semantic {
            return Ok(semantic);
        }
        let acoustic = self.rest.encode(&x, self.num_codebooks - self.n_q_semantic)?;
        Ok(Tensor::cat(&[&semantic, &acoustic], 1)?)
    }

    /// Codes [B, K, F] (any integer dtype, K ≤ num_codebooks in the checkpoint) → latent [B, C, F].
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        self.check_codes(codes)?;
        self.decode_checked(codes)
    }

    /// Check that `codes` [B, K, F] can be decoded: K in range, every code below the codebooks'
    /// size (read back to the host: a CUDA graph of the decode checks its input before the replay).
    pub fn check_codes(&self, codes: &Tensor) -> Result<()> {
        let (_b, k, _t) = codes.dims3()?;
        let total = self.n_q_semantic + self.rest.codebooks.len();
        if k == 0 || k > total {
            return Err(EngineError::InvalidInput(format!("{k} codebooks given, the model has 1..={total}")));
        }
        // Through u32 first, as the decode reads them: a negative code wraps to a huge one.
        let max = codes.to_dtype(DType::U32)?.to_dtype(DType::F32)?.max_keepdim(0)?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        if max as usize >= self.bins {
            return Err(EngineError::InvalidInput(format!("code {max} out of range: codebooks have {} entries", self.bins)));
        }
        Ok(())
    }

    /// `decode` of codes `check_codes` accepted, with no read back to the host.
    pub fn decode_checked(&self, codes: &Tensor) -> Result<Tensor> {
        let k = codes.dim(1)?;
        let codes = codes.to_dtype(DType::U32)?;
        let ns = self.n_q_semantic.min(k);
        let mut out = self.first.decode(&codes.narrow(1, 0, ns)?)?;
        if k > ns {
            out = (out + self.rest.decode(&codes.narrow(1, ns, k - ns)?)?)?;
        }
        Ok(out)
    }
}

//! SEANet encoder and decoder (`moshi.modules.seanet`), as flat layer lists whose indices are the
//! checkpoint's `model.{i}` indices: the encoder is conv, then per ratio (reversed) residual
//! blocks, ELU, strided conv; then ELU, conv. The decoder mirrors it with transposed convs.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::SeanetConfig;
use crate::error::Result;
use crate::exec::elu;
use crate::nn::conv::{ConvSpec, ConvState, ConvTrState, StreamingConv1d, StreamingConvTr1d};

/// Residual block `block.{1,3}`: x + conv₁ₓ₁(ELU(conv_k(ELU(x)))), hidden width dim/compress.
#[derive(Debug, Clone)]
struct ResBlock {
    conv1: StreamingConv1d,
    conv2: StreamingConv1d,
}

impl ResBlock {
    fn new(cfg: &SeanetConfig, dim: usize, dilation: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = dim / cfg.compress;
        let spec = |i, o, k, d| ConvSpec {
            in_channels: i,
            out_channels: o,
            kernel: k,
            stride: 1,
            dilation: d,
            bias: true,
            pad_mode: cfg.pad_mode,
        };
        Ok(Self {
            conv1: StreamingConv1d::new(spec(dim, hidden, cfg.residual_kernel_size, dilation), vb.pp("block").pp(1))?,
            conv2: StreamingConv1d::new(spec(hidden, dim, 1, 1), vb.pp("block").pp(3))?,
        })
    }

    fn forward(&self, x: &Tensor, s1: &mut ConvState, s2: &mut ConvState) -> Result<Tensor> {
        let h = self.conv1.forward(&elu(x)?, s1)?;
        let h = self.conv2.forward(&elu(&h)?, s2)?;
        Ok((x + h)?)
    }
}

#[derive(Debug, Clone)]
enum Layer {
    Conv(StreamingConv1d),
    ConvTr(StreamingConvTr1d),
    Res(ResBlock),
    Elu,
}

/// The state of one SEANet: conv states in layer order (two per residual block) and transposed
/// conv states in layer order.
#[derive(Debug, Clone, Default)]
pub struct SeanetState {
    convs: Vec<ConvState>,
    convtrs: Vec<ConvTrState>,
}

impl SeanetState {
    /// Batch row `row` starts a new stream at the next call.
    pub fn reset_row(&mut self, row: usize) {
        self.convs.iter_mut().for_each(|c| c.reset_row(row));
        self.convtrs.iter_mut().for_each(|c| c.reset_row(row));
    }

    /// Every tensor the state carries between calls, convs then transposed convs.
    pub(crate) fn carried_mut(&mut self) -> Vec<&mut Option<Tensor>> {
        let convs = self.convs.iter_mut().map(ConvState::carried_mut);
        convs.chain(self.convtrs.iter_mut().map(ConvTrState::carried_mut)).collect()
    }

    /// Whether a row starts a new stream at the next call.
    pub(crate) fn has_fresh_rows(&self) -> bool {
        self.convs.iter().any(ConvState::has_fresh_rows) || self.convtrs.iter().any(ConvTrState::has_fresh_rows)
    }
}

#[derive(Debug, Clone)]
struct Seanet {
    layers: Vec<Layer>,
}

impl Seanet {
    fn forward(&self, x: &Tensor, state: &mut SeanetState) -> Result<Tensor> {
        let n_convs = self.layers.iter().map(|l| match l {
            Layer::Conv(_) => 1,
            Layer::Res(_) => 2,
            _ => 0,
        });
        let n_convs: usize = n_convs.sum();
        let n_convtrs = self.layers.iter().filter(|l| matches!(l, Layer::ConvTr(_))).count();
        if state.convs.len() != n_convs || state.convtrs.len() != n_convtrs {
            state.convs = vec![ConvState::default(); n_convs];
            state.convtrs = vec![ConvTrState::default(); n_convtrs];
        }
        let (mut ci, mut ti) = (0, 0);
        let mut x = x.clone();
        for layer in &self.layers {
            x = match layer {
                Layer::Elu => elu(&x)?,
                Layer::Conv(c) => {
                    ci += 1;
                    c.forward(&x, &mut state.convs[ci - 1])?
                }
                Layer::ConvTr(c) => {
                    ti += 1;
                    c.forward(&x, &mut state.convtrs[ti - 1])?
                }
                Layer::Res(r) => {
                    let (a, b) = state.convs[ci..ci + 2].split_at_mut(1);
                    ci += 2;
                    r.forward(&x, &mut a[0], &mut b[0])?
                }
            };
        }
        Ok(x)
    }
}

fn conv(cfg: &SeanetConfig, i: usize, o: usize, k: usize, stride: usize) -> ConvSpec {
    ConvSpec { in_channels: i, out_channels: o, kernel: k, stride, dilation: 1, bias: true, pad_mode: cfg.pad_mode }
}

/// Waveform [B, 1, T] → latent [B, dimension, T / hop].
#[derive(Debug, Clone)]
pub struct SeanetEncoder(Seanet);

impl SeanetEncoder {
    /// `vb` points at `encoder`.
    pub fn new(cfg: &SeanetConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("model");
        let mut layers = Vec::new();
        let mut dim = cfg.n_filters;
        layers.push(Layer::Conv(StreamingConv1d::new(conv(cfg, cfg.channels, dim, cfg.kernel_size, 1), vb.pp(0))?));
        for &ratio in cfg.ratios.iter().rev() {
            for j in 0..cfg.n_residual_layers {
                let d = cfg.dilation_base.pow(j as u32);
                layers.push(Layer::Res(ResBlock::new(cfg, dim, d, vb.pp(layers.len()))?));
            }
            layers.push(Layer::Elu);
            let spec = conv(cfg, dim, dim * 2, ratio * 2, ratio);
            layers.push(Layer::Conv(StreamingConv1d::new(spec, vb.pp(layers.len()))?));
            dim *= 2;
        }
        layers.push(Layer::Elu);
        let spec = conv(cfg, dim, cfg.dimension, cfg.last_kernel_size, 1);
        layers.push(Layer::Conv(StreamingConv1d::new(spec, vb.pp(layers.len()))?));
        Ok(Self(Seanet { layers }))
    }

    /// Encode `x` [B, 1, T] (T a multiple of the hop), continuing `state`.
    pub fn forward(&self, x: &Tensor, state: &mut SeanetState) -> Result<Tensor> {
        self.0.forward(x, state)
    }
}

/// Latent [B, dimension, F] → waveform [B, 1, F · hop].
#[derive(Debug, Clone)]
pub struct SeanetDecoder(Seanet);

impl SeanetDecoder {
    /// `vb` points at `decoder`.
    pub fn new(cfg: &SeanetConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("model");
        let mut layers = Vec::new();
        let mut dim = cfg.n_filters << cfg.ratios.len();
        layers.push(Layer::Conv(StreamingConv1d::new(conv(cfg, cfg.dimension, dim, cfg.kernel_size, 1), vb.pp(0))?));
        for &ratio in &cfg.ratios {
            layers.push(Layer::Elu);
            let spec = conv(cfg, dim, dim / 2, ratio * 2, ratio);
            layers.push(Layer::ConvTr(StreamingConvTr1d::new(spec, 1, vb.pp(layers.len()))?));
            dim /= 2;
            for j in 0..cfg.n_residual_layers {
                let d = cfg.dilation_base.pow(j as u32);
                layers.push(Layer::Res(ResBlock::new(cfg, dim, d, vb.pp(layers.len()))?));
            }
        }
        layers.push(Layer::Elu);
        let spec = conv(cfg, dim, cfg.channels, cfg.last_kernel_size, 1);
        layers.push(Layer::Conv(StreamingConv1d::new(spec, vb.pp(layers.len()))?));
        Ok(Self(Seanet { layers }))
    }

    /// Decode `x` [B, dimension, F], continuing `state`.
    pub fn forward(&self, x: &Tensor, state: &mut SeanetState) -> Result<Tensor> {
        self.0.forward(x, state)
    }
}

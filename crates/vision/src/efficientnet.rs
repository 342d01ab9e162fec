//! EfficientNet-Lite0 (ImageNet-1k) in burn: the image tagger of the default library.
//!
//! Architecture (as `reference/efficientnet/reference.py` and the `efficientnet-lite0` PyTorch
//! checkpoint define it): a 3×3 stride-2 stem, 16 MBConv blocks without squeeze-excite, a 1×1
//! head to 1280 channels, global average pooling and a 1000-way linear layer; ReLU6 everywhere,
//! TensorFlow "SAME" padding (the extra row/column goes after), BatchNorm with eps 1e-3. The
//! BatchNorms are folded into the preceding convolutions at load time.
//!
//! | checkpoint tensor | here |
//! |---|---|
//! | `_conv_stem.weight`, `_bn0.*` | `stem` |
//! | `_blocks.N._expand_conv.weight`, `_blocks.N._bn0.*` | `blocks[N].expand` (absent in block 0) |
//! | `_blocks.N._depthwise_conv.weight`, `_blocks.N._bn1.*` | `blocks[N].depthwise` |
//! | `_blocks.N._project_conv.weight`, `_blocks.N._bn2.*` | `blocks[N].project` |
//! | `_conv_head.weight`, `_bn1.*` | `head` |
//! | `_fc.weight`, `_fc.bias` | `fc_weight`, `fc_bias` |

use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::PaddedConvOptions;
use burn::tensor::{Tensor, TensorData, activation};
use xcomposer_llm::weights::{WeightError, WeightSource};

/// One stage of MBConv blocks: `(expand ratio, kernel, first stride, in, out, repeats)`.
pub type Stage = (usize, usize, usize, usize, usize, usize);

/// The shape of an EfficientNet-Lite network.
#[derive(Debug, Clone, PartialEq)]
pub struct EfficientNetConfig {
    /// Stem output channels.
    pub stem: usize,
    /// The MBConv stages.
    pub stages: Vec<Stage>,
    /// Head channels (the pooled feature size).
    pub head: usize,
    /// Number of classes.
    pub classes: usize,
    /// BatchNorm epsilon.
    pub bn_eps: f64,
}

impl EfficientNetConfig {
    /// EfficientNet-Lite0.
    pub fn lite0() -> Self {
        Self {
            stem: 32,
            stages: vec![(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)],
            head: 1280,
            classes: 1000,
            bn_eps: 1e-3,
        }
    }
}

/// A convolution with its BatchNorm folded in.
#[derive(Debug, Clone)]
struct ConvBn<B: Backend> {
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    kernel: usize,
    stride: usize,
    groups: usize,
}

impl<B: Backend> ConvBn<B> {
    #[allow(clippy::too_many_arguments)]
    fn load(w: &dyn WeightSource, conv: &str, bn: &str, out: usize, inp: usize, kernel: usize, stride: usize, groups: usize, eps: f64, device: &B::Device) -> Result<Self, WeightError> {
        let cw = w.load_shaped(&format!("{conv}.weight"), &[out, inp / groups, kernel, kernel])?;
        let vec = |s: &str| w.load_shaped(&format!("{bn}.{s}"), &[out]).map(|t| t.data);
        let (g, b, m, v) = (vec("weight")?, vec("bias")?, vec("running_mean")?, vec("running_var")?);
        let per = cw.data.len() / out;
        let mut weight = cw.data;
        let mut bias = vec![0f32; out];
        for o in 0..out {
            let s = g[o] as f64 / (v[o] as f64 + eps).sqrt();
            for x in &mut weight[o * per..(o + 1) * per] {
                *x = (*x as f64 * s) as f32;
            }
            bias[o] = (b[o] as f64 - m[o] as f64 * s) as f32;
        }
        Ok(Self {
            weight: Tensor::from_data(TensorData::new(weight, [out, inp / groups, kernel, kernel]), device),
            bias: Tensor::from_data(TensorData::new(bias, [out]), device),
            kernel,
            stride,
            groups,
        })
    }

    /// Convolution with TensorFlow "SAME" padding.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let pad = |n: usize| {
            let out = n.div_ceil(self.stride);
            let total = ((out - 1) * self.stride + self.kernel).saturating_sub(n);
            (total / 2, total - total / 2)
        };
        let ((t, b), (l, r)) = (pad(h), pad(w));
        let opts = PaddedConvOptions::asymmetric([self.stride; 2], [t, l], [b, r], [1, 1], self.groups);
        conv2d(x, self.weight.clone(), Some(self.bias.clone()), opts)
    }
}

fn relu6<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    x.clamp(0.0, 6.0)
}

#[derive(Debug, Clone)]
struct MbConv<B: Backend> {
    expand: Option<ConvBn<B>>,
    depthwise: ConvBn<B>,
    project: ConvBn<B>,
    residual: bool,
}

/// EfficientNet-Lite0 with its weights.
#[derive(Debug, Clone)]
pub struct EfficientNet<B: Backend> {
    stem: ConvBn<B>,
    blocks: Vec<MbConv<B>>,
    head: ConvBn<B>,
    fc_weight: Tensor<B, 2>,
    fc_bias: Tensor<B, 1>,
    config: EfficientNetConfig,
}

/// What the network says about a batch of images.
#[derive(Debug, Clone)]
pub struct EfficientNetOutput<B: Backend> {
    /// Class logits `[batch, classes]`.
    pub logits: Tensor<B, 2>,
    /// Pooled features `[batch, head]`.
    pub features: Tensor<B, 2>,
}

impl<B: Backend> EfficientNet<B> {
    /// Loads the weights of a checkpoint with the original tensor names (see the module table).
    pub fn load(w: &dyn WeightSource, config: EfficientNetConfig, device: &B::Device) -> Result<Self, WeightError> {
        let eps = config.bn_eps;
        let stem = ConvBn::load(w, "_conv_stem", "_bn0", config.stem, 3, 3, 2, 1, eps, device)?;
        let mut blocks = vec![];
        for &(ratio, k, s, cin, cout, n) in &config.stages {
            for r in 0..n {
                let i = blocks.len();
                let (inp, stride) = if r == 0 { (cin, s) } else { (cout, 1) };
                let mid = inp * ratio;
                let p = format!("_blocks.{i}.");
                let expand = if ratio != 1 { Some(ConvBn::load(w, &format!("{p}_expand_conv"), &format!("{p}_bn0"), mid, inp, 1, 1, 1, eps, device)?) } else { None };
                let depthwise = ConvBn::load(w, &format!("{p}_depthwise_conv"), &format!("{p}_bn1"), mid, mid, k, stride, mid, eps, device)?;
                let project = ConvBn::load(w, &format!("{p}_project_conv"), &format!("{p}_bn2"), cout, mid, 1, 1, 1, eps, device)?;
                blocks.push(MbConv { expand, depthwise, project, residual: stride == 1 && inp == cout });
            }
        }
        let last = config.stages.last().map_or(config.stem, |s| s.4);
        let head = ConvBn::load(w, "_conv_head", "_bn1", config.head, last, 1, 1, 1, eps, device)?;
        let fw = w.load_shaped("_fc.weight", &[config.classes, config.head])?;
        let fb = w.load_shaped("_fc.bias", &[config.classes])?;
        Ok(Self {
            stem,
            blocks,
            head,
            fc_weight: Tensor::<B, 2>::from_data(TensorData::new(fw.data, fw.shape), device).transpose(),
            fc_bias: Tensor::from_data(TensorData::new(fb.data, fb.shape), device),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EfficientNetConfig {
        &self.config
    }

    /// Runs preprocessed images `[batch, 3, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> EfficientNetOutput<B> {
        let mut x = relu6(self.stem.forward(x));
        for b in &self.blocks {
            let input = x.clone();
            if let Some(e) = &b.expand {
                x = relu6(e.forward(x));
            }
            x = relu6(b.depthwise.forward(x));
            x = b.project.forward(x);
            if b.residual {
                x = x + input;
            }
        }
        let x = relu6(self.head.forward(x));
        let [n, c, h, w] = x.dims();
        let features = x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]);
        let logits = features.clone().matmul(self.fc_weight.clone()) + self.fc_bias.clone().unsqueeze::<2>();
        EfficientNetOutput { logits, features }
    }

    /// Class probabilities (softmax of the logits).
    pub fn probabilities(out: &EfficientNetOutput<B>) -> Tensor<B, 2> {
        activation::softmax(out.logits.clone(), 1)
    }
}

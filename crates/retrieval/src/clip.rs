//! CLIP (Hugging Face `CLIPModel` layout) in burn: the vision tower, the text tower and their
//! projections into the shared embedding space, with every size from `config.json`, so that
//! ViT-B/32, B/16, L/14 and L/14-336 load without code changes.
//!
//! | checkpoint tensor | here |
//! |---|---|
//! | `vision_model.embeddings.patch_embedding.weight` `[d, 3, p, p]` | `vision.patch` (as a matrix) |
//! | `vision_model.embeddings.{class_embedding, position_embedding.weight}` | `vision.class`, `vision.position` |
//! | `vision_model.pre_layrnorm.*` (sic), `vision_model.post_layernorm.*` | `vision.pre_norm`, `vision.post_norm` |
//! | `{vision,text}_model.encoder.layers.N.self_attn.{q,k,v,out}_proj.*` | `layers[N].{q,k,v,o}` |
//! | `{vision,text}_model.encoder.layers.N.layer_norm{1,2}.*` | `layers[N].{norm1,norm2}` |
//! | `{vision,text}_model.encoder.layers.N.mlp.fc{1,2}.*` | `layers[N].{fc1,fc2}` |
//! | `text_model.embeddings.{token,position}_embedding.weight` | `text.token`, `text.position` |
//! | `text_model.final_layer_norm.*` | `text.final_norm` |
//! | `visual_projection.weight`, `text_projection.weight` (no bias) | `visual_projection`, `text_projection` |
//! | `logit_scale` | `logit_scale` (its exp) |
//!
//! `*.position_ids` buffers, present in older files, are not used.

use std::path::{Path, PathBuf};

use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde_json::Value;
use xcomposer_llm::nn::{Dense, LayerNorm, multi_head_attention, to_device, transpose};
use xcomposer_llm::torch::TorchWeights;
use xcomposer_llm::weights::{SafetensorsWeights, WeightError, WeightSource};

/// Errors loading a CLIP folder.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// `config.json` is missing, malformed, or has a value this implementation does not support.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the field).
        reason: String,
    },
    /// A weight is missing or mis-shaped.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The tokenizer files are bad.
    #[error(transparent)]
    Tokenizer(#[from] crate::clip_tokenizer::ClipTokenizerError),
}

/// The activation of the feed-forward layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x·σ(1.702x)`, every OpenAI CLIP.
    QuickGelu,
    /// Exact-erf GELU.
    Gelu,
}

/// One tower's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct TowerConfig {
    /// Width.
    pub hidden_size: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

/// The vision tower's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// The transformer.
    pub tower: TowerConfig,
    /// Input side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels (3).
    pub num_channels: usize,
}

/// The text tower's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// The transformer.
    pub tower: TowerConfig,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length (77).
    pub max_position_embeddings: usize,
    /// The end-of-text id the pooled row is found by; 2 in legacy configs, which means
    /// "the largest id" (the same position for CLIP's vocabulary).
    pub eos_token_id: u32,
}

/// A `CLIPConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// The text tower.
    pub text: TextConfig,
    /// The vision tower.
    pub vision: VisionConfig,
    /// Shared embedding width.
    pub projection_dim: usize,
}

/// A tower's fields ([`xcomposer_llm::readers::fields`]: HF's default when absent, an error
/// naming the field when mistyped), with the file for the error.
struct Fields<'a> {
    f: xcomposer_llm::readers::fields::Fields<'a>,
    path: &'a Path,
}

impl Fields<'_> {
    fn wrap(&self, e: WeightError) -> ClipError {
        ClipError::Config { path: self.path.into(), reason: e.to_string() }
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize, ClipError> {
        self.f.positive_usize(key, default).map_err(|e| self.wrap(e))
    }

    fn activation(&self) -> Result<Activation, ClipError> {
        match self.f.one_of("hidden_act", &["quick_gelu", "gelu"]).map_err(|e| self.wrap(e))? {
            "gelu" => Ok(Activation::Gelu),
            _ => Ok(Activation::QuickGelu),
        }
    }

    fn tower(&self, d: TowerConfig) -> Result<TowerConfig, ClipError> {
        let t = TowerConfig {
            hidden_size: self.usize("hidden_size", d.hidden_size)?,
            intermediate_size: self.usize("intermediate_size", d.intermediate_size)?,
            num_hidden_layers: self.usize("num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: self.usize("num_attention_heads", d.num_attention_heads)?,
            hidden_act: self.activation()?,
            layer_norm_eps: self.f.positive_f64("layer_norm_eps", d.layer_norm_eps).map_err(|e| self.wrap(e))?,
        };
        if !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(self.wrap(self.f.err("num_attention_heads", format!("is {}, which does not divide hidden_size {}", t.num_attention_heads, t.hidden_size))));
        }
        Ok(t)
    }
}

impl ClipConfig {
    /// Reads a `config.json` (`model_type` "clip"; the tower configs under `text_config` /
    /// `vision_config`, or the older `*_config_dict`); absent fields take HF's defaults.
    pub fn from_file(path: &Path) -> Result<Self, ClipError> {
        let err = |reason: String| ClipError::Config { path: path.into(), reason };
        let v = xcomposer_llm::readers::fields::read_json(path).map_err(err)?;
        match v.get("model_type").and_then(Value::as_str) {
            Some("clip") | None => {}
            Some(other) => return Err(err(format!("model_type is {other:?}; expected \"clip\""))),
        }
        let sub = |a: &str, b: &str| v.get(a).filter(|x| x.is_object()).or_else(|| v.get(b).filter(|x| x.is_object())).cloned().unwrap_or(Value::Object(Default::default()));
        let (tv, vv) = (sub("text_config", "text_config_dict"), sub("vision_config", "vision_config_dict"));
        let fields = |obj, prefix| Fields { f: xcomposer_llm::readers::fields::Fields::new(obj, prefix), path };
        let (tf, vf, top) = (fields(&tv, "text_config."), fields(&vv, "vision_config."), fields(&v, ""));
        let text = TextConfig {
            tower: tf.tower(TowerConfig { hidden_size: 512, intermediate_size: 2048, num_hidden_layers: 12, num_attention_heads: 8, hidden_act: Activation::QuickGelu, layer_norm_eps: 1e-5 })?,
            vocab_size: tf.usize("vocab_size", 49408)?,
            max_position_embeddings: tf.usize("max_position_embeddings", 77)?,
            eos_token_id: tf.usize("eos_token_id", 2)? as u32,
        };
        let vision = VisionConfig {
            tower: vf.tower(TowerConfig { hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_attention_heads: 12, hidden_act: Activation::QuickGelu, layer_norm_eps: 1e-5 })?,
            image_size: vf.usize("image_size", 224)?,
            patch_size: vf.usize("patch_size", 32)?,
            num_channels: vf.usize("num_channels", 3)?,
        };
        if !vision.image_size.is_multiple_of(vision.patch_size) {
            return Err(err(format!("vision_config.patch_size {} does not divide image_size {}", vision.patch_size, vision.image_size)));
        }
        if vision.num_channels != 3 {
            return Err(err(format!("vision_config.num_channels is {}; expected 3 (RGB)", vision.num_channels)));
        }
        Ok(ClipConfig { text, vision, projection_dim: top.usize("projection_dim", 512)? })
    }
}

/// A pre-norm transformer block: `x + o(attn(ln1 x))`, then `x + fc2(act(fc1(ln2 x)))`.
#[derive(Debug, Clone)]
struct Block<B: Backend> {
    norm1: LayerNorm<B>,
    q: Dense<B>,
    k: Dense<B>,
    v: Dense<B>,
    o: Dense<B>,
    norm2: LayerNorm<B>,
    fc1: Dense<B>,
    fc2: Dense<B>,
    heads: usize,
    act: Activation,
}

impl<B: Backend> Block<B> {
    fn load(src: &dyn WeightSource, p: &str, c: &TowerConfig, dev: &B::Device) -> Result<Self, WeightError> {
        let (d, f) = (c.hidden_size, c.intermediate_size);
        Ok(Block {
            norm1: LayerNorm::load(src, &format!("{p}.layer_norm1"), d, c.layer_norm_eps, dev)?,
            q: Dense::load(src, &format!("{p}.self_attn.q_proj"), d, d, true, dev)?,
            k: Dense::load(src, &format!("{p}.self_attn.k_proj"), d, d, true, dev)?,
            v: Dense::load(src, &format!("{p}.self_attn.v_proj"), d, d, true, dev)?,
            o: Dense::load(src, &format!("{p}.self_attn.out_proj"), d, d, true, dev)?,
            norm2: LayerNorm::load(src, &format!("{p}.layer_norm2"), d, c.layer_norm_eps, dev)?,
            fc1: Dense::load(src, &format!("{p}.mlp.fc1"), d, f, true, dev)?,
            fc2: Dense::load(src, &format!("{p}.mlp.fc2"), f, d, true, dev)?,
            heads: c.num_attention_heads,
            act: c.hidden_act,
        })
    }

    fn forward(&self, x: Tensor<B, 3>, mask: Option<Tensor<B, 4, Bool>>) -> Tensor<B, 3> {
        let h = self.norm1.forward(x.clone());
        let a = multi_head_attention(self.q.forward(h.clone()), self.k.forward(h.clone()), self.v.forward(h), self.heads, mask);
        let x = x + self.o.forward(a);
        let h = self.fc1.forward(self.norm2.forward(x.clone()));
        let h = match self.act {
            Activation::QuickGelu => h.clone() * sigmoid(h * 1.702),
            Activation::Gelu => gelu(h),
        };
        x + self.fc2.forward(h)
    }
}

fn blocks<B: Backend>(src: &dyn WeightSource, prefix: &str, c: &TowerConfig, dev: &B::Device) -> Result<Vec<Block<B>>, WeightError> {
    (0..c.num_hidden_layers).map(|i| Block::load(src, &format!("{prefix}.encoder.layers.{i}"), c, dev)).collect()
}

/// The vision tower: patches → class token + position embeddings → pre-LN → blocks → post-LN
/// on the class token.
#[derive(Debug, Clone)]
pub struct ClipVision<B: Backend> {
    patch: Tensor<B, 2>,
    class: Tensor<B, 1>,
    position: Tensor<B, 2>,
    pre_norm: LayerNorm<B>,
    layers: Vec<Block<B>>,
    post_norm: LayerNorm<B>,
    config: VisionConfig,
}

impl<B: Backend> ClipVision<B> {
    fn load(src: &dyn WeightSource, c: &VisionConfig, dev: &B::Device) -> Result<Self, WeightError> {
        let (d, p) = (c.tower.hidden_size, c.patch_size);
        let grid = c.image_size / p;
        let w = src.load_shaped("vision_model.embeddings.patch_embedding.weight", &[d, 3, p, p])?;
        let k = 3 * p * p;
        let patch = Tensor::from_data(TensorData::new(transpose(&w.data, d, k), [k, d]), dev);
        Ok(ClipVision {
            patch,
            class: to_device(src.load_shaped("vision_model.embeddings.class_embedding", &[d])?, dev),
            position: to_device(src.load_shaped("vision_model.embeddings.position_embedding.weight", &[grid * grid + 1, d])?, dev),
            pre_norm: LayerNorm::load(src, "vision_model.pre_layrnorm", d, c.tower.layer_norm_eps, dev)?,
            layers: blocks(src, "vision_model", &c.tower, dev)?,
            post_norm: LayerNorm::load(src, "vision_model.post_layernorm", d, c.tower.layer_norm_eps, dev)?,
            config: c.clone(),
        })
    }

    /// The encoder input (after the pre-LN) and the output of each layer, `[n, tokens, d]`.
    pub fn hidden_states(&self, pixels: Tensor<B, 4>) -> Vec<Tensor<B, 3>> {
        let [n, ch, h, w] = pixels.dims();
        let p = self.config.patch_size;
        assert!(ch == 3 && h == self.config.image_size && w == self.config.image_size, "pixels must be [n, 3, {s}, {s}], got {:?}", [n, ch, h, w], s = self.config.image_size);
        let g = h / p;
        let d = self.config.tower.hidden_size;
        // The stride-p convolution as one matrix product over (channel, row, column) patches.
        let patches = pixels.reshape([n, 3, g, p, g, p]).permute([0, 2, 4, 1, 3, 5]).reshape([n, g * g, 3 * p * p]);
        let x = patches.matmul(self.patch.clone().unsqueeze_dim(0));
        let class = self.class.clone().reshape([1, 1, d]).expand([n, 1, d]);
        let x = Tensor::cat(vec![class, x], 1) + self.position.clone().unsqueeze_dim(0);
        let mut x = self.pre_norm.forward(x);
        let mut out = vec![x.clone()];
        for l in &self.layers {
            x = l.forward(x, None);
            out.push(x.clone());
        }
        out
    }

    /// The pooled output, `post_layernorm` of the class token: `[n, d]`.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        let last = self.hidden_states(pixels).pop().expect("at least the embeddings");
        let [n, _, d] = last.dims();
        self.post_norm.forward(last.slice([0..n, 0..1, 0..d])).reshape([n, d])
    }
}

/// The text tower: token + position embeddings → causal blocks → final LN → the row of the
/// end-of-text token.
#[derive(Debug, Clone)]
pub struct ClipText<B: Backend> {
    token: Tensor<B, 2>,
    position: Tensor<B, 2>,
    layers: Vec<Block<B>>,
    final_norm: LayerNorm<B>,
    config: TextConfig,
}

impl<B: Backend> ClipText<B> {
    fn load(src: &dyn WeightSource, c: &TextConfig, dev: &B::Device) -> Result<Self, WeightError> {
        let d = c.tower.hidden_size;
        Ok(ClipText {
            token: to_device(src.load_shaped("text_model.embeddings.token_embedding.weight", &[c.vocab_size, d])?, dev),
            position: to_device(src.load_shaped("text_model.embeddings.position_embedding.weight", &[c.max_position_embeddings, d])?, dev),
            layers: blocks(src, "text_model", &c.tower, dev)?,
            final_norm: LayerNorm::load(src, "text_model.final_layer_norm", d, c.tower.layer_norm_eps, dev)?,
            config: c.clone(),
        })
    }

    /// The embeddings and the output of each layer (before the final LN), `[m, len, d]`;
    /// `mask` holds 1 for real tokens (padding is masked as keys, on top of the causal mask).
    pub fn hidden_states(&self, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Vec<Tensor<B, 3>> {
        let dev = self.token.device();
        let (m, len) = (ids.len(), ids.first().map_or(0, Vec::len));
        assert!(len <= self.config.max_position_embeddings && ids.iter().all(|r| r.len() == len), "ids must be rows of one length ≤ {}", self.config.max_position_embeddings);
        let d = self.config.tower.hidden_size;
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i64::from(i).min(self.config.vocab_size as i64 - 1)).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [m * len]), &dev);
        let x = self.token.clone().select(0, idx).reshape([m, len, d]) + self.position.clone().slice([0..len, 0..d]).unsqueeze_dim(0);
        let mut allowed = Vec::with_capacity(m * len * len);
        for row in mask {
            for q in 0..len {
                allowed.extend((0..len).map(|k| k > q || row.get(k).is_some_and(|&v| v == 0)));
            }
        }
        let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(allowed, [m, 1, len, len]), &dev);
        let mut x = x;
        let mut out = vec![x.clone()];
        for l in &self.layers {
            x = l.forward(x, Some(mask.clone()));
            out.push(x.clone());
        }
        out
    }

    /// The row each caption is pooled at: the first end-of-text token (the largest id for
    /// legacy configs whose `eos_token_id` is 2).
    pub fn pooled_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        ids.iter()
            .map(|r| {
                if self.config.eos_token_id == 2 {
                    r.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0))).map_or(0, |(i, _)| i)
                } else {
                    r.iter().position(|&t| t == self.config.eos_token_id).unwrap_or(r.len().saturating_sub(1))
                }
            })
            .collect()
    }

    /// The pooled output, `[m, d]`.
    pub fn forward(&self, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Tensor<B, 2> {
        let last = self.final_norm.forward(self.hidden_states(ids, mask).pop().expect("at least the embeddings"));
        let [m, len, d] = last.dims();
        let rows: Vec<i64> = self.pooled_positions(ids).iter().enumerate().map(|(i, &p)| (i * len + p) as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [m]), &last.device());
        last.reshape([m * len, d]).select(0, idx)
    }
}

/// A CLIP dual encoder.
#[derive(Debug, Clone)]
pub struct Clip<B: Backend> {
    /// Sizes.
    pub config: ClipConfig,
    /// The image encoder.
    pub vision: ClipVision<B>,
    /// The text encoder.
    pub text: ClipText<B>,
    visual_projection: Dense<B>,
    text_projection: Dense<B>,
    /// `exp(logit_scale)`.
    pub logit_scale: f32,
}

/// Opens the weights of a HF folder: `model.safetensors` (or its index), else `pytorch_model.bin`
/// (or its index).
pub fn open_weights(dir: &Path) -> Result<Box<dyn WeightSource>, WeightError> {
    if dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists() {
        Ok(Box::new(SafetensorsWeights::open(dir)?))
    } else if dir.join("pytorch_model.bin").exists() || dir.join("pytorch_model.bin.index.json").exists() {
        Ok(Box::new(TorchWeights::open_dir(dir)?))
    } else {
        Err(WeightError::File { path: dir.into(), reason: "no model.safetensors or pytorch_model.bin (a Hugging Face CLIP folder is expected)".into() })
    }
}

impl<B: Backend> Clip<B> {
    /// Loads a Hugging Face CLIP folder (`config.json` + weights).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, ClipError> {
        let config = ClipConfig::from_file(&dir.join("config.json"))?;
        let src = open_weights(dir)?;
        Self::from_weights(config, src.as_ref(), device)
    }

    /// Builds the model from a configuration and a weight source.
    pub fn from_weights(config: ClipConfig, src: &dyn WeightSource, device: &B::Device) -> Result<Self, ClipError> {
        let (dv, dt, e) = (config.vision.tower.hidden_size, config.text.tower.hidden_size, config.projection_dim);
        let scale = src.load_shaped("logit_scale", &[])?;
        Ok(Clip {
            vision: ClipVision::load(src, &config.vision, device)?,
            text: ClipText::load(src, &config.text, device)?,
            visual_projection: Dense::load(src, "visual_projection", dv, e, false, device)?,
            text_projection: Dense::load(src, "text_projection", dt, e, false, device)?,
            logit_scale: scale.data[0].exp(),
            config,
        })
    }

    /// The device the model lives on.
    pub fn vision_device(&self) -> B::Device {
        self.vision.patch.device()
    }

    /// Unnormalised image features `[n, projection_dim]` from `[n, 3, S, S]` pixel values.
    pub fn image_features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        self.visual_projection.forward(self.vision.forward(pixels).unsqueeze_dim(0)).squeeze_dim(0)
    }

    /// Unnormalised text features `[m, projection_dim]` from token ids and their mask.
    pub fn text_features(&self, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Tensor<B, 2> {
        self.text_projection.forward(self.text.forward(ids, mask).unsqueeze_dim(0)).squeeze_dim(0)
    }
}

/// Rows divided by their L2 norm.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
    x / norm
}

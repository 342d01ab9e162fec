//! InternLM-XComposer v1's image encoder in burn: EVA-CLIP ViT-g ([`EvaVit`]), `ln_vision`, the
//! perceive sampler (a BLIP-2 Q-Former, [`PerceiveSampler`]), `internlm_proj` and the start/end
//! image flags ([`XComposerVisual`]): an image becomes `num_query_token + 2` LLM embeddings.
//! Sizes come from `config.json` (`vit_*`, `qformer_*`, `ln_vision_eps`, `num_query_token`,
//! `hidden_size`), defaulting to the real 7B model's hard-coded values.
//!
//! | checkpoint tensor | here |
//! |---|---|
//! | `visual_encoder.patch_embed.proj.{weight,bias}` `[d, 3, 14, 14]` | `vit.patch` (as a matrix), `vit.patch_bias` |
//! | `visual_encoder.{cls_token, pos_embed}` | `vit.cls`, `vit.pos` |
//! | `visual_encoder.blocks.N.norm{1,2}.*` | `vit.blocks[N].norm{1,2}` |
//! | `visual_encoder.blocks.N.attn.qkv.weight`, `….q_bias`, `….v_bias` | `vit.blocks[N].qkv` (bias `[q_bias, 0, v_bias]`) |
//! | `visual_encoder.blocks.N.attn.proj.*`, `….mlp.fc{1,2}.*` | `vit.blocks[N].{proj, fc1, fc2}` |
//! | `ln_vision.*` | `ln_vision` |
//! | `query_tokens` `[1, q, h]`, `Qformer.bert.embeddings.LayerNorm.*` | `sampler.queries`, `sampler.embed_norm` |
//! | `Qformer.bert.encoder.layer.N.attention.{self.{query,key,value}, output.{dense, LayerNorm}}.*` | `sampler.layers[N].self_*` |
//! | `Qformer.bert.encoder.layer.N.crossattention.…` (even N) | `sampler.layers[N].cross_*` |
//! | `Qformer.bert.encoder.layer.N.{intermediate_query.dense, output_query.{dense, LayerNorm}}.*` | `sampler.layers[N].{up, down, ffn_norm}` |
//! | `internlm_proj.*`, `flag_image_{start,end}` `[1, 1, H]` | `proj`, `flag_start`, `flag_end` |
//!
//! `Qformer.bert.embeddings.position_ids` and the Q-Former's text-side weights are not used.

use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde_json::Value;
use xcomposer_llm::nn::{Dense, LayerNorm, multi_head_attention, to_device, transpose};
use xcomposer_llm::weights::{HostTensor, WeightError, WeightSource};

/// The image encoder's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct VisualConfig {
    /// Input side in pixels.
    pub img_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// ViT width.
    pub vit_dim: usize,
    /// ViT blocks.
    pub vit_depth: usize,
    /// ViT heads.
    pub vit_heads: usize,
    /// ViT MLP width (`int(dim · mlp_ratio)`).
    pub vit_mlp: usize,
    /// ViT LayerNorm epsilon.
    pub vit_eps: f64,
    /// `ln_vision` epsilon.
    pub ln_vision_eps: f64,
    /// Q-Former width.
    pub q_dim: usize,
    /// Q-Former layers.
    pub q_layers: usize,
    /// Q-Former heads.
    pub q_heads: usize,
    /// Q-Former feed-forward width.
    pub q_mlp: usize,
    /// Cross-attention every this many layers (from layer 0).
    pub q_cross_freq: usize,
    /// Q-Former LayerNorm epsilon.
    pub q_eps: f64,
    /// Learned queries.
    pub num_query: usize,
    /// LLM width.
    pub llm_dim: usize,
}

impl VisualConfig {
    /// Reads the sizes from an InternLM-XComposer `config.json` value; `name` is used in errors.
    pub fn from_json(v: &Value, name: &str) -> Result<Self, String> {
        let fields = xcomposer_llm::readers::fields::Fields::new(v, "");
        let u = |k: &str, d: usize| fields.positive_usize(k, d).map_err(|e| format!("{name}: {e}"));
        let f = |k: &str, d: f64| fields.positive_f64(k, d).map_err(|e| format!("{name}: {e}"));
        fields.one_of("qformer_hidden_act", &["gelu"]).map_err(|e| format!("{name}: {e}"))?;
        let vit_dim = u("vit_embed_dim", 1408)?;
        let c = VisualConfig {
            img_size: u("vit_img_size", 224)?,
            patch_size: u("vit_patch_size", 14)?,
            vit_dim,
            vit_depth: u("vit_depth", 39)?,
            vit_heads: u("vit_num_heads", 16)?,
            vit_mlp: (vit_dim as f64 * f("vit_mlp_ratio", 4.3637)?) as usize,
            vit_eps: f("vit_layer_norm_eps", 1e-6)?,
            ln_vision_eps: f("ln_vision_eps", 1e-5)?,
            q_dim: u("qformer_hidden_size", 768)?,
            q_layers: u("qformer_num_hidden_layers", 12)?,
            q_heads: u("qformer_num_attention_heads", 12)?,
            q_mlp: u("qformer_intermediate_size", 3072)?,
            q_cross_freq: u("qformer_cross_attention_freq", 2)?,
            q_eps: f("qformer_layer_norm_eps", 1e-12)?,
            num_query: u("num_query_token", 64)?,
            llm_dim: u("hidden_size", 4096)?,
        };
        if !c.img_size.is_multiple_of(c.patch_size) {
            return Err(format!("{name}: vit_patch_size {} does not divide vit_img_size {}", c.patch_size, c.img_size));
        }
        for (k, d, h) in [("vit_num_heads", c.vit_dim, c.vit_heads), ("qformer_num_attention_heads", c.q_dim, c.q_heads)] {
            if !d.is_multiple_of(h) {
                return Err(format!("{name}: {k} {h} does not divide the width {d}"));
            }
        }
        Ok(c)
    }

    /// LLM positions per image: the queries and the two flags.
    pub fn tokens_per_image(&self) -> usize {
        self.num_query + 2
    }
}

fn reshaped(t: HostTensor, shape: &[usize]) -> HostTensor {
    HostTensor { data: t.data, shape: shape.to_vec() }
}

/// One EVA block: pre-LN attention (qkv without a k bias) and a GELU MLP, no layer scale.
#[derive(Debug, Clone)]
struct VitBlock<B: Backend> {
    norm1: LayerNorm<B>,
    qkv_w: Tensor<B, 2>,
    qkv_b: Tensor<B, 1>,
    proj: Dense<B>,
    norm2: LayerNorm<B>,
    fc1: Dense<B>,
    fc2: Dense<B>,
    heads: usize,
}

impl<B: Backend> VitBlock<B> {
    fn load(src: &dyn WeightSource, p: &str, c: &VisualConfig, dev: &B::Device) -> Result<Self, WeightError> {
        let d = c.vit_dim;
        let w = src.load_shaped(&format!("{p}.attn.qkv.weight"), &[3 * d, d])?;
        let qb = src.load_shaped(&format!("{p}.attn.q_bias"), &[d])?;
        let vb = src.load_shaped(&format!("{p}.attn.v_bias"), &[d])?;
        let bias: Vec<f32> = qb.data.iter().copied().chain(std::iter::repeat_n(0.0, d)).chain(vb.data.iter().copied()).collect();
        Ok(VitBlock {
            norm1: LayerNorm::load(src, &format!("{p}.norm1"), d, c.vit_eps, dev)?,
            qkv_w: Tensor::from_data(TensorData::new(transpose(&w.data, 3 * d, d), [d, 3 * d]), dev),
            qkv_b: Tensor::from_data(TensorData::new(bias, [3 * d]), dev),
            proj: Dense::load(src, &format!("{p}.attn.proj"), d, d, true, dev)?,
            norm2: LayerNorm::load(src, &format!("{p}.norm2"), d, c.vit_eps, dev)?,
            fc1: Dense::load(src, &format!("{p}.mlp.fc1"), d, c.vit_mlp, true, dev)?,
            fc2: Dense::load(src, &format!("{p}.mlp.fc2"), c.vit_mlp, d, true, dev)?,
            heads: c.vit_heads,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let h = self.norm1.forward(x.clone());
        let qkv = h.matmul(self.qkv_w.clone().unsqueeze_dim(0)) + self.qkv_b.clone().unsqueeze_dims::<3>(&[0, 0]);
        let q = qkv.clone().slice([0..b, 0..n, 0..d]);
        let k = qkv.clone().slice([0..b, 0..n, d..2 * d]);
        let v = qkv.slice([0..b, 0..n, 2 * d..3 * d]);
        let x = x + self.proj.forward(multi_head_attention(q, k, v, self.heads, None));
        let h = self.fc2.forward(gelu(self.fc1.forward(self.norm2.forward(x.clone()))));
        x + h
    }
}

/// EVA-CLIP ViT: patch embedding, class token, learned positions, pre-LN blocks, no final norm.
#[derive(Debug, Clone)]
pub struct EvaVit<B: Backend> {
    patch: Tensor<B, 2>,
    patch_bias: Tensor<B, 1>,
    cls: Tensor<B, 1>,
    pos: Tensor<B, 2>,
    blocks: Vec<VitBlock<B>>,
    config: VisualConfig,
}

impl<B: Backend> EvaVit<B> {
    /// Loads `visual_encoder.*`.
    pub fn load(src: &dyn WeightSource, c: &VisualConfig, dev: &B::Device) -> Result<Self, WeightError> {
        let (d, p) = (c.vit_dim, c.patch_size);
        let n = (c.img_size / p).pow(2);
        let w = src.load_shaped("visual_encoder.patch_embed.proj.weight", &[d, 3, p, p])?;
        Ok(EvaVit {
            patch: Tensor::from_data(TensorData::new(transpose(&w.data, d, 3 * p * p), [3 * p * p, d]), dev),
            patch_bias: to_device(src.load_shaped("visual_encoder.patch_embed.proj.bias", &[d])?, dev),
            cls: to_device(reshaped(src.load_shaped("visual_encoder.cls_token", &[1, 1, d])?, &[d]), dev),
            pos: to_device(reshaped(src.load_shaped("visual_encoder.pos_embed", &[1, n + 1, d])?, &[n + 1, d]), dev),
            blocks: (0..c.vit_depth).map(|i| VitBlock::load(src, &format!("visual_encoder.blocks.{i}"), c, dev)).collect::<Result<_, _>>()?,
            config: c.clone(),
        })
    }

    /// The embedding (block 0's input) and each block's output, `[b, 1 + patches, d]`.
    pub fn hidden_states(&self, pixels: Tensor<B, 4>) -> Vec<Tensor<B, 3>> {
        let [b, _, h, _] = pixels.dims();
        let p = self.config.patch_size;
        let (g, d) = (h / p, self.config.vit_dim);
        let patches = pixels.reshape([b, 3, g, p, g, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b, g * g, 3 * p * p]);
        let x = patches.matmul(self.patch.clone().unsqueeze_dim(0)) + self.patch_bias.clone().unsqueeze_dims::<3>(&[0, 0]);
        let cls = self.cls.clone().reshape([1, 1, d]).expand([b, 1, d]);
        let mut x = Tensor::cat(vec![cls, x], 1) + self.pos.clone().unsqueeze_dim(0);
        let mut out = vec![x.clone()];
        for blk in &self.blocks {
            x = blk.forward(x);
            out.push(x.clone());
        }
        out
    }

    /// The last block's output.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        self.hidden_states(pixels).pop().expect("the embedding at least")
    }
}

/// Attention with BERT's names: `{p}.self.{query,key,value}`, `{p}.output.{dense,LayerNorm}`.
#[derive(Debug, Clone)]
struct BertAttention<B: Backend> {
    q: Dense<B>,
    k: Dense<B>,
    v: Dense<B>,
    out: Dense<B>,
    norm: LayerNorm<B>,
    heads: usize,
}

impl<B: Backend> BertAttention<B> {
    fn load(src: &dyn WeightSource, p: &str, kv_dim: usize, c: &VisualConfig, dev: &B::Device) -> Result<Self, WeightError> {
        let h = c.q_dim;
        Ok(BertAttention {
            q: Dense::load(src, &format!("{p}.self.query"), h, h, true, dev)?,
            k: Dense::load(src, &format!("{p}.self.key"), kv_dim, h, true, dev)?,
            v: Dense::load(src, &format!("{p}.self.value"), kv_dim, h, true, dev)?,
            out: Dense::load(src, &format!("{p}.output.dense"), h, h, true, dev)?,
            norm: LayerNorm::load(src, &format!("{p}.output.LayerNorm"), h, c.q_eps, dev)?,
            heads: c.q_heads,
        })
    }

    /// `LN(x + dense(attn(q = x, k = v = kv)))`.
    fn forward(&self, x: Tensor<B, 3>, kv: Tensor<B, 3>) -> Tensor<B, 3> {
        let a = multi_head_attention(self.q.forward(x.clone()), self.k.forward(kv.clone()), self.v.forward(kv), self.heads, None);
        self.norm.forward(x + self.out.forward(a))
    }
}

/// One Q-Former layer, query side only.
#[derive(Debug, Clone)]
struct SamplerLayer<B: Backend> {
    attn: BertAttention<B>,
    cross: Option<BertAttention<B>>,
    up: Dense<B>,
    down: Dense<B>,
    ffn_norm: LayerNorm<B>,
}

/// The perceive sampler: BLIP-2's Q-Former run on learned queries only (post-LN BERT layers,
/// cross-attention to the image every `q_cross_freq` layers, the query feed-forward).
#[derive(Debug, Clone)]
pub struct PerceiveSampler<B: Backend> {
    queries: Tensor<B, 2>,
    embed_norm: LayerNorm<B>,
    layers: Vec<SamplerLayer<B>>,
}

impl<B: Backend> PerceiveSampler<B> {
    /// Loads `query_tokens` and `Qformer.bert.*`.
    pub fn load(src: &dyn WeightSource, c: &VisualConfig, dev: &B::Device) -> Result<Self, WeightError> {
        let h = c.q_dim;
        let mut layers = vec![];
        for i in 0..c.q_layers {
            let p = format!("Qformer.bert.encoder.layer.{i}");
            layers.push(SamplerLayer {
                attn: BertAttention::load(src, &format!("{p}.attention"), h, c, dev)?,
                cross: if i.is_multiple_of(c.q_cross_freq) { Some(BertAttention::load(src, &format!("{p}.crossattention"), c.vit_dim, c, dev)?) } else { None },
                up: Dense::load(src, &format!("{p}.intermediate_query.dense"), h, c.q_mlp, true, dev)?,
                down: Dense::load(src, &format!("{p}.output_query.dense"), c.q_mlp, h, true, dev)?,
                ffn_norm: LayerNorm::load(src, &format!("{p}.output_query.LayerNorm"), h, c.q_eps, dev)?,
            });
        }
        Ok(PerceiveSampler {
            queries: to_device(reshaped(src.load_shaped("query_tokens", &[1, c.num_query, h])?, &[c.num_query, h]), dev),
            embed_norm: LayerNorm::load(src, "Qformer.bert.embeddings.LayerNorm", h, c.q_eps, dev)?,
            layers,
        })
    }

    /// `LN(queries)` and each layer's output, `[b, queries, q_dim]`, given the image tokens.
    pub fn hidden_states(&self, image: Tensor<B, 3>) -> Vec<Tensor<B, 3>> {
        let b = image.dims()[0];
        let [q, h] = self.queries.dims();
        let mut x = self.embed_norm.forward(self.queries.clone().unsqueeze_dim::<3>(0).expand([b, q, h]));
        let mut out = vec![x.clone()];
        for l in &self.layers {
            x = l.attn.forward(x.clone(), x);
            if let Some(cross) = &l.cross {
                x = cross.forward(x, image.clone());
            }
            x = l.ffn_norm.forward(x.clone() + l.down.forward(gelu(l.up.forward(x))));
            out.push(x.clone());
        }
        out
    }
}

/// The whole image path: ViT → `ln_vision` → sampler → `internlm_proj` → `[start; …; end]`.
#[derive(Debug, Clone)]
pub struct XComposerVisual<B: Backend> {
    /// The ViT.
    pub vit: EvaVit<B>,
    ln_vision: LayerNorm<B>,
    /// The Q-Former.
    pub sampler: PerceiveSampler<B>,
    proj: Dense<B>,
    flag_start: Tensor<B, 2>,
    flag_end: Tensor<B, 2>,
    /// Sizes.
    pub config: VisualConfig,
}

/// Every stage's output for one batch, for parity checks.
#[derive(Debug, Clone)]
pub struct VisualTrace<B: Backend> {
    /// Embedding + each ViT block.
    pub vit: Vec<Tensor<B, 3>>,
    /// After `ln_vision`.
    pub ln_vision: Tensor<B, 3>,
    /// `LN(queries)` + each Q-Former layer.
    pub sampler: Vec<Tensor<B, 3>>,
    /// After `internlm_proj`.
    pub proj: Tensor<B, 3>,
    /// The image's LLM embeddings, flags included.
    pub embeds: Tensor<B, 3>,
}

impl<B: Backend> XComposerVisual<B> {
    /// Loads the image encoder from an XComposer checkpoint.
    pub fn load(src: &dyn WeightSource, c: &VisualConfig, dev: &B::Device) -> Result<Self, WeightError> {
        let flag = |name: &str| -> Result<Tensor<B, 2>, WeightError> { Ok(to_device(reshaped(src.load_shaped(name, &[1, 1, c.llm_dim])?, &[1, c.llm_dim]), dev)) };
        Ok(XComposerVisual {
            vit: EvaVit::load(src, c, dev)?,
            ln_vision: LayerNorm::load(src, "ln_vision", c.vit_dim, c.ln_vision_eps, dev)?,
            sampler: PerceiveSampler::load(src, c, dev)?,
            proj: Dense::load(src, "internlm_proj", c.q_dim, c.llm_dim, true, dev)?,
            flag_start: flag("flag_image_start")?,
            flag_end: flag("flag_image_end")?,
            config: c.clone(),
        })
    }

    /// Every intermediate output for `[b, 3, S, S]` pixels.
    pub fn trace(&self, pixels: Tensor<B, 4>) -> VisualTrace<B> {
        let b = pixels.dims()[0];
        let vit = self.vit.hidden_states(pixels);
        let ln_vision = self.ln_vision.forward(vit.last().expect("embedding").clone());
        let sampler = self.sampler.hidden_states(ln_vision.clone());
        let proj = self.proj.forward(sampler.last().expect("queries").clone());
        let d = self.config.llm_dim;
        let embeds = Tensor::cat(vec![self.flag_start.clone().unsqueeze_dim::<3>(0).expand([b, 1, d]), proj.clone(), self.flag_end.clone().unsqueeze_dim::<3>(0).expand([b, 1, d])], 1);
        VisualTrace { vit, ln_vision, sampler, proj, embeds }
    }

    /// The images' LLM embeddings, `[b, num_query + 2, llm_dim]`.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        self.trace(pixels).embeds
    }
}

//! BERT encoder (Hugging Face `BertModel` layout) in burn: the body of the MiniLM sentence
//! embedder. Post-LayerNorm blocks, exact-erf GELU, absolute position embeddings.
//!
//! | checkpoint tensor | here |
//! |---|---|
//! | `embeddings.{word,position,token_type}_embeddings.weight` | `word`, `position`, `token_type` |
//! | `embeddings.LayerNorm.*` | `embed_norm` |
//! | `encoder.layer.N.attention.self.{query,key,value}.*` | `layers[N].{q,k,v}` |
//! | `encoder.layer.N.attention.output.dense.*`, `….LayerNorm.*` | `layers[N].attn_out`, `attn_norm` |
//! | `encoder.layer.N.intermediate.dense.*` | `layers[N].up` |
//! | `encoder.layer.N.output.dense.*`, `….LayerNorm.*` | `layers[N].down`, `ffn_norm` |
//!
//! `pooler.*` and `embeddings.position_ids` are not used.

use std::path::Path;

use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Deserialize;
use xcomposer_llm::nn::{Dense, LayerNorm, multi_head_attention, padding_mask, to_device};
use xcomposer_llm::weights::{WeightError, WeightSource};

/// The fields of a BERT `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Longest input.
    pub max_position_embeddings: usize,
    /// Segment vocabulary.
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    /// Activation; only `gelu` (exact) is supported.
    #[serde(default = "gelu_name")]
    pub hidden_act: String,
    /// Position embedding kind; only `absolute` is supported.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}
fn gelu_name() -> String {
    "gelu".into()
}
fn absolute() -> String {
    "absolute".into()
}

/// Errors of the config file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let c: Self = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if c.hidden_act != "gelu" {
            return Err(err(format!("\"hidden_act\" is {:?}; only \"gelu\" is supported", c.hidden_act)));
        }
        if c.position_embedding_type != "absolute" {
            return Err(err(format!("\"position_embedding_type\" is {:?}; only \"absolute\" is supported", c.position_embedding_type)));
        }
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(err(format!("\"hidden_size\" {} is not a multiple of \"num_attention_heads\" {}", c.hidden_size, c.num_attention_heads)));
        }
        Ok(c)
    }
}

#[derive(Debug, Clone)]
struct BertLayer<B: Backend> {
    q: Dense<B>,
    k: Dense<B>,
    v: Dense<B>,
    attn_out: Dense<B>,
    attn_norm: LayerNorm<B>,
    up: Dense<B>,
    down: Dense<B>,
    ffn_norm: LayerNorm<B>,
}

/// The BERT encoder.
#[derive(Debug, Clone)]
pub struct Bert<B: Backend> {
    word: Tensor<B, 2>,
    position: Tensor<B, 2>,
    token_type: Tensor<B, 2>,
    embed_norm: LayerNorm<B>,
    layers: Vec<BertLayer<B>>,
    config: BertConfig,
    device: B::Device,
}

impl<B: Backend> Bert<B> {
    /// Loads the encoder's tensors (names as in the table above).
    pub fn load(src: &dyn WeightSource, config: BertConfig, device: &B::Device) -> Result<Self, WeightError> {
        let (d, f, eps) = (config.hidden_size, config.intermediate_size, config.layer_norm_eps);
        let mut layers = vec![];
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(BertLayer {
                q: Dense::load(src, &format!("{p}.attention.self.query"), d, d, true, device)?,
                k: Dense::load(src, &format!("{p}.attention.self.key"), d, d, true, device)?,
                v: Dense::load(src, &format!("{p}.attention.self.value"), d, d, true, device)?,
                attn_out: Dense::load(src, &format!("{p}.attention.output.dense"), d, d, true, device)?,
                attn_norm: LayerNorm::load(src, &format!("{p}.attention.output.LayerNorm"), d, eps, device)?,
                up: Dense::load(src, &format!("{p}.intermediate.dense"), d, f, true, device)?,
                down: Dense::load(src, &format!("{p}.output.dense"), f, d, true, device)?,
                ffn_norm: LayerNorm::load(src, &format!("{p}.output.LayerNorm"), d, eps, device)?,
            });
        }
        Ok(Self {
            word: to_device(src.load_shaped("embeddings.word_embeddings.weight", &[config.vocab_size, d])?, device),
            position: to_device(src.load_shaped("embeddings.position_embeddings.weight", &[config.max_position_embeddings, d])?, device),
            token_type: to_device(src.load_shaped("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, d])?, device),
            embed_norm: LayerNorm::load(src, "embeddings.LayerNorm", d, eps, device)?,
            layers,
            config,
            device: device.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Encodes a batch of id sequences (each at most `max_position_embeddings` long, segment 0),
    /// padded to the longest; returns the last hidden states `[batch, len, hidden]`.
    pub fn forward(&self, batch: &[Vec<u32>]) -> Tensor<B, 3> {
        let n = batch.len();
        let len = batch.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let d = self.config.hidden_size;
        let mut ids = Vec::with_capacity(n * len);
        for seq in batch {
            ids.extend(seq.iter().map(|&t| t as i64));
            ids.extend(std::iter::repeat_n(0i64, len - seq.len()));
        }
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n * len]), &self.device);
        let words = self.word.clone().select(0, ids).reshape([n, len, d]);
        let pos = self.position.clone().slice([0..len]).unsqueeze_dim::<3>(0);
        let seg = self.token_type.clone().slice([0..1]).unsqueeze_dim::<3>(0);
        let mut x = self.embed_norm.forward(words + pos + seg);
        let lengths: Vec<usize> = batch.iter().map(Vec::len).collect();
        let mask = lengths.iter().any(|&l| l < len).then(|| padding_mask::<B>(&lengths, len, len, &self.device));
        let heads = self.config.num_attention_heads;
        for l in &self.layers {
            let a = multi_head_attention(l.q.forward(x.clone()), l.k.forward(x.clone()), l.v.forward(x.clone()), heads, mask.clone());
            x = l.attn_norm.forward(x + l.attn_out.forward(a));
            let h = l.down.forward(gelu(l.up.forward(x.clone())));
            x = l.ffn_norm.forward(x + h);
        }
        x
    }
}

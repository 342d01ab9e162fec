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
use xcomposer_llm::readers::fields::{Fields, read_json};
use xcomposer_llm::nn::{Dense, LayerNorm, multi_head_attention, padding_mask, to_device};
use xcomposer_llm::weights::{WeightError, WeightSource};

/// The fields of a BERT `config.json` the encoder needs.
#[derive(Debug, Clone, PartialEq)]
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
    /// Segment vocabulary (HF's default 2).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (HF's default 1e-12).
    pub layer_norm_eps: f64,
    /// Activation; only `gelu` (exact) is supported.
    pub hidden_act: String,
    /// Position embedding kind; only `absolute` is supported.
    pub position_embedding_type: String,
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
        let json = read_json(path).map_err(err)?;
        Self::from_fields(&Fields::new(&json, "")).map_err(|e| err(e.to_string()))
    }

    /// The configuration from a `config.json`'s fields: required sizes, HF's defaults for the
    /// rest, errors naming the field.
    fn from_fields(f: &Fields<'_>) -> Result<Self, WeightError> {
        let c = BertConfig {
            vocab_size: f.required_usize("vocab_size")?,
            hidden_size: f.required_usize("hidden_size")?,
            num_hidden_layers: f.required_usize("num_hidden_layers")?,
            num_attention_heads: f.required_usize("num_attention_heads")?,
            intermediate_size: f.required_usize("intermediate_size")?,
            max_position_embeddings: f.required_usize("max_position_embeddings")?,
            type_vocab_size: f.positive_usize("type_vocab_size", 2)?,
            layer_norm_eps: f.positive_f64("layer_norm_eps", 1e-12)?,
            hidden_act: f.one_of("hidden_act", &["gelu"])?.into(),
            position_embedding_type: f.one_of("position_embedding_type", &["absolute"])?.into(),
        };
        if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(f.err("hidden_size", format!("is {}, not a multiple of num_attention_heads {}", c.hidden_size, c.num_attention_heads)));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A small valid config with `key` set to `value` (the JSON text of it), checked.
    fn config_with(key: &str, value: &str) -> Result<BertConfig, String> {
        let mut json = serde_json::json!({"vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16});
        json[key] = serde_json::from_str(value).unwrap();
        BertConfig::from_fields(&Fields::new(&json, "")).map_err(|e| e.to_string())
    }

    #[test]
    fn fields_of_the_wrong_type_or_range_are_named() {
        let c = config_with("comment", "null").unwrap();
        assert_eq!((c.type_vocab_size, c.layer_norm_eps, c.hidden_act.as_str()), (2, 1e-12, "gelu"));
        assert_eq!(config_with("hidden_size", r#""8""#).unwrap_err(), r#"hidden_size is "8"; expected a positive integer"#);
        assert_eq!(config_with("layer_norm_eps", "-1").unwrap_err(), "layer_norm_eps is -1; expected a positive number");
        assert_eq!(config_with("type_vocab_size", "0").unwrap_err(), "type_vocab_size is 0; expected a positive integer");
        assert_eq!(config_with("hidden_act", r#""relu""#).unwrap_err(), r#"hidden_act is "relu"; expected "gelu""#);
        assert_eq!(config_with("hidden_size", "9").unwrap_err(), "hidden_size is 9, not a multiple of num_attention_heads 2");
        assert_eq!(config_with("max_position_embeddings", "null").unwrap_err(), "max_position_embeddings is missing; expected a positive integer");
    }
}

//! `DecoderConfig`: the sizes and variant switches of a llama-family decoder, read from GGUF
//! metadata or a Hugging Face `config.json`.

use serde::Deserialize;

use crate::gguf::Gguf;

/// The decoder variants we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Arch {
    /// Llama / SmolLM2 / Mistral-style: no biases, GQA.
    Llama,
    /// Qwen2: biases on q, k, v.
    Qwen2,
    /// InternLM v1: biases on q, k, v and o.
    InternLm,
}

/// Errors in a model configuration.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {field}: {reason}")]
pub struct ConfigError {
    /// The file the configuration came from.
    pub source_name: String,
    /// The key or field.
    pub field: String,
    /// What was expected.
    pub reason: String,
}

/// Sizes and switches of a llama-family decoder.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DecoderConfig {
    /// Variant.
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RoPE base θ.
    pub rope_theta: f32,
    /// RMSNorm ε.
    pub rms_norm_eps: f32,
    /// Context length the model was trained for.
    pub max_position: usize,
    /// Whether q, k and v projections have biases.
    pub qkv_bias: bool,
    /// Whether the output projection has a bias.
    pub o_bias: bool,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether RoPE's inverse frequencies are rounded to f16 first, as checkpoints saved in f16
    /// with an `inv_freq` buffer (InternLM-XComposer) computed them.
    pub rope_inv_freq_f16: bool,
}

impl DecoderConfig {
    /// Reads the configuration from GGUF metadata (`general.architecture` = `llama` or `qwen2`).
    /// `tie_word_embeddings` is set from whether the file has an `output.weight` tensor.
    pub fn from_gguf(g: &Gguf) -> Result<Self, ConfigError> {
        let err = |field: &str, reason: String| ConfigError { source_name: "GGUF metadata".into(), field: field.into(), reason };
        let arch_name = g.get_str("general.architecture").map_err(|e| err("general.architecture", e.to_string()))?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(err("general.architecture", format!("'{other}' is not supported (expected llama or qwen2)"))),
        };
        let int = |k: &str| -> Result<usize, ConfigError> {
            let key = format!("{arch_name}.{k}");
            g.get_u64(&key).map(|v| v as usize).map_err(|e| err(&key, e.to_string()))
        };
        let hidden_size = int("embedding_length")?;
        let num_heads = int("attention.head_count")?;
        let num_kv_heads = int("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = int("attention.key_length").unwrap_or(hidden_size / num_heads.max(1));
        let vocab_size = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => g.get_str_array("tokenizer.ggml.tokens").map_err(|e| err("tokenizer.ggml.tokens", e.to_string()))?.len(),
        };
        let float = |k: &str, default: f64| -> Result<f32, ConfigError> {
            let key = format!("{arch_name}.{k}");
            match g.get(&key) {
                None => Ok(default as f32),
                Some(_) => g.get_f64(&key).map(|v| v as f32).map_err(|e| err(&key, e.to_string())),
            }
        };
        if let Some(v) = g.get(&format!("{arch_name}.rope.scaling.type")) {
            if v.as_str() != Some("none") {
                return Err(err(&format!("{arch_name}.rope.scaling.type"), format!("RoPE scaling {v:?} is not supported")));
            }
        }
        let cfg = DecoderConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_layers: int("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta: float("rope.freq_base", 10000.0)?,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5)?,
            max_position: int("context_length").unwrap_or(4096),
            qkv_bias: arch == Arch::Qwen2,
            o_bias: false,
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            rope_inv_freq_f16: false,
        };
        cfg.validate("GGUF metadata")
    }

    /// Reads a Hugging Face `config.json` (`model_type` llama, qwen2, internlm, or
    /// InternLMXComposer for the language model of InternLM-XComposer).
    pub fn from_hf_json(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let err = |field: &str, reason: String| ConfigError { source_name: source_name.into(), field: field.into(), reason };
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| err("config", e.to_string()))?;
        let arch = match raw.model_type.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "internlm" | "InternLMXComposer" => Arch::InternLm,
            other => {
                return Err(err("model_type", format!("'{other}' is not supported (expected llama, mistral, qwen2, internlm or InternLMXComposer)")));
            }
        };
        if let Some(s) = raw.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(err("rope_scaling", format!("{s} is not supported")));
        }
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let internlm_bias = arch == Arch::InternLm && raw.bias.unwrap_or(true);
        let cfg = DecoderConfig {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim: raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            rope_theta: raw.rope_theta.unwrap_or(10000.0),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            max_position: raw.max_position_embeddings.unwrap_or(2048),
            qkv_bias: arch == Arch::Qwen2 || internlm_bias,
            o_bias: internlm_bias,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            rope_inv_freq_f16: raw.model_type == "InternLMXComposer",
        };
        cfg.validate(source_name)
    }

    fn validate(self, source_name: &str) -> Result<Self, ConfigError> {
        let err = |field: &str, reason: String| ConfigError { source_name: source_name.into(), field: field.into(), reason };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(err(name, "must be positive".into()));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(err("num_kv_heads", format!("{} does not divide num_heads {}", self.num_kv_heads, self.num_heads)));
        }
        if self.head_dim % 2 != 0 {
            return Err(err("head_dim", format!("{} is odd; RoPE needs an even head width", self.head_dim)));
        }
        Ok(self)
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f32>,
    rms_norm_eps: Option<f32>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    rope_scaling: Option<serde_json::Value>,
    /// InternLM v1: q/k/v/o biases.
    bias: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internlm_config_has_all_four_biases() {
        let json = r#"{"model_type":"internlm","vocab_size":103168,"hidden_size":4096,"intermediate_size":11008,
            "num_hidden_layers":32,"num_attention_heads":32,"rms_norm_eps":1e-5,"bias":true,"max_position_embeddings":2048}"#;
        let c = DecoderConfig::from_hf_json(json, "config.json").unwrap();
        assert_eq!(c.arch, Arch::InternLm);
        assert!(c.qkv_bias && c.o_bias && !c.tie_word_embeddings);
        assert_eq!((c.num_kv_heads, c.head_dim, c.rope_theta), (32, 128, 10000.0));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = DecoderConfig::from_hf_json(r#"{"model_type":"gpt2"}"#, "x/config.json").unwrap_err().to_string();
        assert!(e.contains("x/config.json"), "{e}");
        let json = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":3}"#;
        let e = DecoderConfig::from_hf_json(json, "config.json").unwrap_err().to_string();
        assert!(e.contains("num_kv_heads"), "{e}");
        let json = r#"{"model_type":"phi3","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2}"#;
        let e = DecoderConfig::from_hf_json(json, "config.json").unwrap_err().to_string();
        assert!(e.contains("model_type") && e.contains("phi3"), "{e}");
        let json = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"type":"yarn"}}"#;
        let e = DecoderConfig::from_hf_json(json, "config.json").unwrap_err().to_string();
        assert!(e.contains("rope_scaling"), "{e}");
    }
}

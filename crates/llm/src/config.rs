//! `DecoderConfig`: the sizes and variant switches of a llama-family decoder, read from GGUF
//! metadata or a Hugging Face `config.json`.

use crate::gguf::Gguf;
use crate::readers::WeightError;
use crate::readers::fields::{Fields, positive_f32};

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

/// The longest context a configuration may declare (2^20 positions): the RoPE tables are sized
/// from it before any tensor is read, so a larger value is refused rather than allocated.
pub const MAX_CONTEXT: usize = 1 << 20;

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

impl ConfigError {
    /// The same error with the file it came from named: `path (what)`.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        ConfigError { source_name: format!("{} ({})", path.display(), self.source_name), ..self }
    }
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
    /// InternLM-7B as InternLM-XComposer v1 ships it: 32 layers of width 4096, 32 heads, SwiGLU
    /// 11,008 wide, q/k/v/o biases, an untied head of 103,168 rows, a 2,048-position context.
    pub fn internlm_7b() -> Self {
        DecoderConfig {
            arch: Arch::InternLm,
            vocab_size: 103_168,
            hidden_size: 4096,
            intermediate_size: 11_008,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 32,
            head_dim: 128,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            max_position: 2048,
            qkv_bias: true,
            o_bias: true,
            tie_word_embeddings: false,
            rope_inv_freq_f16: true,
        }
    }

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
            let v = g.get_u64(&key).map_err(|e| err(&key, e.to_string()))?;
            usize::try_from(v).map_err(|_| err(&key, format!("{v} does not fit this machine's address space")))
        };
        // An optional key: `default` when absent, an error naming it when present but unusable.
        let opt_int = |k: &str, default: usize| if g.get(&format!("{arch_name}.{k}")).is_some() { int(k) } else { Ok(default) };
        let hidden_size = int("embedding_length")?;
        let num_heads = int("attention.head_count")?;
        let num_kv_heads = opt_int("attention.head_count_kv", num_heads)?;
        let head_dim = opt_int("attention.key_length", hidden_size / num_heads.max(1))?;
        let vocab_size = match g.get(&format!("{arch_name}.vocab_size")) {
            Some(_) => int("vocab_size")?,
            None => g.get_str_array("tokenizer.ggml.tokens").map_err(|e| err("tokenizer.ggml.tokens", e.to_string()))?.len(),
        };
        let float = |k: &str, default: f32| -> Result<f32, ConfigError> {
            let key = format!("{arch_name}.{k}");
            match g.get(&key) {
                None => Ok(default),
                Some(_) => {
                    let v = g.get_f64(&key).map_err(|e| err(&key, e.to_string()))?;
                    positive_f32(v).ok_or_else(|| err(&key, format!("{v} is not a positive number within f32's range")))
                }
            }
        };
        if let Some(v) = g.get(&format!("{arch_name}.rope.scaling.type")).filter(|v| v.as_str() != Some("none")) {
            return Err(err(&format!("{arch_name}.rope.scaling.type"), format!("RoPE scaling {v:?} is not supported")));
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
            max_position: opt_int("context_length", 4096)?,
            qkv_bias: arch == Arch::Qwen2,
            o_bias: false,
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            rope_inv_freq_f16: false,
        };
        check_gguf_sizes(g, arch_name, &cfg).map_err(|(field, reason)| err(&field, reason))?;
        cfg.validate("GGUF metadata")
    }

    /// Reads a Hugging Face `config.json` (`model_type` llama, qwen2, internlm, or
    /// InternLMXComposer for the language model of InternLM-XComposer); absent optional fields
    /// take HF's defaults, a mistyped one is an error naming it ([`Fields`]).
    pub fn from_hf_json(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let err = |field: &str, reason: String| ConfigError { source_name: source_name.into(), field: field.into(), reason };
        let field_err = |e: WeightError| match e {
            WeightError::Field { field, reason } => ConfigError { source_name: source_name.into(), field, reason },
            other => err("config", other.to_string()),
        };
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| err("config", e.to_string()))?;
        let f = Fields::new(&json, "");
        let model_type = f.required_str("model_type").map_err(field_err)?;
        let arch = match model_type {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "internlm" | "InternLMXComposer" => Arch::InternLm,
            other => {
                return Err(err("model_type", format!("'{other}' is not supported (expected llama, mistral, qwen2, internlm or InternLMXComposer)")));
            }
        };
        if let Some(s) = f.get("rope_scaling") {
            return Err(err("rope_scaling", format!("{s} is not supported")));
        }
        let c = Self::hf_sizes(&f, arch, model_type).map_err(field_err)?;
        if c.max_position > MAX_CONTEXT {
            // Named as the file names it (validate names the field max_position).
            return Err(err("max_position_embeddings", format!("{} is above the supported maximum {MAX_CONTEXT}", c.max_position)));
        }
        c.validate(source_name)
    }

    /// The sizes and switches of a `config.json` of the given `arch`.
    fn hf_sizes(f: &Fields<'_>, arch: Arch, model_type: &str) -> Result<Self, WeightError> {
        let (hidden_size, num_heads) = (f.required_usize("hidden_size")?, f.required_usize("num_attention_heads")?);
        let internlm_bias = arch == Arch::InternLm && f.bool("bias", true)?;
        Ok(DecoderConfig {
            arch,
            vocab_size: f.required_usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.required_usize("intermediate_size")?,
            num_layers: f.required_usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads: f.positive_usize("num_key_value_heads", num_heads)?,
            head_dim: f.positive_usize("head_dim", hidden_size / num_heads)?,
            rope_theta: f.positive_f32("rope_theta", 10000.0)?,
            rms_norm_eps: f.positive_f32("rms_norm_eps", 1e-6)?,
            max_position: f.positive_usize("max_position_embeddings", 2048)?,
            qkv_bias: arch == Arch::Qwen2 || internlm_bias,
            o_bias: internlm_bias,
            tie_word_embeddings: f.bool("tie_word_embeddings", false)?,
            rope_inv_freq_f16: model_type == "InternLMXComposer",
        })
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
        if self.max_position > MAX_CONTEXT {
            return Err(err("max_position", format!("{} is above the supported maximum {MAX_CONTEXT}", self.max_position)));
        }
        self.check_products().map_err(|(field, reason)| err(field, reason))?;
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(err("num_kv_heads", format!("{} does not divide num_heads {}", self.num_kv_heads, self.num_heads)));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(err("head_dim", format!("{} is odd; RoPE needs an even head width", self.head_dim)));
        }
        Ok(self)
    }
}

impl DecoderConfig {
    /// Checks that every tensor size the decoder allocates from these values fits in memory
    /// (`rows × cols` f32 values below `isize::MAX` bytes) instead of wrapping.
    fn check_products(&self) -> Result<(), (&'static str, String)> {
        let (d, hd) = (("hidden_size", self.hidden_size), ("head_dim", self.head_dim));
        let pairs = [
            (("vocab_size", self.vocab_size), d),
            (("num_heads", self.num_heads), hd),
            (("num_kv_heads", self.num_kv_heads), hd),
            (("intermediate_size", self.intermediate_size), d),
            (("max_position", self.max_position), hd),
        ];
        for ((a, x), (b, y)) in pairs {
            if x.checked_mul(y).and_then(|n| n.checked_mul(4)).is_none_or(|bytes| bytes > isize::MAX as usize) {
                return Err((b, format!("{a} {x} × {b} {y} f32 values overflow the address space")));
            }
        }
        Ok(())
    }
}

/// Checks the GGUF values that allocations are sized from, before any tensor is read: the
/// context length against [`MAX_CONTEXT`], the block count against the layers whose tensors the
/// file holds, and the vocabulary against the rows of `token_embd.weight`.
fn check_gguf_sizes(g: &Gguf, arch: &str, c: &DecoderConfig) -> Result<(), (String, String)> {
    if c.max_position > MAX_CONTEXT {
        return Err((format!("{arch}.context_length"), format!("{} is above the supported maximum {MAX_CONTEXT}", c.max_position)));
    }
    let layers = layers_present(g);
    if c.num_layers > layers {
        let reason = format!("{} blocks declared, but the file holds tensors for {layers} layer(s) (blk.0. onwards)", c.num_layers);
        return Err((format!("{arch}.block_count"), reason));
    }
    let Some(&rows) = g.tensor_info("token_embd.weight").and_then(|t| t.dims.get(1)) else { return Ok(()) };
    let tokens = g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map_or(0, <[_]>::len);
    let too_many = |what: String, n: usize| (what, format!("{n} tokens, but the embedding token_embd.weight has {rows} rows"));
    if tokens as u64 > rows {
        return Err(too_many("tokenizer.ggml.tokens".into(), tokens));
    }
    if c.vocab_size as u64 > rows {
        return Err(too_many(format!("{arch}.vocab_size"), c.vocab_size));
    }
    Ok(())
}

/// How many layers, from `blk.0.` on without a gap, have tensors in the file.
fn layers_present(g: &Gguf) -> usize {
    let layer = |name: &str| name.strip_prefix("blk.")?.split('.').next()?.parse::<usize>().ok();
    let present: std::collections::BTreeSet<usize> = g.tensors.iter().filter_map(|t| layer(&t.name)).collect();
    (0..).take_while(|i| present.contains(i)).count()
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
        // InternLM-XComposer's own config.json (the fields the reference lists) reads as the
        // shape the benchmarks and the placement plan use.
        let json = r#"{"model_type":"InternLMXComposer","vocab_size":103168,"hidden_size":4096,"intermediate_size":11008,
            "num_hidden_layers":32,"num_attention_heads":32,"rms_norm_eps":1e-05,"kqvo_bias":true,"max_position_embeddings":2048,
            "tie_word_embeddings":false}"#;
        assert_eq!(DecoderConfig::from_hf_json(json, "config.json").unwrap(), DecoderConfig::internlm_7b());
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

    /// A tiny llama GGUF: width 8, 2 heads, the given block count, context length and token
    /// count, an embedding of `rows` rows and layer 0's norm.
    fn tiny_gguf(blocks: u32, context: u32, tokens: usize, rows: u64) -> Vec<u8> {
        tiny_builder(blocks, context, tokens, rows).build()
    }

    /// [`tiny_gguf`] before it is built, for tests that add keys.
    fn tiny_builder(blocks: u32, context: u32, tokens: usize, rows: u64) -> crate::gguf::tests::Builder {
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend_from_slice(&(tokens as u64).to_le_bytes());
        for i in 0..tokens {
            let t = format!("t{i}");
            arr.extend_from_slice(&(t.len() as u64).to_le_bytes());
            arr.extend_from_slice(t.as_bytes());
        }
        crate::gguf::tests::Builder::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.embedding_length", 8)
            .kv_u32("llama.attention.head_count", 2)
            .kv_u32("llama.feed_forward_length", 8)
            .kv_u32("llama.block_count", blocks)
            .kv_u32("llama.context_length", context)
            .kv_raw("tokenizer.ggml.tokens", 9, arr)
            .tensor("token_embd.weight", &[8, rows], 0, vec![0; 8 * 4 * rows as usize])
            .tensor("blk.0.attn_norm.weight", &[8], 0, vec![0; 32])
    }

    fn gguf_config(bytes: Vec<u8>) -> Result<DecoderConfig, ConfigError> {
        DecoderConfig::from_gguf(&Gguf::from_bytes(bytes).unwrap())
    }

    #[test]
    fn a_well_formed_tiny_gguf_gives_a_config() {
        let c = gguf_config(tiny_gguf(1, 64, 4, 4)).unwrap();
        assert_eq!((c.num_layers, c.max_position, c.vocab_size), (1, 64, 4));
    }

    #[test]
    fn a_block_count_past_the_layers_in_the_file_is_refused() {
        let e = gguf_config(tiny_gguf(u32::MAX, 64, 4, 4)).unwrap_err().to_string();
        assert!(e.contains("llama.block_count") && e.contains("4294967295") && e.contains("1 layer"), "{e}");
    }

    #[test]
    fn a_context_length_above_the_cap_is_refused() {
        let e = gguf_config(tiny_gguf(1, u32::MAX, 4, 4)).unwrap_err().to_string();
        assert!(e.contains("llama.context_length") && e.contains("4294967295") && e.contains(&MAX_CONTEXT.to_string()), "{e}");
    }

    #[test]
    fn a_vocabulary_larger_than_the_embedding_is_refused() {
        let e = gguf_config(tiny_gguf(1, 64, 6, 4)).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.tokens") && e.contains('6') && e.contains("4 rows"), "{e}");
    }

    #[test]
    fn optional_gguf_keys_of_the_wrong_type_are_errors_not_defaults() {
        let kv = tiny_builder(1, 64, 4, 4).kv_str("llama.attention.head_count_kv", "2").build();
        let e = gguf_config(kv).unwrap_err().to_string();
        assert!(e.contains("llama.attention.head_count_kv"), "{e}");
        let theta = tiny_builder(1, 64, 4, 4).kv_raw("llama.rope.freq_base", 6, (-1.0f32).to_le_bytes().to_vec()).build();
        let e = gguf_config(theta).unwrap_err().to_string();
        assert!(e.contains("llama.rope.freq_base") && e.contains("positive"), "{e}");
    }

    #[test]
    fn hf_config_fields_of_the_wrong_type_or_range_are_named() {
        let base = r#""vocab_size":10,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2"#;
        for (extra, field) in [
            (r#""model_type":"llama","hidden_size":"8""#, "hidden_size"),
            (r#""model_type":"llama","hidden_size":8,"rms_norm_eps":-1e-6"#, "rms_norm_eps"),
            (r#""model_type":"llama","hidden_size":8,"rope_theta":1e300"#, "rope_theta"),
            (r#""model_type":"llama","hidden_size":8,"tie_word_embeddings":"yes""#, "tie_word_embeddings"),
            (r#""model_type":"internlm","hidden_size":8,"bias":1"#, "bias"),
            (r#""model_type":7,"hidden_size":8"#, "model_type"),
            (r#""model_type":"llama""#, "hidden_size"),
        ] {
            let e = DecoderConfig::from_hf_json(&format!("{{{base},{extra}}}"), "c/config.json").unwrap_err().to_string();
            assert!(e.starts_with(&format!("c/config.json: {field}: is ")), "{extra}: {e}");
        }
    }

    #[test]
    fn an_hf_context_above_the_cap_is_refused() {
        let json = |n: usize| {
            format!(r#"{{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"max_position_embeddings":{n}}}"#)
        };
        assert_eq!(DecoderConfig::from_hf_json(&json(MAX_CONTEXT), "c/config.json").unwrap().max_position, MAX_CONTEXT);
        // Before: "c/config.json: max_position: …", not the file's name of the field.
        let e = DecoderConfig::from_hf_json(&json(MAX_CONTEXT + 1), "c/config.json").unwrap_err().to_string();
        assert_eq!(e, "c/config.json: max_position_embeddings: 1048577 is above the supported maximum 1048576");
    }

    #[test]
    fn sizes_that_overflow_are_refused_not_wrapped() {
        let json = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"head_dim":9223372036854775808}"#;
        let e = DecoderConfig::from_hf_json(json, "config.json").unwrap_err().to_string();
        assert!(e.contains("head_dim") && e.contains("overflow"), "{e}");
    }

    #[test]
    fn a_model_load_error_names_the_file() {
        let path = std::env::temp_dir().join(format!("xcomposer-config-test-{}.gguf", std::process::id()));
        std::fs::write(&path, tiny_gguf(u32::MAX, 64, 4, 4)).unwrap();
        let e = crate::model::LanguageModel::<burn::backend::Flex>::load(&path, &Default::default()).err().unwrap().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains(&path.display().to_string()) && e.contains("llama.block_count"), "{e}");
    }
}

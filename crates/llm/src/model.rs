//! `LanguageModel<B>`: a decoder with its tokenizer, chat template and stop tokens, loaded from a
//! GGUF file or a Hugging Face model folder (`config.json`, safetensors, `tokenizer.json`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

use crate::chat::{ChatError, ChatTemplate, Message};
use crate::config::{Arch, ConfigError, DecoderConfig};
use crate::decoder::KeyStyle;
use crate::gguf::Gguf;
use crate::generation::{GenerationConfig, GenerationError, Generated, Generator};
use crate::text_decoder::{EngineChoice, TextDecoder, TextDecoderError};
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::readers::fields::Fields;
use crate::weights::{GgufWeights, SafetensorsWeights, WeightError};

/// Errors while loading a model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The GGUF file is malformed.
    #[error("{path}: {source}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        source: WeightError,
    },
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A weight is missing or malformed.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The decoder could not be built (the CUDA engine refused the model or failed).
    #[error(transparent)]
    Decoder(#[from] TextDecoderError),
    /// The tokenizer could not be built.
    #[error("{path}: {source}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// The tokenizer's error.
        source: TokenizerError,
    },
    /// The chat template does not compile.
    #[error("{path}: {source}")]
    Chat {
        /// The file.
        path: PathBuf,
        /// The template's error.
        source: ChatError,
    },
}

impl From<crate::readers::path_io::PathIoError> for LoadError {
    fn from(e: crate::readers::path_io::PathIoError) -> Self {
        LoadError::File { path: e.path, reason: e.error.to_string() }
    }
}

/// End-of-turn markers of common chat formats, used as stop tokens when the vocabulary has them.
const END_OF_TURN: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"];

/// A ready-to-use language model.
pub struct LanguageModel<B: Backend> {
    /// The network, on burn or on the CUDA engine.
    pub decoder: TextDecoder<B>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, if the model has one.
    pub chat_template: Option<ChatTemplate>,
    /// Tokens that end a reply.
    pub stop_tokens: Vec<u32>,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// How long loading took.
    pub load_time: Duration,
}

impl<B: Backend> LanguageModel<B> {
    /// Loads a `.gguf` file or a Hugging Face model folder onto `device`.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, LoadError> {
        Self::load_with(path, device, EngineChoice::Burn)
    }

    /// [`LanguageModel::load`] with the decoder in the implementation `engine` names.
    pub fn load_with(path: &Path, device: &B::Device, engine: EngineChoice) -> Result<Self, LoadError> {
        let start = Instant::now();
        let mut m = if path.is_dir() { Self::load_hf(path, device, engine)? } else { Self::load_gguf(path, device, engine)? };
        m.load_time = start.elapsed();
        Ok(m)
    }

    fn load_gguf(path: &Path, device: &B::Device, engine: EngineChoice) -> Result<Self, LoadError> {
        let gguf = Gguf::open(path).map_err(|source| LoadError::Gguf { path: path.into(), source })?;
        let config = DecoderConfig::from_gguf(&gguf).map_err(|e| e.in_file(path))?;
        let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|source| LoadError::Tokenizer { path: path.into(), source })?;
        let token_str = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
        let meta = |source: WeightError| LoadError::Gguf { path: path.into(), source };
        let chat_template = match gguf.get("tokenizer.chat_template").map(|_| gguf.get_str("tokenizer.chat_template")).transpose().map_err(meta)? {
            Some(src) => Some(
                ChatTemplate::new(src, &token_str(tokenizer.bos_id), &token_str(tokenizer.eos_id))
                    .map_err(|source| LoadError::Chat { path: path.into(), source })?,
            ),
            None => None,
        };
        let mut stop_tokens: Vec<u32> = tokenizer.eos_id.into_iter().collect();
        if gguf.get("tokenizer.ggml.eot_token_id").is_some() {
            let key = "tokenizer.ggml.eot_token_id";
            let eot = gguf.get_u64(key).map_err(meta)?;
            stop_tokens.push(token_id(eot, config.vocab_size).map_err(|reason| meta(WeightError::BadMetadata { key: key.into(), reason }))?);
        }
        let style = KeyStyle::Gguf { permuted_qk: config.arch == Arch::Llama };
        let src = GgufWeights { gguf: &gguf, path: path.into() };
        let decoder = TextDecoder::load(config, &src, style, device, engine)?;
        Ok(Self::assemble(decoder, tokenizer, chat_template, stop_tokens, path))
    }

    fn load_hf(dir: &Path, device: &B::Device, engine: EngineChoice) -> Result<Self, LoadError> {
        let read = |name: &str| -> Result<Option<String>, LoadError> {
            let p = dir.join(name);
            match crate::capped::read_within(&p, crate::readers::fields::CONFIG_CAP) {
                Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| LoadError::File { path: p, reason: "not UTF-8 text".into() }),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(LoadError::File { path: p, reason: e.reason() }),
            }
        };
        let json = |name: &str| -> Result<serde_json::Value, LoadError> {
            match read(name)? {
                None => Ok(serde_json::Value::Null),
                Some(s) => serde_json::from_str(&s).map_err(|e| LoadError::File { path: dir.join(name), reason: e.to_string() }),
            }
        };
        let config_path = dir.join("config.json");
        let config_text = read("config.json")?
            .ok_or_else(|| LoadError::File { path: config_path.clone(), reason: "missing: a Hugging Face model folder needs config.json".into() })?;
        let config_json: serde_json::Value = serde_json::from_str(&config_text).unwrap_or_default();
        if config_json.get("model_type").and_then(|v| v.as_str()) == Some("InternLMXComposer") {
            return Err(LoadError::File {
                path: dir.into(),
                reason: "an InternLM-XComposer folder, not a text model: use `xcomposer chat --model DIR`, or `compose --xcomposer DIR` for its image selection".into(),
            });
        }
        let config = DecoderConfig::from_hf_json(&config_text, &config_path.display().to_string())?;
        let tok_config = json("tokenizer_config.json")?;
        let tok_config_path = dir.join("tokenizer_config.json");
        let tok_fields = Fields::new(&tok_config, "");
        // Special tokens are strings (or {"content": …}) in tokenizer_config.json.
        let token_name = |key: &str| -> Result<Option<String>, LoadError> {
            let Some(v) = tok_fields.get(key) else { return Ok(None) };
            match v.as_str().or_else(|| v.get("content")?.as_str()) {
                Some(s) => Ok(Some(s.into())),
                None => Err(file_err(&tok_config_path)(tok_fields.err(key, format!("is {v}; expected a string or {{\"content\": string}}")))),
            }
        };
        let bos_name = token_name("bos_token")?;
        let eos_name = token_name("eos_token")?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(LoadError::File { path: tok_path, reason: "missing: a Hugging Face model folder needs tokenizer.json".into() });
        }
        let mut tokenizer = Tokenizer::from_tokenizer_json(&tok_path, None, None, false)
            .map_err(|source| LoadError::Tokenizer { path: tok_path.clone(), source })?;
        let vocab = config.vocab_size;
        let config_fields = Fields::new(&config_json, "");
        let id_of = |name: &Option<String>, key: &str, tokenizer: &Tokenizer| -> Result<Option<u32>, LoadError> {
            if let Some(id) = name.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
                return Ok(Some(id));
            }
            config_fields.get(key).map(|v| json_token_id(&config_fields, key, v, vocab)).transpose().map_err(file_err(&config_path))
        };
        tokenizer.bos_id = id_of(&bos_name, "bos_token_id", &tokenizer)?;
        tokenizer.eos_id = id_of(&eos_name, "eos_token_id", &tokenizer)?;
        tokenizer.add_bos = tok_fields.bool("add_bos_token", false).map_err(file_err(&tok_config_path))?;
        let chat_template = match chat_template_source(&tok_fields).map_err(file_err(&tok_config_path))? {
            Some(src) => Some(
                ChatTemplate::new(src, bos_name.as_deref().unwrap_or_default(), eos_name.as_deref().unwrap_or_default())
                    .map_err(|source| LoadError::Chat { path: tok_config_path.clone(), source })?,
            ),
            None => None,
        };
        let mut stop_tokens: Vec<u32> = tokenizer.eos_id.into_iter().collect();
        let gen_config = json("generation_config.json")?;
        let gen_fields = Fields::new(&gen_config, "");
        let gen_path = dir.join("generation_config.json");
        let gen_err = file_err(&gen_path);
        match gen_fields.get("eos_token_id") {
            Some(serde_json::Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    stop_tokens.push(json_token_id(&gen_fields, &format!("eos_token_id[{i}]"), v, vocab).map_err(&gen_err)?);
                }
            }
            Some(v) => stop_tokens.push(json_token_id(&gen_fields, "eos_token_id", v, vocab).map_err(&gen_err)?),
            None => {}
        }
        let src = SafetensorsWeights::open(dir)?;
        let decoder = TextDecoder::load(config, &src, KeyStyle::HuggingFace, device, engine)?;
        Ok(Self::assemble(decoder, tokenizer, chat_template, stop_tokens, dir))
    }

    fn assemble(decoder: TextDecoder<B>, tokenizer: Tokenizer, chat_template: Option<ChatTemplate>, mut stop_tokens: Vec<u32>, path: &Path) -> Self {
        stop_tokens.extend(END_OF_TURN.iter().filter_map(|t| tokenizer.token_to_id(t)));
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        LanguageModel { decoder, tokenizer, chat_template, stop_tokens, path: path.into(), load_time: Duration::ZERO }
    }

    /// Applies the chat template to a conversation and opens the assistant's turn.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String, ChatError> {
        let t = self.chat_template.as_ref().ok_or_else(|| ChatError::NoTemplate(self.path.display().to_string()))?;
        t.render(messages, true)
    }

    /// Encodes a chat-formatted prompt: the template writes any BOS itself.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>, GenerationError> {
        let text = self.chat_prompt(messages).map_err(|e| GenerationError::BadConfig(e.to_string()))?;
        Ok(self.tokenizer.encode(&text)?)
    }

    /// Generates after the given prompt ids; the model's stop tokens are added to `cfg`'s.
    ///
    /// On the CPU, call it from a rayon worker (`rayon::scope`, `ThreadPool::install`): every
    /// token runs several parallel matrix products, and starting them from inside the pool
    /// avoids waking it from another thread each time.
    pub fn generate(&self, prompt_ids: &[u32], cfg: &GenerationConfig, on_text: &mut dyn FnMut(&str)) -> Result<Generated, GenerationError> {
        self.generate_cancellable(prompt_ids, cfg, on_text, &std::sync::atomic::AtomicBool::new(false))
    }

    /// [`LanguageModel::generate`] that ends with [`GenerationError::Cancelled`] once `cancel` is set.
    pub fn generate_cancellable(&self, prompt_ids: &[u32], cfg: &GenerationConfig, on_text: &mut dyn FnMut(&str), cancel: &std::sync::atomic::AtomicBool) -> Result<Generated, GenerationError> {
        let mut cfg = cfg.clone();
        cfg.stop_tokens.extend(&self.stop_tokens);
        Generator { model: &self.decoder, tokenizer: &self.tokenizer }.generate_cancellable(prompt_ids, &cfg, on_text, cancel)
    }
}

/// An error of a field of the JSON file at `path`, as a load error naming the file.
fn file_err(path: &Path) -> impl Fn(WeightError) -> LoadError + '_ {
    move |e| LoadError::File { path: path.into(), reason: e.to_string() }
}

/// `id` as a token id of a model with `vocab` embedding rows, or why it is not one.
fn token_id(id: u64, vocab: usize) -> Result<u32, String> {
    u32::try_from(id).ok().filter(|&i| (i as usize) < vocab).ok_or_else(|| format!("{id} is not a token id of this model (vocabulary size {vocab})"))
}

/// The JSON value `v` of the field `key` as a token id of a model with `vocab` embedding rows.
fn json_token_id(f: &Fields<'_>, key: &str, v: &serde_json::Value, vocab: usize) -> Result<u32, WeightError> {
    v.as_u64()
        .and_then(|id| token_id(id, vocab).ok())
        .ok_or_else(|| f.err(key, format!("is {v}; expected a token id below the vocabulary size {vocab}")))
}

/// The `chat_template` of a `tokenizer_config.json`: a string, or Hugging Face's list of named
/// templates (`[{"name": "default", "template": …}, …]`, the one named "default" taken); `None`
/// when absent.
fn chat_template_source<'a>(f: &Fields<'a>) -> Result<Option<&'a str>, WeightError> {
    let key = "chat_template";
    let Some(v) = f.get(key) else { return Ok(None) };
    if let Some(s) = v.as_str() {
        return Ok(Some(s));
    }
    let expected = "expected a string or a list of {\"name\", \"template\"} objects";
    let list = v.as_array().ok_or_else(|| f.err(key, format!("is {v}; {expected}")))?;
    for (i, t) in list.iter().enumerate() {
        let named = |k: &str| t.get(k).and_then(|v| v.as_str()).ok_or_else(|| f.err(&format!("{key}[{i}].{k}"), format!("is {}; expected a string", t.get(k).unwrap_or(&serde_json::Value::Null))));
        if named("name")? == "default" {
            return named("template").map(Some);
        }
    }
    Err(f.err(key, "is a list of named templates without one named \"default\"".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_folder_whose_config_is_a_fifo_is_refused_without_waiting() {
        let dir = std::env::temp_dir().join(format!("xcomposer-model-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.json");
        assert!(std::process::Command::new("mkfifo").arg(&config).status().is_ok_and(|s| s.success()), "mkfifo failed");
        // Before: read_to_string blocked here until something wrote to the FIFO.
        let e = LanguageModel::<burn::backend::Flex>::load(&dir, &Default::default()).err().unwrap().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(e, format!("{}: not a regular file (a folder, FIFO or device); expected a file", config.display()));
    }

    /// Loads a model folder holding a tiny llama `config.json` (with `config_extra`), a
    /// word-level `tokenizer.json` and the given `tokenizer_config.json` and
    /// `generation_config.json` (skipped when `None`), and no weights; the load's error.
    fn load_folder_error(config_extra: &str, tok_config: &str, gen_config: Option<&str>) -> String {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xcomposer-model-fields-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            r#"{{"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 4{config_extra}}}"#
        );
        std::fs::write(dir.join("config.json"), config).unwrap();
        let tokenizer = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "a": 2, "<unk>": 3}, "unk_token": "<unk>"}}"#;
        std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), tok_config).unwrap();
        if let Some(g) = gen_config {
            std::fs::write(dir.join("generation_config.json"), g).unwrap();
        }
        let e = LanguageModel::<burn::backend::Flex>::load(&dir, &Default::default()).err().unwrap().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        e.replace(&dir.display().to_string(), "DIR")
    }

    #[test]
    fn tokenizer_config_fields_of_the_wrong_type_are_named_not_defaulted() {
        // Before: each of these was silently replaced by its default (no BOS, add_bos_token
        // false, no chat template, the stop token dropped) or wrapped into another id.
        let e = load_folder_error("", r#"{"bos_token": 5}"#, None);
        assert_eq!(e, r#"DIR/tokenizer_config.json: bos_token is 5; expected a string or {"content": string}"#);
        let e = load_folder_error("", r#"{"eos_token": {"content": 1}}"#, None);
        assert!(e.starts_with("DIR/tokenizer_config.json: eos_token is {\"content\":1}"), "{e}");
        let e = load_folder_error("", r#"{"add_bos_token": "yes"}"#, None);
        assert_eq!(e, "DIR/tokenizer_config.json: add_bos_token is \"yes\"; expected true or false");
        let e = load_folder_error("", r#"{"chat_template": 7}"#, None);
        assert!(e.starts_with("DIR/tokenizer_config.json: chat_template is 7; expected a string or a list"), "{e}");
        let e = load_folder_error("", r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#, None);
        assert!(e.contains("chat_template is a list of named templates without one named \"default\""), "{e}");
        let e = load_folder_error("", "{}", Some(r#"{"eos_token_id": [1, -1]}"#));
        assert_eq!(e, "DIR/generation_config.json: eos_token_id[1] is -1; expected a token id below the vocabulary size 4");
        let e = load_folder_error("", "{}", Some(r#"{"eos_token_id": "1"}"#));
        assert_eq!(e, "DIR/generation_config.json: eos_token_id is \"1\"; expected a token id below the vocabulary size 4");
        // 2^32 + 1 wrapped to id 1 with `as u32`.
        let e = load_folder_error(r#", "bos_token_id": 4294967297"#, "{}", None);
        assert_eq!(e, "DIR/config.json: bos_token_id is 4294967297; expected a token id below the vocabulary size 4");
    }

    #[test]
    fn well_typed_tokenizer_config_fields_pass_to_the_weights() {
        // Every field usable (a named-template list included): the load gets as far as the
        // weights, which this folder lacks.
        let tok = r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": true,
            "chat_template": [{"name": "default", "template": "{{ messages[0]['content'] }}"}]}"#;
        let e = load_folder_error(r#", "bos_token_id": 0"#, tok, Some(r#"{"eos_token_id": [1, 3]}"#));
        assert!(e.contains("safetensors"), "{e}");
        let e = load_folder_error("", r#"{"bos_token": null, "chat_template": "{{ x }}"}"#, Some(r#"{"eos_token_id": 1}"#));
        assert!(e.contains("safetensors"), "{e}");
    }
}

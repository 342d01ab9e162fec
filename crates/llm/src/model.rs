//! `LanguageModel<B>`: a decoder with its tokenizer, chat template and stop tokens, loaded from a
//! GGUF file or a Hugging Face model folder (`config.json`, safetensors, `tokenizer.json`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

use crate::chat::{ChatError, ChatTemplate, Message};
use crate::config::{Arch, ConfigError, DecoderConfig};
use crate::decoder::KeyStyle;
use crate::gguf::{Gguf, GgufError};
use crate::generation::{GenerationConfig, GenerationError, Generated, Generator};
use crate::text_decoder::{EngineChoice, TextDecoder, TextDecoderError};
use crate::tokenizer::{Tokenizer, TokenizerError};
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
        source: GgufError,
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
        let chat_template = match gguf.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(src) => Some(
                ChatTemplate::new(src, &token_str(tokenizer.bos_id), &token_str(tokenizer.eos_id))
                    .map_err(|source| LoadError::Chat { path: path.into(), source })?,
            ),
            None => None,
        };
        let mut stop_tokens: Vec<u32> = tokenizer.eos_id.into_iter().collect();
        if let Some(eot) = gguf.get("tokenizer.ggml.eot_token_id").and_then(|v| v.as_u64()) {
            stop_tokens.push(eot as u32);
        }
        let style = KeyStyle::Gguf { permuted_qk: config.arch == Arch::Llama };
        let src = GgufWeights { gguf: &gguf, path: path.into() };
        let decoder = TextDecoder::load(config, &src, style, device, engine)?;
        Ok(Self::assemble(decoder, tokenizer, chat_template, stop_tokens, path))
    }

    fn load_hf(dir: &Path, device: &B::Device, engine: EngineChoice) -> Result<Self, LoadError> {
        let read = |name: &str| -> Result<Option<String>, LoadError> {
            let p = dir.join(name);
            match crate::capped::read_capped(&p, crate::readers::fields::MAX_CONFIG_BYTES) {
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
        // Special tokens are strings (or {"content": …}) in tokenizer_config.json.
        let token_name = |key: &str| -> Option<String> {
            let v = tok_config.get(key)?;
            v.as_str().map(String::from).or_else(|| v.get("content")?.as_str().map(String::from))
        };
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(LoadError::File { path: tok_path, reason: "missing: a Hugging Face model folder needs tokenizer.json".into() });
        }
        let mut tokenizer = Tokenizer::from_tokenizer_json(&tok_path, None, None, false)
            .map_err(|source| LoadError::Tokenizer { path: tok_path.clone(), source })?;
        let id_of = |key: &str, tokenizer: &Tokenizer| {
            token_name(key)
                .and_then(|t| tokenizer.token_to_id(&t))
                .or_else(|| config_json.get(format!("{key}_id")).and_then(|v| v.as_u64()).map(|v| v as u32))
        };
        tokenizer.bos_id = id_of("bos_token", &tokenizer);
        tokenizer.eos_id = id_of("eos_token", &tokenizer);
        tokenizer.add_bos = tok_config.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        let chat_template = match tok_config.get("chat_template").and_then(|v| v.as_str()) {
            Some(src) => Some(
                ChatTemplate::new(src, &token_name("bos_token").unwrap_or_default(), &token_name("eos_token").unwrap_or_default())
                    .map_err(|source| LoadError::Chat { path: dir.join("tokenizer_config.json"), source })?,
            ),
            None => None,
        };
        let mut stop_tokens: Vec<u32> = tokenizer.eos_id.into_iter().collect();
        let gen_config = json("generation_config.json")?;
        match gen_config.get("eos_token_id") {
            Some(serde_json::Value::Array(a)) => stop_tokens.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32)),
            Some(v) => stop_tokens.extend(v.as_u64().map(|v| v as u32)),
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
}

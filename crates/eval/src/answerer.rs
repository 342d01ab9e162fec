//! What a benchmark asks of the model, and InternLM-XComposer answering it as the original's
//! evaluation code does: the prompt split at `<ImageHere>` (BOS on the first piece only, no meta
//! instruction), generation with 5 beams and 5 new tokens, or SEED's likelihood ranking.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use xcomposer_llm::beam::EmbedGenConfig;
use xcomposer_vision::xcomposer::model::{IMAGE_PLACEHOLDER, Piece};
use xcomposer_vision::xcomposer::{EOA, EOH, XComposer};

use crate::error::EvalError;
use xcomposer_llm::readers::path_io::AtPath;

/// A question's image: a file, or bytes (MMBench's base64), with a key that is the same for
/// every pass over the same image so it is encoded once.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRef {
    /// An image file.
    File(PathBuf),
    /// Image bytes; the path only names them in errors.
    Bytes {
        /// The encoded image (PNG, JPEG, …).
        bytes: Vec<u8>,
        /// What to call them in errors (`file.tsv#index`).
        name: PathBuf,
    },
}

/// A generated answer with the ids it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The answer text, as the original's `generate_answer` cuts it.
    pub text: String,
    /// The returned sequence (`[BOS, new tokens…]`, with EOS where beam search wrote it).
    pub sequence: Vec<u32>,
}

/// The model side of a benchmark run.
pub trait Answerer {
    /// Generates the answer to `prompt` (one `<ImageHere>`), `image_key` naming the image so a
    /// repeated key reuses its encoding.
    fn generate(&mut self, prompt: &str, image_key: &str, image: &dyn Fn() -> Result<ImageRef, EvalError>) -> Result<Generated, EvalError>;
    /// The mean cross-entropy of each candidate appended to `prompt`.
    fn rank(&mut self, prompt: &str, image_key: &str, image: &dyn Fn() -> Result<ImageRef, EvalError>, candidates: &[&str]) -> Result<Vec<f64>, EvalError>;
}

/// The original's decoding for MME and MMBench: `max_new_tokens=5, num_beams=5,
/// repetition_penalty=1.5, length_penalty=1.0`, stop at eoh/eoa.
pub fn eval_gen_config() -> EmbedGenConfig {
    EmbedGenConfig { num_beams: 5, max_new_tokens: 5, repetition_penalty: 1.5, length_penalty: 1.0, bos_id: 1, eos_id: 2, stop_ids: vec![EOH, EOA] }
}

/// The prompt split as the original splits it: `(first piece, rest)` around the one `<ImageHere>`.
pub fn split_prompt(prompt: &str) -> Result<(&str, &str), EvalError> {
    match prompt.split(IMAGE_PLACEHOLDER).collect::<Vec<_>>()[..] {
        [a, b] => Ok((a, b)),
        _ => Err(EvalError::Unsupported(format!("an evaluation prompt holds one {IMAGE_PLACEHOLDER}: {prompt:?}"))),
    }
}

/// The prompt's token ids around the image, as the original tokenizes them: BOS + the first
/// piece, and the rest without special tokens.
pub fn prompt_ids<B: Backend>(model: &XComposer<B>, prompt: &str) -> Result<(Vec<u32>, Vec<u32>), EvalError> {
    let (a, b) = split_prompt(prompt)?;
    let enc = |t: &str, bos| model.tokenizer.encode(t, bos).map_err(|e| EvalError::Unsupported(format!("tokenizing the prompt: {e}")));
    Ok((enc(a, true)?, enc(b, false)?))
}

/// InternLM-XComposer as an [`Answerer`], keeping the last image's embeddings.
pub struct XComposerAnswerer<'a, B: Backend> {
    /// The model.
    pub model: &'a XComposer<B>,
    /// SEED's candidate logits by one prefill per candidate prefix (what the fused engine, which
    /// returns the last position's logits only, needs) instead of burn's cached prompt.
    pub prefill_each_prefix: bool,
    cached: Option<(String, Tensor<B, 3>)>,
}

impl<'a, B: Backend> XComposerAnswerer<'a, B> {
    /// Wraps a loaded model.
    pub fn new(model: &'a XComposer<B>) -> Self {
        XComposerAnswerer { model, prefill_each_prefix: model.text.burn().is_none(), cached: None }
    }

    fn image(&mut self, key: &str, image: &dyn Fn() -> Result<ImageRef, EvalError>) -> Result<Tensor<B, 3>, EvalError> {
        if let Some((k, t)) = &self.cached
            && k == key
        {
            return Ok(t.clone());
        }
        let source = image()?;
        let path = match &source {
            ImageRef::File(p) => p.clone(),
            // Bytes go through a scratch file so every image takes the same path as the
            // original's `Image.open(...).convert("RGB")` (the model reads files).
            ImageRef::Bytes { bytes, .. } => {
                let p = std::env::temp_dir().join(format!("xcomposer-eval-{}.img", std::process::id()));
                std::fs::write(&p, bytes).at(&p)?;
                p
            }
        };
        let t = self.model.encode_image(&path).map_err(|source| EvalError::Model { id: key.into(), source })?;
        self.cached = Some((key.into(), t.clone()));
        Ok(t)
    }

    fn prompt(&mut self, prompt: &str, key: &str, image: &dyn Fn() -> Result<ImageRef, EvalError>) -> Result<Tensor<B, 3>, EvalError> {
        let (a, b) = split_prompt(prompt)?;
        let img = self.image(key, image)?;
        let pieces = [Piece::Text { text: a.into(), bos: true }, Piece::Image(img), Piece::Text { text: b.into(), bos: false }];
        self.model.embed(&pieces).map_err(|source| EvalError::Model { id: key.into(), source })
    }
}

/// The answer text of a returned sequence as `generate_answer` makes it: a leading 0, then a
/// leading 1 dropped, decoded with special tokens kept, cut at eoa, the part after the last
/// `<|Bot|>`, stripped.
pub fn answer_text<B: Backend>(model: &XComposer<B>, sequence: &[u32]) -> String {
    let mut ids = sequence;
    for lead in [0, 1] {
        if ids.first() == Some(&lead) {
            ids = &ids[1..];
        }
    }
    let text = model.tokenizer.decode(ids, false).unwrap_or_default();
    let text = text.split("<TOKENS_UNUSED_1>").next().unwrap_or_default();
    text.rsplit("<|Bot|>").next().unwrap_or_default().trim().to_string()
}

impl<B: Backend> Answerer for XComposerAnswerer<'_, B> {
    fn generate(&mut self, prompt: &str, key: &str, image: &dyn Fn() -> Result<ImageRef, EvalError>) -> Result<Generated, EvalError> {
        let embeds = self.prompt(prompt, key, image)?;
        let out = self.model.decode(embeds, &eval_gen_config()).map_err(|source| EvalError::Model { id: key.into(), source })?;
        Ok(Generated { text: answer_text(self.model, &out.sequence), sequence: out.sequence })
    }

    fn rank(&mut self, prompt: &str, key: &str, image: &dyn Fn() -> Result<ImageRef, EvalError>, candidates: &[&str]) -> Result<Vec<f64>, EvalError> {
        let embeds = self.prompt(prompt, key, image)?;
        let model_err = |source| EvalError::Model { id: key.into(), source };
        let mut losses = vec![];
        let mut cache = None;
        for c in candidates {
            let ids = self.model.tokenizer.encode(c, false).map_err(|e| EvalError::Unsupported(format!("tokenizing {c:?}: {e}")))?;
            self.model.check_context(embeds.dims()[1] + ids.len(), 0).map_err(model_err)?;
            // The logits before each of the candidate's tokens: the prompt's last position, then
            // each candidate prefix's.
            let logits = match self.model.text.burn().filter(|_| !self.prefill_each_prefix) {
                Some(dec) => {
                    let (cache, last) = cache.get_or_insert_with(|| {
                        let mut kv = dec.new_cache();
                        let last = rows(dec.forward_embeds(embeds.clone(), &mut kv, 1));
                        (kv, last)
                    });
                    let mut l = last.clone();
                    if ids.len() > 1 {
                        l.extend(rows(dec.forward_ids(&ids[..ids.len() - 1], &mut cache.clone(), ids.len() - 1)));
                    }
                    l
                }
                None => (0..ids.len()).map(|j| {
                    let prefix = if j == 0 { embeds.clone() } else { Tensor::cat(vec![embeds.clone(), self.model.embed_ids(&ids[..j])?], 1) };
                    self.model.last_logits(prefix)
                }).collect::<Result<Vec<_>, _>>().map_err(model_err)?,
            };
            let ce: f64 = ids.iter().zip(&logits).map(|(&t, row)| cross_entropy(row, t as usize)).sum();
            losses.push(ce / ids.len() as f64);
        }
        Ok(losses)
    }
}

/// The rows of a `[1, n, vocab]` logits tensor.
fn rows<B: Backend>(t: Tensor<B, 3>) -> Vec<Vec<f32>> {
    let [_, n, v] = t.dims();
    let data: Vec<f32> = t.into_data().convert::<f32>().into_vec().expect("f32 logits");
    (0..n).map(|i| data[i * v..(i + 1) * v].to_vec()).collect()
}

/// `-log softmax(row)[target]`, accumulated in f64.
pub fn cross_entropy(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln() - row[target] as f64
}

//! The language side of InternLM-XComposer v1: its checkpoint's LoRA merged into the base
//! weights at load ([`LoraMerged`]), and its tokenizer as the original Hugging Face slow
//! tokenizer applies SentencePiece ([`InternLmTokenizer`]).
//!
//! | checkpoint tensor | decoder key |
//! |---|---|
//! | `internlm_model.model.*`, `internlm_model.lm_head.weight` | `model.*`, `lm_head.weight` |
//! | `internlm_model.model.layers.N.{self_attn.{q,v}_proj, mlp.{up,down}_proj}.lora_{A,B}.weight` | merged: `W += (α/r)·B·A` |
//! | `….self_attn.rotary_emb.inv_freq` (f16) | not read: the decoder computes the same f16-rounded values |

use std::path::Path;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};

use xcomposer_llm::beam::EmbedGenConfig;
use xcomposer_llm::tokenizer::{Tokenizer, TokenizerError};
use xcomposer_llm::weights::{HostTensor, WeightError, WeightSource};

/// A weight source that reads `prefix + name` from another and adds each LoRA pair it finds
/// (`….lora_A.weight` `[r, in]`, `….lora_B.weight` `[out, r]`) to the base weight, in f32.
pub struct LoraMerged<'a> {
    /// The checkpoint.
    pub inner: &'a dyn WeightSource,
    /// Prefix of the language model's keys (`internlm_model.`).
    pub prefix: String,
    /// `lora_alpha / lora_r`; 0 leaves LoRA out.
    pub scale: f32,
}

impl WeightSource for LoraMerged<'_> {
    fn source_name(&self) -> String {
        self.inner.source_name()
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(&format!("{}{name}", self.prefix))
    }

    fn load(&self, name: &str) -> Result<HostTensor, WeightError> {
        let full = format!("{}{name}", self.prefix);
        let mut w = self.inner.load(&full)?;
        let Some(base) = full.strip_suffix(".weight") else { return Ok(w) };
        let (a_name, b_name) = (format!("{base}.lora_A.weight"), format!("{base}.lora_B.weight"));
        if self.scale == 0.0 || !self.inner.contains(&a_name) {
            return Ok(w);
        }
        let [out, inp] = [w.shape[0], w.shape.get(1).copied().unwrap_or(0)];
        let a = self.inner.load(&a_name)?;
        let r = a.shape[0];
        let a = if a.shape == [r, inp] { a } else { return Err(WeightError::Shape { source_name: self.source_name(), name: a_name, found: a.shape, expected: vec![r, inp] }) };
        let b = self.inner.load_shaped(&b_name, &[out, r])?;
        // B·A on the CPU backend's matrix product (the 7B model's are 4096×256×4096).
        let dev = Default::default();
        let bt = Tensor::<Flex, 2>::from_data(TensorData::new(b.data, [out, r]), &dev);
        let at = Tensor::<Flex, 2>::from_data(TensorData::new(a.data, [r, inp]), &dev);
        let delta: Vec<f32> = (bt.matmul(at) * self.scale).into_data().convert::<f32>().into_vec().expect("f32");
        for (x, d) in w.data.iter_mut().zip(delta) {
            *x += d;
        }
        Ok(w)
    }
}

/// `<TOKENS_UNUSED_0>`, end of the human's turn.
pub const EOH: u32 = 103027;
/// `<TOKENS_UNUSED_1>`, end of the assistant's turn.
pub const EOA: u32 = 103028;

/// InternLM-XComposer's `gen_config`: 5 beams, repetition penalty 1.5, length penalty 1,
/// 500 new tokens, stop at eoh/eoa.
pub fn gen_config() -> EmbedGenConfig {
    EmbedGenConfig { num_beams: 5, max_new_tokens: 500, repetition_penalty: 1.5, length_penalty: 1.0, bos_id: 1, eos_id: 2, stop_ids: vec![EOH, EOA] }
}

/// The special tokens the slow tokenizer splits text on, with their ids.
const SPECIAL: [(&str, u32); 3] = [("<unk>", 0), ("<s>", 1), ("</s>", 2)];

/// InternLM-XComposer's tokenizer: SentencePiece BPE over `tokenizer.model`, as HF 4.33.1's slow
/// `InternLMXComposerTokenizer` drives it (see `../shared/fixtures/internlm-tokenizer`).
pub struct InternLmTokenizer {
    /// The SentencePiece model.
    pub sp: Tokenizer,
}

impl InternLmTokenizer {
    /// Reads `tokenizer.model`.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        Ok(InternLmTokenizer { sp: Tokenizer::from_sentencepiece_model(path)? })
    }

    /// Encodes as `tok(text)` (`add_bos`) or `tok(text, add_special_tokens=False)`: the text is
    /// split on `<s>`, `</s>` and `<unk>` (their ids), the whitespace on both sides of each is
    /// stripped, and each remaining piece is encoded by SentencePiece.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = if add_bos { vec![1] } else { vec![] };
        let mut rest = text;
        let mut pending_lstrip = false;
        loop {
            let next = SPECIAL.iter().filter_map(|(s, id)| rest.find(s).map(|at| (at, *s, *id))).min_by_key(|(at, s, _)| (*at, std::cmp::Reverse(s.len())));
            let (chunk, special) = match next {
                Some((at, s, id)) => (&rest[..at], Some((at + s.len(), id))),
                None => (rest, None),
            };
            let mut chunk = if pending_lstrip { chunk.trim_start() } else { chunk };
            if special.is_some() {
                chunk = chunk.trim_end();
            }
            if !chunk.is_empty() {
                ids.extend(self.sp.encode(chunk)?);
            }
            match special {
                Some((end, id)) => {
                    ids.push(id);
                    rest = &rest[end..];
                    pending_lstrip = true;
                }
                None => break,
            }
        }
        Ok(ids)
    }

    /// Decodes as the original tokenizer: `skip_special` drops ids 0, 1 and 2; kept special
    /// tokens are written with a space before a run of them; HF's clean-up is always applied.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let mut out = String::new();
        let mut sub: Vec<u32> = vec![];
        let mut prev_special = false;
        for &id in ids {
            if let Some((s, _)) = SPECIAL.iter().find(|(_, i)| *i == id) {
                if skip_special {
                    continue;
                }
                if !prev_special {
                    out.push(' ');
                }
                out.push_str(&self.sp.decode(&sub, false)?);
                out.push_str(s);
                sub.clear();
                prev_special = true;
            } else {
                sub.push(id);
                prev_special = false;
            }
        }
        out.push_str(&self.sp.decode(&sub, false)?);
        Ok(clean_up_tokenization(&out))
    }
}

/// HF's `clean_up_tokenization`.
pub fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

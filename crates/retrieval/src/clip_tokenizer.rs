//! The CLIP byte-level BPE tokenizer, read from a Hugging Face CLIP folder's `vocab.json` and
//! `merges.txt`, as `CLIPTokenizerFast` applies it: NFC, whitespace runs collapsed to one space
//! and trimmed, lower-cased, split by CLIP's pattern, each piece's bytes mapped to unicode and
//! merged with `</w>` marking the end of a word; `<|startoftext|>` … `<|endoftext|>`, truncated
//! and padded (with `<|endoftext|>`) to the context length.
//!
//! OpenAI's tokenizer also runs `ftfy` and HTML unescaping; the two differ only on inputs such as
//! `&amp;`, ligatures and mojibake.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// Errors reading the tokenizer files.
#[derive(Debug, thiserror::Error)]
pub enum ClipTokenizerError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A tokenized batch: ids and attention mask, `[captions][context]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTokens {
    /// Token ids, padded.
    pub ids: Vec<Vec<u32>>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<Vec<u32>>,
}

/// CLIP's BPE tokenizer.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_chars: [char; 256],
    /// `<|startoftext|>`.
    pub sot: u32,
    /// `<|endoftext|>` (also the padding).
    pub eot: u32,
    /// Tokens per caption, start and end included (77 for every published CLIP).
    pub context: usize,
}

/// CLIP's split pattern, compiled once per process: compiling its Unicode classes took most of a
/// load (over 1 s under the fuzzer's AddressSanitizer). Every tokenizer uses this one regex, not
/// a clone: a clone starts with an empty cache of its lazy DFA, whose states were then built
/// again for each tokenizer loaded (most of the fuzzer's time in the tokenizer target).
static PATTERN: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    Regex::new(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+").expect("a valid pattern")
});

/// GPT-2's reversible map from bytes to printable unicode characters.
fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).expect("a Latin-1 char")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("a valid char")
        };
    }
    out
}

impl ClipTokenizer {
    /// Reads `vocab.json` and `merges.txt` from a CLIP folder; `context` is the text tower's
    /// `max_position_embeddings`.
    pub fn from_dir(dir: &Path, context: usize) -> Result<Self, ClipTokenizerError> {
        let file = |name: &str| -> Result<(PathBuf, String), ClipTokenizerError> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| ClipTokenizerError::File { path: path.clone(), reason: e.to_string() })?;
            Ok((path, text))
        };
        let (vocab_path, vocab_text) = file("vocab.json")?;
        let vocab: HashMap<String, u32> = serde_json::from_str(&vocab_text).map_err(|e| ClipTokenizerError::File { path: vocab_path.clone(), reason: e.to_string() })?;
        let (merges_path, merges_text) = file("merges.txt")?;
        let mut ranks = HashMap::new();
        for (n, line) in merges_text.lines().enumerate() {
            if (n == 0 && line.starts_with("#version")) || line.trim().is_empty() {
                continue;
            }
            let (a, b) = line.split_once(' ').ok_or_else(|| ClipTokenizerError::File { path: merges_path.clone(), reason: format!("line {}: expected two symbols separated by a space, found {line:?}", n + 1) })?;
            ranks.insert((a.to_string(), b.to_string()), ranks.len());
        }
        let special = |t: &str| vocab.get(t).copied().ok_or_else(|| ClipTokenizerError::File { path: vocab_path.clone(), reason: format!("no {t} token") });
        let (sot, eot) = (special("<|startoftext|>")?, special("<|endoftext|>")?);
        if context < 2 {
            return Err(ClipTokenizerError::File { path: dir.join("config.json"), reason: format!("a context of {context} tokens cannot hold the start and end tokens") });
        }
        Ok(ClipTokenizer { vocab, ranks, byte_chars: bytes_to_unicode(), sot, eot, context })
    }

    /// The cleaned text the pattern splits: NFC, whitespace collapsed and trimmed, lower case.
    pub fn clean(text: &str) -> String {
        let nfc: String = text.nfc().collect();
        nfc.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
    }

    /// The BPE ids of one caption, without start/end tokens or truncation.
    pub fn bpe_ids(&self, text: &str) -> Vec<u32> {
        let clean = Self::clean(text);
        let mut ids = Vec::new();
        for m in PATTERN.find_iter(&clean) {
            let piece = m.as_str();
            if let Some(&id) = self.vocab.get(piece).filter(|_| piece.starts_with("<|")) {
                ids.push(id);
                continue;
            }
            let mut word: Vec<String> = piece.bytes().map(|b| self.byte_chars[b as usize].to_string()).collect();
            if let Some(last) = word.last_mut() {
                last.push_str("</w>");
            }
            while word.len() > 1 {
                let best = (0..word.len() - 1).filter_map(|i| self.ranks.get(&(word[i].clone(), word[i + 1].clone())).map(|r| (*r, i))).min();
                let Some((_, i)) = best else { break };
                let (a, b) = (word[i].clone(), word[i + 1].clone());
                // Merge every occurrence of the pair, left to right, as the reference does.
                let mut merged = Vec::with_capacity(word.len());
                let mut j = 0;
                while j < word.len() {
                    if j + 1 < word.len() && word[j] == a && word[j + 1] == b {
                        merged.push(format!("{a}{b}"));
                        j += 2;
                    } else {
                        merged.push(word[j].clone());
                        j += 1;
                    }
                }
                word = merged;
            }
            // Every symbol of a merge result is in the vocabulary; the unknown token is eot.
            ids.extend(word.iter().map(|s| self.vocab.get(s).copied().unwrap_or(self.eot)));
        }
        ids
    }

    /// Tokenizes captions as HF does with `padding="max_length", truncation=True`.
    ///
    /// ```no_run
    /// # let tok = xcomposer_retrieval::clip_tokenizer::ClipTokenizer::from_dir("clip".as_ref(), 77).unwrap();
    /// let t = tok.encode(&["a photo of a cat"]);
    /// assert_eq!(&t.ids[0][..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    /// ```
    pub fn encode(&self, captions: &[&str]) -> ClipTokens {
        let mut out = ClipTokens { ids: Vec::with_capacity(captions.len()), mask: Vec::with_capacity(captions.len()) };
        for c in captions {
            let mut ids = vec![self.sot];
            ids.extend(self.bpe_ids(c).into_iter().take(self.context - 2));
            ids.push(self.eot);
            let mut mask = vec![1; ids.len()];
            ids.resize(self.context, self.eot);
            mask.resize(self.context, 0);
            out.ids.push(ids);
            out.mask.push(mask);
        }
        out
    }
}

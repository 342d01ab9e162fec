//! Tokenizers: byte-level BPE (GGUF `gpt2` type, or any Hugging Face `tokenizer.json`) and
//! SentencePiece-style BPE over scored pieces (GGUF `llama` type), with a streaming decoder.

use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::gguf::Gguf;

/// Errors from building or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The GGUF metadata did not describe a tokenizer we can build.
    #[error("tokenizer metadata: {0}")]
    Metadata(String),
    /// A `tokenizer.json` could not be loaded.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A tokenizer file could not be read (missing, not a regular file, over the size limit).
    #[error(transparent)]
    Read(#[from] crate::readers::WeightError),
    /// Encoding or decoding failed inside the tokenizers library.
    #[error("tokenizer: {0}")]
    Library(String),
}

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_NORMAL: i64 = 1;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
const TOKEN_BYTE: i64 = 6;

/// Pre-tokenizer regexes of the byte-level BPE families, by `tokenizer.ggml.pre`.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A text tokenizer with its special tokens.
pub struct Tokenizer {
    inner: Inner,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_id: Option<u32>,
    /// End-of-sequence token, if the model has one.
    pub eos_id: Option<u32>,
    /// Whether the model expects BOS at the start of a raw prompt.
    pub add_bos: bool,
}

enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    Spm(SentencePiece),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            Inner::Hf(_) => "byte-level BPE",
            Inner::Spm(_) => "SentencePiece",
        };
        f.debug_struct("Tokenizer").field("kind", &kind).field("vocab", &self.vocab_size()).finish()
    }
}

fn int_array(g: &Gguf, key: &str) -> Result<Option<Vec<i64>>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => {
            let bad = || TokenizerError::Metadata(format!("'{key}' must be an array of integers"));
            let arr = v.as_array().ok_or_else(bad)?;
            arr.iter().map(|e| e.as_i64().ok_or_else(bad)).collect::<Result<_, _>>().map(Some)
        }
    }
}

fn opt_id(g: &Gguf, key: &str, vocab: usize) -> Result<Option<u32>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(id) if (id as usize) < vocab => Ok(Some(id as u32)),
            _ => Err(TokenizerError::Metadata(format!("'{key}' = {v:?} is not a token id below {vocab}"))),
        },
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*`).
    pub fn from_gguf(g: &Gguf) -> Result<Self, TokenizerError> {
        let meta = |e: crate::readers::WeightError| TokenizerError::Metadata(e.to_string());
        let model = g.get_str("tokenizer.ggml.model").map_err(meta)?;
        let tokens = g.get_str_array("tokenizer.ggml.tokens").map_err(meta)?;
        let n = tokens.len();
        let types = int_array(g, "tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![TOKEN_NORMAL; n]);
        if types.len() != n {
            return Err(TokenizerError::Metadata(format!(
                "'tokenizer.ggml.token_type' has {} entries for {n} tokens",
                types.len()
            )));
        }
        let bos_id = opt_id(g, "tokenizer.ggml.bos_token_id", n)?;
        let eos_id = opt_id(g, "tokenizer.ggml.eos_token_id", n)?;
        let flag = |key: &str, default: bool| g.get(key).and_then(|v| v.as_bool()).unwrap_or(default);
        let inner = match model {
            "gpt2" => {
                let merges = g.get_str_array("tokenizer.ggml.merges").map_err(meta)?;
                let pre = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
                Inner::Hf(Box::new(byte_level_bpe(&tokens, &types, &merges, pre)?))
            }
            "llama" => {
                let scores = match g.get("tokenizer.ggml.scores") {
                    Some(v) => {
                        let bad = || TokenizerError::Metadata("'tokenizer.ggml.scores' must be an array of floats".into());
                        let a = v.as_array().ok_or_else(bad)?;
                        a.iter().map(|e| e.as_f64().map(|x| x as f32).ok_or_else(bad)).collect::<Result<Vec<_>, _>>()?
                    }
                    None => vec![0.0; n],
                };
                if scores.len() != n {
                    return Err(TokenizerError::Metadata(format!("'tokenizer.ggml.scores' has {} entries for {n} tokens", scores.len())));
                }
                let add_space_prefix = flag("tokenizer.ggml.add_space_prefix", true);
                Inner::Spm(SentencePiece::new(&tokens, &scores, &types, add_space_prefix))
            }
            other => {
                return Err(TokenizerError::Metadata(format!(
                    "'tokenizer.ggml.model' = '{other}' is not supported (expected 'gpt2' or 'llama')"
                )));
            }
        };
        let add_bos = flag("tokenizer.ggml.add_bos_token", model == "llama");
        Ok(Tokenizer { inner, bos_id, eos_id, add_bos })
    }

    /// Loads a SentencePiece `tokenizer.model` (BPE with scored pieces, byte fallback), as
    /// SentencePiece itself encodes; `<s>`/`</s>` ids come from the pieces of those names.
    pub fn from_sentencepiece_model(path: &Path) -> Result<Self, TokenizerError> {
        let file_err = |reason: String| TokenizerError::File { path: path.display().to_string(), reason };
        let bytes = read_tokenizer_file(path)?;
        let model = sentencepiece_proto::parse(&bytes).map_err(file_err)?;
        let tokens: Vec<&str> = model.pieces.iter().map(|p| p.0.as_str()).collect();
        let scores: Vec<f32> = model.pieces.iter().map(|p| p.1).collect();
        let types: Vec<i64> = model.pieces.iter().map(|p| p.2).collect();
        let spm = SentencePiece::new(&tokens, &scores, &types, model.add_dummy_prefix);
        let bos_id = spm.ids.get("<s>").copied();
        let eos_id = spm.ids.get("</s>").copied();
        Ok(Tokenizer { inner: Inner::Spm(spm), bos_id, eos_id, add_bos: true })
    }

    /// Loads a Hugging Face `tokenizer.json`; special token ids come from the caller's config.
    /// Its padding and truncation settings are dropped: a prompt is encoded whole (the context
    /// is checked by the generator), and a padding length from the file (`Fixed: 2000000000`)
    /// would otherwise be allocated on every encode.
    pub fn from_tokenizer_json(path: &Path, bos_id: Option<u32>, eos_id: Option<u32>, add_bos: bool) -> Result<Self, TokenizerError> {
        let bytes = read_tokenizer_file(path)?;
        let file_err = |e: &dyn std::fmt::Display| TokenizerError::File { path: path.display().to_string(), reason: e.to_string() };
        // The JSON is parsed whole first (strings and escapes too, which skipping it with
        // IgnoredAny does not check): tokenizers 0.23 panics (`expect("Helper")`) on invalid JSON
        // inside its `decoder` object instead of returning the error.
        let json = serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| file_err(&e))?;
        check_json_merges(&json).map_err(|e| file_err(&e))?;
        let mut tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| file_err(&e))?;
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| TokenizerError::Library(e.to_string()))?;
        Ok(Tokenizer { inner: Inner::Hf(Box::new(tok)), bos_id, eos_id, add_bos })
    }

    /// Encodes text into token ids. Special tokens written in the text (`<|im_start|>`) become
    /// their ids; no BOS is added (see [`Tokenizer::encode_prompt`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.inner {
            Inner::Hf(t) => {
                let enc = t.encode(text, false).map_err(|e| TokenizerError::Library(e.to_string()))?;
                Ok(enc.get_ids().to_vec())
            }
            Inner::Spm(s) => Ok(s.encode(text)),
        }
    }

    /// Encodes a prompt, prepending BOS when the model asks for it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            ids.push(bos);
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Decodes ids into text; control tokens are dropped when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        match &self.inner {
            Inner::Hf(t) => t.decode(ids, skip_special).map_err(|e| TokenizerError::Library(e.to_string())),
            Inner::Spm(s) => Ok(s.decode(ids, skip_special)),
        }
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.token_to_id(token),
            Inner::Spm(s) => s.ids.get(token).copied(),
        }
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Hf(t) => t.id_to_token(id),
            Inner::Spm(s) => s.pieces.get(id as usize).cloned(),
        }
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json` (byte-level BPE tokenizers only).
    pub fn save_json(&self, path: &Path) -> Result<(), TokenizerError> {
        match &self.inner {
            Inner::Hf(t) => t
                .save(path, true)
                .map_err(|e| TokenizerError::File { path: path.display().to_string(), reason: e.to_string() }),
            Inner::Spm(_) => Err(TokenizerError::File {
                path: path.display().to_string(),
                reason: "a SentencePiece vocabulary from GGUF cannot be written as tokenizer.json".into(),
            }),
        }
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab_size(true),
            Inner::Spm(s) => s.pieces.len(),
        }
    }
}

/// The largest tokenizer file read (`tokenizer.json`, `tokenizer.model`); published ones are
/// under 40 MiB.
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// The cap of tokenizer files: [`MAX_TOKENIZER_BYTES`], raised by `XCOMPOSER_MAX_TOKENIZER_BYTES`.
pub const TOKENIZER_CAP: crate::capped::Cap = crate::capped::Cap { var: "XCOMPOSER_MAX_TOKENIZER_BYTES", default: MAX_TOKENIZER_BYTES };

/// Reads a tokenizer file: a regular file within [`TOKENIZER_CAP`].
fn read_tokenizer_file(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    Ok(crate::capped::read_within(path, TOKENIZER_CAP)?)
}

/// Checks the merges of a BPE vocabulary before tokenizers builds it: each merge's two parts
/// and what they join into (the second part without the continuing-subword `prefix`) must be
/// tokens. tokenizers 0.23 copies every join into a buffer as long as the longest token before
/// looking it up, so a join longer than every token panicked (found by the tokenizer fuzz
/// target), and a second part shorter than the prefix underflowed.
fn check_merges<'a>(is_token: impl Fn(&str) -> bool, merges: impl Iterator<Item = (usize, &'a str, &'a str)>, prefix: &str, merges_name: &str, vocab_name: &str) -> Result<(), String> {
    for (i, a, b) in merges {
        let joined = b.get(prefix.len()..).filter(|_| b.starts_with(prefix)).map(|rest| format!("{a}{rest}"));
        match joined {
            Some(j) if is_token(a) && is_token(b) && is_token(&j) => {}
            Some(j) => return Err(format!("{merges_name}[{i}]: {a:?} + {b:?} (joining into {j:?}) are not all in {vocab_name}")),
            None => return Err(format!("{merges_name}[{i}]: {b:?} does not start with the continuing-subword prefix {prefix:?}")),
        }
    }
    Ok(())
}

/// [`check_merges`] for a `tokenizer.json` whose model is BPE (merges as "a b" strings or
/// ["a", "b"] pairs); other models, and merges that tokenizers itself refuses, pass.
fn check_json_merges(json: &serde_json::Value) -> Result<(), String> {
    let model = &json["model"];
    let (Some(vocab), Some(merges)) = (model["vocab"].as_object(), model["merges"].as_array()) else { return Ok(()) };
    if model.get("type").and_then(|t| t.as_str()).is_some_and(|t| t != "BPE") {
        return Ok(());
    }
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    let pairs = merges.iter().enumerate().filter_map(|(i, m)| match m {
        serde_json::Value::String(s) => match s.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Some((i, a, b)),
            _ => None,
        },
        serde_json::Value::Array(p) => match &p[..] {
            [serde_json::Value::String(a), serde_json::Value::String(b)] => Some((i, a.as_str(), b.as_str())),
            _ => None,
        },
        _ => None,
    });
    check_merges(|t| vocab.contains_key(t), pairs, prefix, "model.merges", "model.vocab")
}

fn byte_level_bpe(tokens: &[&str], types: &[i64], merges: &[&str], pre: &str) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let lib = |e: tokenizers::Error| TokenizerError::Library(e.to_string());
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::Metadata(format!("merge '{m}' in 'tokenizer.ggml.merges' has no space")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pairs = merges.iter().enumerate().map(|(i, (a, b))| (i, a.as_str(), b.as_str()));
    check_merges(|t| vocab.contains_key(t), pairs, "", "tokenizer.ggml.merges", "tokenizer.ggml.tokens").map_err(TokenizerError::Metadata)?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(lib)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let split = |re: &str| -> Result<_, TokenizerError> {
        let split = Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false).map_err(lib)?;
        Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]))
    };
    match pre {
        "default" | "gpt2" | "gpt-2" => {
            tok.with_pre_tokenizer(Some(byte_level));
        }
        "smollm" => {
            tok.with_pre_tokenizer(Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()])));
        }
        "qwen2" => {
            tok.with_pre_tokenizer(Some(split(QWEN2_SPLIT)?));
        }
        "llama-bpe" | "llama3" => {
            tok.with_pre_tokenizer(Some(split(LLAMA3_SPLIT)?));
        }
        other => {
            return Err(TokenizerError::Metadata(format!(
                "'tokenizer.ggml.pre' = '{other}' is not supported (known: default, gpt2, smollm, qwen2, llama-bpe); \
                 use the model's Hugging Face folder with its tokenizer.json instead"
            )));
        }
    }
    tok.with_decoder(Some(ByteLevel::default()));
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, t)| **t == TOKEN_CONTROL || **t == TOKEN_USER_DEFINED)
        .map(|(s, t)| AddedToken::from(s.to_string(), *t == TOKEN_CONTROL))
        .collect();
    tok.add_special_tokens(added).map_err(lib)?;
    Ok(tok)
}

/// SentencePiece-style BPE over scored pieces (llama.cpp's `llama` vocabulary type): merges the
/// adjacent pair whose joined piece has the highest score until none is left, with byte fallback.
struct SentencePiece {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i64>,
    ids: HashMap<String, u32>,
    /// Control and user-defined pieces, matched literally in the input, longest first.
    specials: Vec<(String, u32)>,
    byte_ids: [Option<u32>; 256],
    add_space_prefix: bool,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Highest score first; on ties, the leftmost pair.
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl SentencePiece {
    fn new(tokens: &[&str], scores: &[f32], types: &[i64], add_space_prefix: bool) -> Self {
        let pieces: Vec<String> = tokens.iter().map(|s| s.to_string()).collect();
        let ids = pieces.iter().enumerate().map(|(i, p)| (p.clone(), i as u32)).collect();
        let mut specials: Vec<(String, u32)> = pieces
            .iter()
            .zip(types)
            .enumerate()
            .filter(|(_, (p, t))| (**t == TOKEN_CONTROL || **t == TOKEN_USER_DEFINED) && !p.is_empty())
            .map(|(i, (p, _))| (p.clone(), i as u32))
            .collect();
        specials.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mut byte_ids = [None; 256];
        for (i, (p, t)) in pieces.iter().zip(types).enumerate() {
            if *t == TOKEN_BYTE
                && let Some(hex) = p.strip_prefix("<0x").and_then(|r| r.strip_suffix('>'))
                && let Ok(b) = u8::from_str_radix(hex, 16)
            {
                byte_ids[b as usize] = Some(i as u32);
            }
        }
        SentencePiece { pieces, scores: scores.to_vec(), types: types.to_vec(), ids, specials, byte_ids, add_space_prefix }
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        let mut first = true;
        while !rest.is_empty() {
            // Find the earliest special token in the remaining text.
            let hit = self
                .specials
                .iter()
                .filter_map(|(p, id)| rest.find(p.as_str()).map(|at| (at, p.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            let (plain, special) = match hit {
                Some((at, len, id)) => (&rest[..at], Some((len, id))),
                None => (rest, None),
            };
            if !plain.is_empty() {
                self.encode_plain(plain, first, &mut out);
            }
            first = false;
            match special {
                Some((len, id)) => {
                    out.push(id);
                    rest = &rest[plain.len() + len..];
                }
                None => break,
            }
        }
        out
    }

    fn encode_plain(&self, text: &str, at_start: bool, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && at_start {
            s.push('▁');
        }
        s.push_str(&text.replace(' ', "▁"));
        // Symbols: byte ranges of the string, linked left/right.
        let mut start: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
        let n = start.len();
        start.push(s.len());
        let mut len: Vec<usize> = (0..n).map(|i| start[i + 1] - start[i]).collect();
        let mut prev: Vec<isize> = (0..n as isize).map(|i| i - 1).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut heap = BinaryHeap::new();
        let try_push = |heap: &mut BinaryHeap<Bigram>, left: usize, right: usize, len: &[usize], start: &[usize]| {
            if right >= n {
                return;
            }
            let piece = &s[start[left]..start[right] + len[right]];
            if let Some(&id) = self.ids.get(piece) {
                heap.push(Bigram { score: self.scores[id as usize], left, len: piece.len() });
            }
        };
        for i in 1..n {
            try_push(&mut heap, i - 1, i, &len, &start);
        }
        while let Some(b) = heap.pop() {
            let right = next[b.left];
            // Stale entry: one side was merged since it was pushed.
            if len[b.left] == 0 || right >= n || len[b.left] + len[right] != b.len {
                continue;
            }
            len[b.left] += len[right];
            len[right] = 0;
            next[b.left] = next[right];
            if next[right] < n {
                prev[next[right]] = b.left as isize;
            }
            if prev[b.left] >= 0 {
                try_push(&mut heap, prev[b.left] as usize, b.left, &len, &start);
            }
            try_push(&mut heap, b.left, next[b.left], &len, &start);
        }
        let mut i = 0;
        while i < n {
            let piece = &s[start[i]..start[i] + len[i]];
            match self.ids.get(piece) {
                Some(&id) if self.types[id as usize] != TOKEN_CONTROL => out.push(id),
                _ => {
                    for &byte in piece.as_bytes() {
                        // A byte with no piece maps to token 0 (unknown), as llama.cpp does.
                        out.push(self.byte_ids[byte as usize].unwrap_or(0));
                    }
                }
            }
            i = next[i];
        }
    }

    fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            let Some(piece) = self.pieces.get(id as usize) else { continue };
            match self.types[id as usize] {
                TOKEN_BYTE => {
                    if let Some(b) = self.byte_ids.iter().position(|&x| x == Some(id)) {
                        bytes.push(b as u8);
                    }
                }
                TOKEN_CONTROL if skip_special => {}
                TOKEN_CONTROL => bytes.extend_from_slice(piece.as_bytes()),
                _ => {
                    let text = piece.replace('▁', " ");
                    let text = if k == 0 && self.add_space_prefix { text.strip_prefix(' ').unwrap_or(&text).to_string() } else { text };
                    bytes.extend_from_slice(text.as_bytes());
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// At most this many ids wait in a [`StreamDecoder`] for their text to complete. Ordinary text
/// needs at most four (the bytes of one character); more come only from ids that produce no
/// text (skipped control tokens, ids out of the vocabulary), bytes that form no character, or
/// a decoder that rewrites text it already gave.
pub const MAX_PENDING_IDS: usize = 16;

/// The ids kept before the pending ones after a [`MAX_PENDING_IDS`] flush, so that a decoder
/// that looks at the tokens before (SentencePiece's leading space, byte fallback) still sees
/// some.
const FLUSH_CONTEXT_IDS: usize = 4;

/// Turns a growing list of token ids into text pieces that are always valid UTF-8, for streaming.
///
/// It decodes a small window of recent ids and emits only text that is complete (does not end in
/// a partial character), so multi-token characters such as emoji come out whole. The window is
/// the ids of the last piece emitted (their text, decoded once, is the part of the window's
/// text already given) and the ids pending since; each push decodes the window once. Pending
/// ids are at most [`MAX_PENDING_IDS`]: when that many complete no text, whatever text they
/// make is emitted as it is (a partial character as U+FFFD) and the window restarts from the
/// last [`FLUSH_CONTEXT_IDS`] of them, so a push decodes at most `2 × MAX_PENDING_IDS` ids
/// (a piece's ids, then the pending ones), however long the run of ids without text.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// The context ids, then the pending ones.
    window: Vec<u32>,
    /// How many ids of `window` are context.
    context: usize,
    /// The decoded text of the context ids (already emitted).
    context_text: String,
}

impl StreamDecoder {
    /// A decoder with no tokens yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token; returns the new text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>, TokenizerError> {
        self.window.push(id);
        let now = tok.decode(&self.window, true)?;
        let new = now.strip_prefix(self.context_text.as_str()).filter(|n| !n.is_empty() && !n.ends_with('\u{FFFD}'));
        if let Some(new) = new {
            let new = new.to_string();
            self.restart(tok, self.context)?;
            return Ok(Some(new));
        }
        if self.window.len() - self.context < MAX_PENDING_IDS {
            return Ok(None);
        }
        // A decoder that rewrote text it had given (the window's text no longer starts with
        // it): what follows the part they share.
        let shared = self.context_text.char_indices().zip(now.char_indices()).find(|((_, a), (_, b))| a != b);
        let shared = shared.map_or(self.context_text.len().min(now.len()), |((at, _), _)| at);
        let new = now[shared..].to_string();
        self.restart(tok, self.window.len() - FLUSH_CONTEXT_IDS.min(self.window.len()))?;
        Ok((!new.is_empty()).then_some(new))
    }

    /// Drops the window's first `from` ids; the rest become the context.
    fn restart(&mut self, tok: &Tokenizer, from: usize) -> Result<(), TokenizerError> {
        self.window.drain(..from);
        self.context = self.window.len();
        self.context_text = tok.decode(&self.window, true)?;
        Ok(())
    }

    /// How many ids the next push decodes besides its own (the ids of the last piece emitted,
    /// then those pending since): less than `2 × MAX_PENDING_IDS`.
    pub fn window_len(&self) -> usize {
        self.window.len()
    }
}

/// The parts of SentencePiece's `ModelProto` (protocol buffers) that encoding needs.
mod sentencepiece_proto {
    /// Pieces (text, score, type) and whether a space is prepended to the input.
    pub struct Model {
        pub pieces: Vec<(String, f32, i64)>,
        pub add_dummy_prefix: bool,
    }

    struct Reader<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn varint(&mut self) -> Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let byte = *self.b.get(self.pos).ok_or("truncated varint")?;
                self.pos += 1;
                v |= ((byte & 0x7F) as u64) << shift;
                if byte & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("varint longer than 10 bytes".into())
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("truncated field")?;
            let s = &self.b[self.pos..end];
            self.pos = end;
            Ok(s)
        }

        /// Next (field number, wire type, payload); varints come back as their 8 LE bytes.
        fn field(&mut self) -> Result<Option<(u64, u8, Vec<u8>)>, String> {
            if self.pos >= self.b.len() {
                return Ok(None);
            }
            let key = self.varint()?;
            let (field, wire) = (key >> 3, (key & 7) as u8);
            let payload = match wire {
                0 => self.varint()?.to_le_bytes().to_vec(),
                1 => self.take(8)?.to_vec(),
                2 => {
                    let n = self.varint()? as usize;
                    self.take(n)?.to_vec()
                }
                5 => self.take(4)?.to_vec(),
                w => return Err(format!("unsupported protobuf wire type {w}")),
            };
            Ok(Some((field, wire, payload)))
        }
    }

    fn fields(b: &[u8]) -> Result<Vec<(u64, u8, Vec<u8>)>, String> {
        let mut r = Reader { b, pos: 0 };
        let mut out = Vec::new();
        while let Some(f) = r.field()? {
            out.push(f);
        }
        Ok(out)
    }

    fn varint_value(p: &[u8]) -> u64 {
        u64::from_le_bytes(p.try_into().unwrap_or([0; 8]))
    }

    pub fn parse(bytes: &[u8]) -> Result<Model, String> {
        let mut pieces = Vec::new();
        let mut add_dummy_prefix = true;
        for (field, wire, payload) in fields(bytes).map_err(|e| format!("not a SentencePiece model: {e}"))? {
            match (field, wire) {
                (1, 2) => {
                    let (mut piece, mut score, mut ty) = (None, 0f32, 1i64);
                    for (f, w, p) in fields(&payload)? {
                        match (f, w) {
                            (1, 2) => piece = Some(String::from_utf8(p).map_err(|_| "a piece is not UTF-8")?),
                            (2, 5) => score = f32::from_le_bytes(p.try_into().map_err(|_| "bad score")?),
                            (3, 0) => ty = varint_value(&p) as i64,
                            _ => {}
                        }
                    }
                    pieces.push((piece.ok_or("a piece has no text")?, score, ty));
                }
                (3, 2) => {
                    for (f, w, p) in fields(&payload)? {
                        if (f, w) == (3, 0) {
                            add_dummy_prefix = varint_value(&p) != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        if pieces.is_empty() {
            return Err("no pieces: not a SentencePiece model".into());
        }
        Ok(Model { pieces, add_dummy_prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE `tokenizer.json` of the letters of "hi" (ids 0, 1), with `padding`.
    fn json_with_padding(padding: &str) -> String {
        let byte_level = r#"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}"#;
        format!(
            r#"{{"version": "1.0", "truncation": {{"direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 0}},
            "padding": {padding}, "added_tokens": [], "normalizer": null, "pre_tokenizer": {byte_level},
            "post_processor": null, "decoder": {byte_level}, "model": {{"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": {{"h": 0, "i": 1}}, "merges": []}}}}"#
        )
    }

    #[test]
    fn tokenizer_json_padding_and_truncation_are_not_applied() {
        let dir = std::env::temp_dir().join(format!("xcomposer-tokjson-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        let padding = r#"{"strategy": {"Fixed": 100}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 1, "pad_type_id": 0, "pad_token": "i"}"#;
        std::fs::write(&path, json_with_padding(padding)).unwrap();
        let tok = Tokenizer::from_tokenizer_json(&path, None, None, false).unwrap();
        // Without the fix: truncated to 1 id, then padded to 100.
        assert_eq!(tok.encode("hi").unwrap(), [0, 1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bpe_merges_that_join_into_no_token_are_refused_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("xcomposer-tokmerge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        let json = |vocab: &str, merges: &str, prefix: &str| {
            format!(
                r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
                "post_processor": null, "decoder": null, "model": {{"type": "BPE", "vocab": {vocab}, "merges": {merges}, "continuing_subword_prefix": {prefix}}}}}"#
            )
        };
        // Before: a panic in tokenizers, which copies each join into a buffer as long as the
        // longest token ("ab" into 1 byte here; the fuzz input had the same shape).
        std::fs::write(&path, json(r#"{"a": 0, "b": 1}"#, r#"["a b"]"#, "null")).unwrap();
        let e = Tokenizer::from_tokenizer_json(&path, None, None, false).err().unwrap().to_string();
        assert_eq!(e, format!(r#"{}: model.merges[0]: "a" + "b" (joining into "ab") are not all in model.vocab"#, path.display()));
        std::fs::write(&path, json(r#"{"a": 0, "@": 1, "a@": 2}"#, r#"[["a", "@"]]"#, r#""@@""#)).unwrap();
        let e = Tokenizer::from_tokenizer_json(&path, None, None, false).err().unwrap().to_string();
        assert_eq!(e, format!(r#"{}: model.merges[0]: "@" does not start with the continuing-subword prefix "@@""#, path.display()));
        // Merges whose joins are tokens pass.
        std::fs::write(&path, json(r#"{"a": 0, "b": 1, "ab": 2}"#, r#"["a b"]"#, "null")).unwrap();
        assert!(Tokenizer::from_tokenizer_json(&path, None, None, false).is_ok());
        std::fs::write(&path, json(r#"{"a": 0, "@@b": 1, "ab": 2}"#, r#"[["a", "@@b"]]"#, r#""@@""#)).unwrap();
        assert!(Tokenizer::from_tokenizer_json(&path, None, None, false).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A SentencePiece tokenizer: unknown, BOS and EOS (control), the bytes of "你" and 0xFF,
    /// "▁Hello", "▁world", "!".
    fn small_spm() -> Tokenizer {
        let tokens = ["<unk>", "<s>", "</s>", "<0xE4>", "<0xBD>", "<0xA0>", "<0xFF>", "▁Hello", "▁world", "!"];
        let types = [2, TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_BYTE, TOKEN_BYTE, TOKEN_BYTE, TOKEN_BYTE, 1, 1, 1];
        let spm = SentencePiece::new(&tokens, &[0.0; 10], &types, true);
        Tokenizer { inner: Inner::Spm(spm), bos_id: Some(1), eos_id: Some(2), add_bos: true }
    }

    /// The streaming decoder as it was before its window was bounded: each push decodes every
    /// id since the last piece but one, twice. The reference for text that completes.
    fn unbounded_stream(tok: &Tokenizer, ids: &[u32]) -> Vec<Option<String>> {
        let (mut prefix, mut read) = (0, 0);
        let mut out = Vec::new();
        for end in 1..=ids.len() {
            let before = tok.decode(&ids[prefix..read], true).unwrap();
            let now = tok.decode(&ids[prefix..end], true).unwrap();
            let new = now.strip_prefix(before.as_str()).filter(|n| !n.is_empty() && !n.ends_with('\u{FFFD}'));
            out.push(new.map(|n| n.to_string()));
            if new.is_some() {
                (prefix, read) = (read, end);
            }
        }
        out
    }

    /// Streams `ids`; the pieces, and the longest window seen.
    fn stream(tok: &Tokenizer, ids: &[u32]) -> (Vec<Option<String>>, usize) {
        let mut s = StreamDecoder::new();
        let mut longest = 0;
        let pieces = ids
            .iter()
            .map(|&id| {
                let piece = s.push(tok, id).unwrap();
                longest = longest.max(s.window_len());
                piece
            })
            .collect();
        (pieces, longest)
    }

    #[test]
    fn text_streams_in_the_same_pieces_as_the_unbounded_window() {
        let tok = small_spm();
        let (bos, eos, e4, bd, a0, hello, world, bang) = (1, 2, 3, 4, 5, 7, 8, 9);
        let texts: [&[u32]; 4] = [
            &[hello, world, bang],
            &[bos, hello, e4, bd, a0, world, eos],
            &[hello, e4, bd, a0, e4, bd, a0, bang],
            // A few ids without text between words (control tokens, ids out of the vocabulary).
            &[hello, eos, 70_000, bos, u32::MAX, world, 12, e4, bd, eos, a0],
        ];
        for ids in texts {
            let (pieces, _) = stream(&tok, ids);
            assert_eq!(pieces, unbounded_stream(&tok, ids), "{ids:?}");
            let text: String = pieces.into_iter().flatten().collect();
            assert_eq!(text, tok.decode(ids, true).unwrap(), "{ids:?}");
        }
        let (pieces, _) = stream(&tok, &[hello, e4, bd, a0]);
        assert_eq!(pieces, [Some("Hello".to_string()), None, None, Some("你".to_string())]);
    }

    #[test]
    fn a_long_run_of_ids_without_text_keeps_the_window_bounded() {
        let tok = small_spm();
        let (eos, ff, hello, world) = (2, 6, 7, 8);
        // 20,000 ids that make no text: skipped control tokens and ids out of the vocabulary.
        let mut ids: Vec<u32> = (0..20_000u32).map(|i| if i % 2 == 0 { eos } else { 100 + i }).collect();
        ids.extend([hello, world]);
        let (pieces, longest) = stream(&tok, &ids);
        assert!(longest < 2 * MAX_PENDING_IDS, "window of {longest} ids");
        assert!(pieces[..20_000].iter().all(|p| p.is_none()));
        // What the unbounded window gave: the first id is a control token, so "▁Hello" keeps its
        // space.
        assert_eq!(pieces[20_000..], [Some(" Hello".to_string()), Some(" world".to_string())]);
        let short: Vec<u32> = ids[..200].iter().chain(&ids[20_000..]).copied().collect();
        assert_eq!(stream(&tok, &short).0, unbounded_stream(&tok, &short));

        // 20,000 bytes that form no character: the unbounded window never emitted them (its
        // text always ended in U+FFFD) and decoded up to all 20,000 on each push; now they come
        // out in pieces of MAX_PENDING_IDS replacement characters, and the text after them too.
        let mut ids = vec![ff; 20_000];
        ids.push(hello);
        let (pieces, longest) = stream(&tok, &ids);
        assert!(longest < 2 * MAX_PENDING_IDS, "window of {longest} ids");
        let fffd = "\u{FFFD}".repeat(MAX_PENDING_IDS);
        assert_eq!(pieces.iter().flatten().filter(|p| **p == fffd).count(), 20_000 / MAX_PENDING_IDS);
        assert_eq!(pieces.last().unwrap().as_deref(), Some(" Hello"));
        assert_eq!(pieces.into_iter().flatten().collect::<String>(), tok.decode(&ids, true).unwrap());
    }

    /// A GGUF `gpt2` tokenizer of `tokens` and `merges`.
    fn gguf_bpe(tokens: &[&str], merges: &[&str]) -> Result<Tokenizer, TokenizerError> {
        let strings = |items: &[&str]| {
            let mut out = 8u32.to_le_bytes().to_vec();
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            out
        };
        let g = crate::gguf::tests::Builder::new()
            .kv_str("tokenizer.ggml.model", "gpt2")
            .kv_raw("tokenizer.ggml.tokens", 9, strings(tokens))
            .kv_raw("tokenizer.ggml.merges", 9, strings(merges))
            .build();
        Tokenizer::from_gguf(&Gguf::from_bytes(g).unwrap())
    }

    #[test]
    fn gguf_bpe_merges_that_join_into_no_token_are_refused_not_a_panic() {
        // Before the check: a panic in tokenizers ("ab" copied into a buffer as long as the
        // longest token, 1 byte).
        let e = gguf_bpe(&["a", "b"], &["a b"]).unwrap_err().to_string();
        assert_eq!(e, r#"tokenizer metadata: tokenizer.ggml.merges[0]: "a" + "b" (joining into "ab") are not all in tokenizer.ggml.tokens"#);
        let e = gguf_bpe(&["a", "b", "ab"], &["ab"]).unwrap_err().to_string();
        assert_eq!(e, "tokenizer metadata: merge 'ab' in 'tokenizer.ggml.merges' has no space");
        let tok = gguf_bpe(&["a", "b", "ab"], &["a b"]).unwrap();
        assert_eq!(tok.encode("ab").unwrap(), [2]);
    }

    #[test]
    fn a_tokenizer_file_over_the_cap_is_refused_naming_its_variable() {
        let dir = std::env::temp_dir().join(format!("xcomposer-tokcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["tokenizer.json", "tokenizer.model"] {
            let path = dir.join(name);
            // A sparse file one byte over the cap: nothing is written or read.
            std::fs::File::create(&path).unwrap().set_len(MAX_TOKENIZER_BYTES + 1).unwrap();
            let e = match name {
                "tokenizer.json" => Tokenizer::from_tokenizer_json(&path, None, None, false).unwrap_err(),
                _ => Tokenizer::from_sentencepiece_model(&path).unwrap_err(),
            };
            let expected = format!("{}: larger than the limit of 268435456 bytes (raise it with the environment variable XCOMPOSER_MAX_TOKENIZER_BYTES)", path.display());
            assert_eq!(e.to_string(), expected);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokenizer_files_are_read_as_regular_files_only() {
        let e = Tokenizer::from_tokenizer_json(Path::new("/dev/zero"), None, None, false).unwrap_err().to_string();
        assert!(e.starts_with("/dev/zero: not a regular file"), "{e}");
        let e = Tokenizer::from_sentencepiece_model(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.starts_with("/dev/zero: not a regular file"), "{e}");
    }
}

//! Every token's bytes, in a trie, so that one walk finds the tokens a grammar state allows
//! (shared prefixes are read once, and a refused prefix prunes all tokens that start with it).

use std::sync::Arc;

use super::{Grammar, GrammarState};
use crate::tokenizer::Tokenizer;

/// One trie node: the children by next byte and the tokens that end here.
#[derive(Debug, Default)]
struct Node {
    children: Vec<(u8, u32)>,
    ends: Vec<u32>,
}

/// The bytes of every token of a tokenizer (`None` for control tokens and any whose bytes are
/// unknown: a grammar never allows those), computed once and shared.
#[derive(Debug)]
pub struct Vocabulary {
    bytes: Vec<Option<Vec<u8>>>,
    nodes: Vec<Node>,
}

/// The byte that GPT-2's byte-level alphabet writes as `c`, if any.
fn byte_level(c: char) -> Option<u8> {
    let c = c as u32;
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    if c < 256 && printable(c) {
        return Some(c as u8);
    }
    // The other bytes are written as 256, 257, … in byte order.
    let n = c.checked_sub(256)?;
    (0..256u32).filter(|&b| !printable(b)).nth(n as usize).map(|b| b as u8)
}

/// The bytes of token `id`: a `<0xHH>` byte piece, a SentencePiece piece (`▁` = space), the
/// decoded text, or the byte-level piece when the text alone is part of a character.
fn token_bytes(tokenizer: &Tokenizer, id: u32) -> Option<Vec<u8>> {
    let piece = tokenizer.id_to_token(id)?;
    if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')).filter(|h| h.len() == 2) {
        return u8::from_str_radix(hex, 16).ok().map(|b| vec![b]);
    }
    let text = tokenizer.decode(&[id], true).ok()?;
    if text.is_empty() {
        return None;
    }
    if piece.contains('▁') {
        return Some(piece.replace('▁', " ").into_bytes());
    }
    if !text.contains('\u{FFFD}') {
        return Some(text.into_bytes());
    }
    piece.chars().map(byte_level).collect()
}

impl Vocabulary {
    /// The vocabulary of `tokenizer` (one decode per token: do it once per model).
    pub fn new(tokenizer: &Tokenizer) -> Self {
        Self::from_token_bytes((0..tokenizer.vocab_size() as u32).map(|id| token_bytes(tokenizer, id)).collect())
    }

    /// A vocabulary from each token's bytes, by id.
    pub fn from_token_bytes(bytes: Vec<Option<Vec<u8>>>) -> Self {
        let mut nodes = vec![Node::default()];
        for (id, b) in bytes.iter().enumerate() {
            let Some(b) = b.as_ref().filter(|b| !b.is_empty()) else { continue };
            let mut at = 0usize;
            for &byte in b {
                at = match nodes[at].children.iter().find(|c| c.0 == byte) {
                    Some(&(_, child)) => child as usize,
                    None => {
                        nodes.push(Node::default());
                        let child = nodes.len() - 1;
                        nodes[at].children.push((byte, child as u32));
                        child
                    }
                };
            }
            nodes[at].ends.push(id as u32);
        }
        Vocabulary { bytes, nodes }
    }

    /// Tokens known (the tokenizer's vocabulary size).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes of a token, if it has any a grammar can read.
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize)?.as_deref()
    }

    /// Whether token `id` may come next: its bytes continue a parse, or it is one of `stop`
    /// and the text so far is a whole sentence.
    pub fn allows(&self, g: &Grammar, state: &GrammarState, id: u32, stop: &[u32]) -> bool {
        if stop.contains(&id) {
            return state.is_accepting();
        }
        match self.bytes(id).filter(|b| !b.is_empty()) {
            Some(b) => state.clone().advance_bytes(g, b),
            None => false,
        }
    }

    /// For each of the first `n` ids, whether it may come next ([`Vocabulary::allows`] for all
    /// of them in one walk of the trie; ids past the vocabulary are refused).
    pub fn allowed(&self, g: &Grammar, state: &GrammarState, n: usize, stop: &[u32]) -> Vec<bool> {
        let mut ok = vec![false; n];
        let mut work: Vec<(usize, GrammarState)> = vec![(0, state.clone())];
        while let Some((node, s)) = work.pop() {
            for &(byte, child) in &self.nodes[node].children {
                let Some(next) = s.after_byte(g, byte) else { continue };
                let child_node = &self.nodes[child as usize];
                for &t in &child_node.ends {
                    if let Some(slot) = ok.get_mut(t as usize) {
                        *slot = true;
                    }
                }
                if !child_node.children.is_empty() {
                    work.push((child as usize, next));
                }
            }
        }
        for &t in stop {
            if let Some(slot) = ok.get_mut(t as usize) {
                *slot = state.is_accepting();
            }
        }
        ok
    }
}

/// A grammar and the vocabulary it masks: what [`crate::GenerationConfig::constraint`] holds.
#[derive(Debug, Clone)]
pub struct Constraint {
    /// The grammar the answer follows.
    pub grammar: Arc<Grammar>,
    /// The model's tokens (see [`Vocabulary::new`]).
    pub vocabulary: Arc<Vocabulary>,
}

impl PartialEq for Constraint {
    fn eq(&self, other: &Self) -> bool {
        self.grammar == other.grammar && Arc::ptr_eq(&self.vocabulary, &other.vocabulary)
    }
}

/// Tries the likeliest tokens first before walking the whole vocabulary.
const LAZY_TRIES: usize = 16;

impl Constraint {
    /// Greedy choice under the grammar: the largest logit among allowed tokens (the first on
    /// ties), trying the likeliest few one by one before masking the whole row. `None` when no
    /// token is allowed.
    pub fn argmax(&self, state: &GrammarState, logits: &mut [f32], stop: &[u32]) -> Option<u32> {
        for _ in 0..LAZY_TRIES {
            let best = crate::generation::argmax(logits);
            if logits[best as usize] == f32::NEG_INFINITY {
                return None;
            }
            if self.vocabulary.allows(&self.grammar, state, best, stop) {
                return Some(best);
            }
            logits[best as usize] = f32::NEG_INFINITY;
        }
        self.mask(state, logits, stop);
        let best = crate::generation::argmax(logits);
        (logits[best as usize] > f32::NEG_INFINITY).then_some(best)
    }

    /// The `k` best (score, id) of `scores` among the tokens the grammar allows next, best first
    /// and the lower id first on ties (fewer when fewer are allowed): the likeliest `k` +
    /// [`LAZY_TRIES`] are tried one by one before the whole row is masked, so the answer is
    /// that of masking first.
    pub fn top_k(&self, state: &GrammarState, scores: &[f32], k: usize, stop: &[u32]) -> Vec<(f32, u32)> {
        let order = |x: &usize, y: &usize| scores[*y].total_cmp(&scores[*x]).then(x.cmp(y));
        let best_of = |mut idx: Vec<usize>, m: usize| {
            let m = m.min(idx.len());
            if m > 0 {
                idx.select_nth_unstable_by(m - 1, order);
            }
            idx.truncate(m);
            idx.sort_by(order);
            idx
        };
        let tried = best_of((0..scores.len()).collect(), k + LAZY_TRIES);
        let allowed = |t: &usize| scores[*t] > f32::NEG_INFINITY && self.vocabulary.allows(&self.grammar, state, *t as u32, stop);
        let mut top: Vec<usize> = tried.iter().copied().filter(allowed).take(k).collect();
        if top.len() < k && tried.len() < scores.len() {
            let ok = self.vocabulary.allowed(&self.grammar, state, scores.len(), stop);
            top = best_of((0..scores.len()).filter(|&t| ok[t] && scores[t] > f32::NEG_INFINITY).collect(), k);
        }
        top.into_iter().map(|t| (scores[t], t as u32)).collect()
    }

    /// Sets the logits of every token the grammar refuses next to −∞; returns how many remain.
    pub fn mask(&self, state: &GrammarState, logits: &mut [f32], stop: &[u32]) -> usize {
        let ok = self.vocabulary.allowed(&self.grammar, state, logits.len(), stop);
        let mut left = 0;
        for (l, ok) in logits.iter_mut().zip(ok) {
            if ok {
                left += 1;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        left
    }
}

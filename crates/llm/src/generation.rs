//! `Generator`: greedy decoding and seeded sampling (temperature, top-k, top-p) with a Hugging
//! Face-style repetition penalty, stop tokens, stop strings, a token budget and streaming, and
//! decoding under a grammar ([`crate::grammar`]): tokens that cannot continue it are masked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::beam::StepDecoder;
use crate::grammar::Constraint;
use crate::text_decoder::{TextDecoder, TextDecoderError};
use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerationConfig {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = off).
    pub top_p: f32,
    /// Hugging Face repetition penalty (1.0 = off), over the prompt and the generated tokens,
    /// or over the generated tokens alone when `penalize_prompt` is false.
    pub repetition_penalty: f32,
    /// Whether the repetition penalty also sees the prompt (Hugging Face's default with
    /// `input_ids`; InternLM-XComposer's embedding prompts leave it out).
    pub penalize_prompt: bool,
    /// Sampling seed: the same seed gives the same text.
    pub seed: u64,
    /// Token ids that end generation (not included in the output text).
    pub stop_tokens: Vec<u32>,
    /// Strings that end generation (the text is cut before them).
    pub stop_strings: Vec<String>,
    /// End generation once the text holds this many complete non-empty lines (0 = off); the
    /// text keeps those lines and drops what follows the last of them.
    pub max_lines: usize,
    /// A grammar the generated text follows: tokens that cannot continue a parse are masked
    /// before the choice (greedy or sampled; the choice is then made on the host), a stop token
    /// only where the text is a whole sentence, and generation ends once nothing may follow.
    #[serde(skip)]
    pub constraint: Option<Constraint>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            penalize_prompt: true,
            seed: 0,
            stop_tokens: vec![],
            stop_strings: vec![],
            max_lines: 0,
            constraint: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop token was produced.
    StopToken,
    /// A stop string appeared in the text.
    StopString,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// `max_lines` complete lines were written.
    MaxLines,
    /// The model's context is full.
    ContextFull,
    /// The grammar's sentence is complete and nothing may follow it.
    GrammarComplete,
}

/// The result of one generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The generated token ids (a final stop token included).
    pub ids: Vec<u32>,
    /// The generated text (stop token and stop string excluded).
    pub text: String,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Time spent on the prompt.
    #[serde(skip)]
    pub prefill_time: Duration,
    /// Time spent producing the new tokens after the first.
    #[serde(skip)]
    pub decode_time: Duration,
    /// Of the time above, what the grammar's masking took (zero without a grammar).
    #[serde(skip)]
    pub grammar_time: Duration,
}

/// Errors during generation.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The prompt was empty.
    #[error("the prompt has no tokens")]
    EmptyPrompt,
    /// The prompt does not fit the context.
    #[error("the prompt has {0} tokens, more than the model's context of {1}")]
    PromptTooLong(usize, usize),
    /// A prompt id has no row in the embedding.
    #[error("prompt token id {id} is past the model's embedding, which has {rows} rows (ids 0 to {rows} - 1)")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Rows of the embedding (the model's vocabulary size).
        rows: usize,
    },
    /// A sampling setting is out of range.
    #[error("{0}")]
    BadConfig(String),
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The decoder failed (the CUDA engine).
    #[error(transparent)]
    Decoder(#[from] TextDecoderError),
    /// The caller's cancel flag was raised (a server client went away).
    #[error("generation was cancelled")]
    Cancelled,
    /// Under a grammar, no token of the vocabulary can continue the text.
    #[error("no token of the vocabulary can continue the grammar after {0:?}")]
    GrammarStuck(String),
}

/// Hugging Face's repetition penalty: each id of `seen`, once, has its score divided by `p` if
/// positive and multiplied by `p` if negative (1 leaves the scores alone).
pub fn apply_repetition_penalty(scores: &mut [f32], seen: &[u32], p: f32) {
    if p == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::new();
    for &t in seen {
        if let Some(s) = scores.get_mut(t as usize).filter(|_| done.insert(t)) {
            *s = if *s < 0.0 { *s * p } else { *s / p };
        }
    }
}

/// Picks the next token from logits, following a [`GenerationConfig`].
pub struct Sampler {
    cfg: GenerationConfig,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded from the config.
    pub fn new(cfg: &GenerationConfig) -> Result<Self, GenerationError> {
        let bad = |m: String| Err(GenerationError::BadConfig(m));
        if !(cfg.temperature >= 0.0 && cfg.temperature.is_finite()) {
            return bad(format!("temperature must be ≥ 0, got {}", cfg.temperature));
        }
        if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
            return bad(format!("top-p must be in (0, 1], got {}", cfg.top_p));
        }
        if !(cfg.repetition_penalty > 0.0 && cfg.repetition_penalty.is_finite()) {
            return bad(format!("repetition penalty must be > 0, got {}", cfg.repetition_penalty));
        }
        Ok(Sampler { cfg: cfg.clone(), rng: ChaCha8Rng::seed_from_u64(cfg.seed) })
    }

    /// Chooses a token. `context` holds every token so far (prompt and generated), for the penalty.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        apply_repetition_penalty(logits, context, self.cfg.repetition_penalty);
        if self.cfg.temperature == 0.0 {
            return argmax(logits);
        }
        let t = self.cfg.temperature;
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / t)).collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.cfg.top_k > 0 {
            cand.truncate(self.cfg.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.cfg.top_p < 1.0 {
            // Keep tokens until the cumulative probability reaches top_p (at least one).
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    acc += p;
                    acc >= self.cfg.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let sum: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= sum);
        }
        let r: f32 = self.rng.random();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Holds back streamed text that might be the start of a stop string.
struct StopStrings<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
}

impl StopStrings<'_> {
    /// Adds text; returns what may be shown now and whether a stop string was hit.
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        if let Some(at) = self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(at);
            return (self.flush(), true);
        }
        let hold = self.stops.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
        let mut safe = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, false)
    }

    fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

/// Counts the non-empty lines of `text` that a newline has closed.
fn complete_lines(text: &str) -> usize {
    let closed = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    closed.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Generates text from a prompt with a decoder and its tokenizer.
pub struct Generator<'a, B: Backend> {
    /// The model.
    pub model: &'a TextDecoder<B>,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
}

impl<B: Backend> Generator<'_, B> {
    /// Generates after `prompt_ids`, calling `on_text` with each new piece of text as it is ready.
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        cfg: &GenerationConfig,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generated, GenerationError> {
        self.generate_cancellable(prompt_ids, cfg, on_text, &AtomicBool::new(false))
    }

    /// The logits of the prompt's last position (one prefill; no penalty, no sampling): what
    /// the first new token is chosen from, for comparing engines and weight formats.
    pub fn prompt_logits(&self, prompt_ids: &[u32]) -> Result<Vec<f32>, GenerationError> {
        self.check_prompt(prompt_ids)?;
        let rows = self.model.steps(prompt_ids, |steps| -> Result<Vec<Vec<f32>>, TextDecoderError> {
            steps.prefill()?;
            steps.logits()
        })??;
        Ok(rows.into_iter().next().unwrap_or_default())
    }

    /// Refuses an empty prompt, one that leaves no room in the context and ids past the
    /// embedding; returns the context length.
    fn check_prompt(&self, prompt_ids: &[u32]) -> Result<usize, GenerationError> {
        if prompt_ids.is_empty() {
            return Err(GenerationError::EmptyPrompt);
        }
        let config = self.model.config();
        let ctx = config.max_position;
        if prompt_ids.len() >= ctx {
            return Err(GenerationError::PromptTooLong(prompt_ids.len(), ctx));
        }
        let rows = config.vocab_size;
        if let Some(&id) = prompt_ids.iter().find(|&&id| id as usize >= rows) {
            return Err(GenerationError::TokenOutOfRange { id, rows });
        }
        Ok(ctx)
    }

    /// [`Generator::generate`] that stops with [`GenerationError::Cancelled`] before the next
    /// token once `cancel` is set.
    pub fn generate_cancellable(
        &self,
        prompt_ids: &[u32],
        cfg: &GenerationConfig,
        on_text: &mut dyn FnMut(&str),
        cancel: &AtomicBool,
    ) -> Result<Generated, GenerationError> {
        let ctx = self.check_prompt(prompt_ids)?;
        if let Some(c) = &cfg.constraint
            && c.vocabulary.len() != self.tokenizer.vocab_size()
        {
            return Err(GenerationError::BadConfig(format!("the grammar's vocabulary has {} tokens, the model's tokenizer {}: build it from this model's tokenizer", c.vocabulary.len(), self.tokenizer.vocab_size())));
        }
        let mut sampler = Sampler::new(cfg)?;
        let run = Run { prompt_ids, cfg, ctx, cancel };
        self.model.steps(prompt_ids, |steps| run.decode(steps, self.tokenizer, &mut sampler, on_text))?
    }
}

/// One generation's settings, for [`Run::decode`].
struct Run<'a> {
    prompt_ids: &'a [u32],
    cfg: &'a GenerationConfig,
    /// The model's context length.
    ctx: usize,
    cancel: &'a AtomicBool,
}

impl Run<'_> {
    /// Prefills the prompt, then chooses, streams and appends tokens until a stop condition. A
    /// greedy choice is made by the decoder itself (on the device, for the CUDA engine).
    fn decode(
        &self,
        steps: &mut dyn StepDecoder<Error = TextDecoderError>,
        tokenizer: &Tokenizer,
        sampler: &mut Sampler,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generated, GenerationError> {
        let (prompt_ids, cfg) = (self.prompt_ids, self.cfg);
        let mut context = prompt_ids.to_vec();
        let mut ids = Vec::new();
        let mut stream = StreamDecoder::new();
        let mut stops = StopStrings { stops: &cfg.stop_strings, text: String::new(), emitted: 0 };
        let mut grammar = cfg.constraint.as_ref().map(|c| (c, c.grammar.start()));
        let mut grammar_time = Duration::ZERO;

        let start = Instant::now();
        steps.prefill()?;
        let mut prefill_time = Duration::ZERO;
        let mut reason = StopReason::MaxTokens;
        let mut first = true;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(GenerationError::Cancelled);
            }
            let complete = grammar.as_ref().is_some_and(|(_, state)| state.is_complete());
            if ids.len() >= cfg.max_new_tokens || complete {
                if first {
                    prefill_time = start.elapsed();
                }
                if complete {
                    reason = StopReason::GrammarComplete;
                }
                break;
            }
            let seen = if cfg.penalize_prompt { &context[..] } else { &context[prompt_ids.len()..] };
            let next = match &mut grammar {
                Some((c, state)) => {
                    let mut row = steps.logits()?.swap_remove(0);
                    let t = Instant::now();
                    let next = constrained_choice(c, state, &mut row, seen, cfg, sampler).ok_or_else(|| GenerationError::GrammarStuck(stops.text.clone()))?;
                    if !cfg.stop_tokens.contains(&next) {
                        state.advance_bytes(&c.grammar, c.vocabulary.bytes(next).unwrap_or_default());
                    }
                    grammar_time += t.elapsed();
                    next
                }
                None if cfg.temperature == 0.0 => steps.greedy_token(seen, cfg.repetition_penalty)?,
                None => {
                    let mut row = steps.logits()?.swap_remove(0);
                    sampler.sample(&mut row, seen)
                }
            };
            if first {
                prefill_time = start.elapsed();
                first = false;
            }
            ids.push(next);
            context.push(next);
            if cfg.stop_tokens.contains(&next) {
                reason = StopReason::StopToken;
                break;
            }
            if let Some(piece) = stream.push(tokenizer, next)? {
                let (show, hit) = stops.push(&piece);
                if !show.is_empty() {
                    on_text(&show);
                }
                if hit {
                    reason = StopReason::StopString;
                    break;
                }
                if cfg.max_lines > 0 && complete_lines(&stops.text) >= cfg.max_lines {
                    reason = StopReason::MaxLines;
                    break;
                }
            }
            if context.len() >= self.ctx {
                reason = StopReason::ContextFull;
                break;
            }
            if ids.len() >= cfg.max_new_tokens {
                break;
            }
            steps.step(&[next])?;
        }
        let decode_start = start + prefill_time;
        if reason == StopReason::MaxLines {
            let end = stops.text.trim_end_matches(|c: char| c != '\n').len();
            stops.text.truncate(end);
            stops.emitted = stops.emitted.min(end);
        }
        if reason != StopReason::StopString {
            let rest = stops.flush();
            if !rest.is_empty() {
                on_text(&rest);
            }
        }
        Ok(Generated {
            prompt_ids: prompt_ids.to_vec(),
            ids,
            text: stops.text,
            stop_reason: reason,
            prefill_time,
            decode_time: decode_start.elapsed(),
            grammar_time,
        })
    }
}

/// The next token under a grammar: the repetition penalty, then the best allowed token (greedy)
/// or a draw among the allowed ones; `None` when the grammar allows none.
fn constrained_choice(c: &Constraint, state: &crate::grammar::GrammarState, row: &mut [f32], seen: &[u32], cfg: &GenerationConfig, sampler: &mut Sampler) -> Option<u32> {
    if cfg.temperature == 0.0 {
        apply_repetition_penalty(row, seen, cfg.repetition_penalty);
        return c.argmax(state, row, &cfg.stop_tokens);
    }
    if c.mask(state, row, &cfg.stop_tokens) == 0 {
        return None;
    }
    Some(sampler.sample(row, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GenerationConfig {
        GenerationConfig::default()
    }

    #[test]
    fn complete_lines_counts_only_closed_non_empty_lines() {
        assert_eq!(complete_lines("a\n\nb\nc"), 2);
        assert_eq!(complete_lines("a\n  \n"), 1);
        assert_eq!(complete_lines("no newline yet"), 0);
    }

    #[test]
    fn greedy_picks_the_largest_and_penalty_follows_hugging_face() {
        let mut s = Sampler::new(&cfg()).unwrap();
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.9], &[]), 1);
        // Penalty 2: positive logits are divided, negative multiplied; each token once.
        let mut c = cfg();
        c.repetition_penalty = 2.0;
        let mut s = Sampler::new(&c).unwrap();
        let mut logits = [1.0f32, 3.0, -1.0, 2.5];
        assert_eq!(s.sample(&mut logits, &[1, 1, 2]), 3);
        assert_eq!(logits, [1.0, 1.5, -2.0, 2.5]);
    }

    #[test]
    fn same_seed_same_choices_and_top_k_one_is_greedy() {
        let mut c = cfg();
        c.temperature = 1.0;
        c.seed = 42;
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |c: &GenerationConfig| {
            let mut s = Sampler::new(c).unwrap();
            (0..20).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(&c), draw(&c));
        let mut other = c.clone();
        other.seed = 43;
        assert_ne!(draw(&c), draw(&other));
        c.top_k = 1;
        assert!(draw(&c).iter().all(|&t| t == argmax(&logits)));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let mut c = cfg();
        c.temperature = 1.0;
        c.top_p = 0.5;
        // Token 0 has probability ≈ 0.84 on its own, so it is the whole nucleus.
        let logits = [4.0f32, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(&c).unwrap();
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 0);
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut c = cfg();
        c.top_p = 0.0;
        assert!(Sampler::new(&c).is_err());
        let mut c = cfg();
        c.temperature = -1.0;
        assert!(Sampler::new(&c).is_err());
    }

    #[test]
    fn stop_strings_hold_back_possible_prefixes() {
        let stops = vec!["</end>".to_string()];
        let mut s = StopStrings { stops: &stops, text: String::new(), emitted: 0 };
        let (a, hit) = s.push("Hello </e");
        assert!(!hit);
        assert_eq!(a, "Hell");
        let (b, hit) = s.push("nd> more");
        assert!(hit);
        assert_eq!(b, "o ");
        assert_eq!(s.text, "Hello ");
    }

    #[test]
    fn prompts_that_do_not_fit_the_context_or_the_embedding_are_refused() {
        use crate::config::{Arch, DecoderConfig};
        use crate::decoder::KeyStyle;
        let c = DecoderConfig {
            arch: Arch::Llama, vocab_size: 4, hidden_size: 8, intermediate_size: 8, num_layers: 1, num_heads: 2, num_kv_heads: 2,
            head_dim: 4, rope_theta: 10000.0, rms_norm_eps: 1e-6, max_position: 16, qkv_bias: false, o_bias: false,
            tie_word_embeddings: true, rope_inv_freq_f16: false,
        };
        let src = crate::random_weights::RandomWeights::for_decoder(&c, 1);
        let model = TextDecoder::Burn(crate::decoder::Decoder::<burn::backend::Flex>::load(c, &src, KeyStyle::HuggingFace, &Default::default()).unwrap());
        let mut tokens = 8u32.to_le_bytes().to_vec();
        tokens.extend_from_slice(&4u64.to_le_bytes());
        for t in ["a", "b", "c", "d"] {
            tokens.extend_from_slice(&1u64.to_le_bytes());
            tokens.extend_from_slice(t.as_bytes());
        }
        let g = crate::gguf::tests::Builder::new().kv_str("tokenizer.ggml.model", "llama").kv_raw("tokenizer.ggml.tokens", 9, tokens).build();
        let tokenizer = Tokenizer::from_gguf(&crate::gguf::Gguf::from_bytes(g).unwrap()).unwrap();
        let r = Generator { model: &model, tokenizer: &tokenizer }.generate(&[1, 9], &GenerationConfig::default(), &mut |_| {});
        let Err(e) = r else { panic!("id 9 of a 4-row embedding was accepted") };
        let e = e.to_string();
        assert!(e.contains("9") && e.contains("4 rows"), "{e}");
        // The context holds 16 positions: a prompt of 16 leaves no room for a new token.
        let generator = Generator { model: &model, tokenizer: &tokenizer };
        let e = generator.generate(&[1; 16], &GenerationConfig::default(), &mut |_| {}).unwrap_err().to_string();
        assert_eq!(e, "the prompt has 16 tokens, more than the model's context of 16");
        assert!(generator.prompt_logits(&[1; 17]).is_err());
        assert!(matches!(generator.generate(&[], &GenerationConfig::default(), &mut |_| {}), Err(GenerationError::EmptyPrompt)));
    }
}

//! The language model as the composer's stages see it: a prompt (user turn + answer prefix) in,
//! text out, streamed. [`ChatLanguageModel`] adapts an `xcomposer_llm::LanguageModel`.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use xcomposer_llm::grammar::{Constraint, Grammar, Vocabulary};
use xcomposer_llm::{GenerationConfig, LanguageModel, Message, StopReason, Tokenizer};

use crate::prompts::Prompt;

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Nucleus mass (1 = off).
    pub top_p: f32,
    /// Hugging Face repetition penalty (1 = off), over the answer only (not the prompt, as
    /// InternLM-XComposer's prompts of embeddings did not: an article's words stay usable in its
    /// captions).
    pub repetition_penalty: f32,
    /// Seed for sampling.
    pub seed: u64,
    /// Beams (1 = one sequence; more needs `temperature` 0 and a model that decodes beams, as
    /// InternLM-XComposer's writer and spotter did with 5).
    #[serde(default = "one_beam")]
    pub beams: usize,
}

fn one_beam() -> usize {
    1
}

impl Sampling {
    /// Greedy decoding with a repetition penalty.
    pub fn greedy(repetition_penalty: f32) -> Self {
        Sampling { temperature: 0.0, top_p: 1.0, repetition_penalty, seed: 0, beams: 1 }
    }
}

/// One request to the model.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The prompt.
    pub prompt: &'a Prompt,
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Strings that end the answer (cut before them).
    pub stop: Vec<String>,
    /// End after this many complete non-empty lines (0 = off).
    pub max_lines: usize,
    /// The prompt's ids start the answer too, as the web demo's `use_inputs` (its ➕ caption): the
    /// repetition penalty sees them. InternLM-XComposer also counts them in the budget as the demo's
    /// `max_length = max_new_tokens + len(prompt text)` does; other models keep `max_new_tokens`.
    pub prompt_as_inputs: bool,
    /// A grammar the answer must follow, for a model that [`TextModel::takes_grammar`]; others
    /// answer freely and the stage's parser and fallback deal with the answer.
    pub grammar: Option<Arc<Grammar>>,
}

/// The model's answer.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The generated text (the prefix not included).
    pub text: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// New tokens.
    pub new_tokens: usize,
    /// Seconds spent on the prompt.
    pub prefill_seconds: f64,
    /// Seconds spent decoding after the first new token.
    pub decode_seconds: f64,
    /// Why it ended (`stop_token`, `stop_string`, `max_tokens`, `max_lines`, `context_full`,
    /// `grammar_complete`).
    pub stop_reason: String,
}

impl Completion {
    /// Whether the answer was cut by the token budget.
    pub fn truncated(&self) -> bool {
        self.stop_reason == "max_tokens" || self.stop_reason == "context_full"
    }
}

/// A text generator the stages can share.
pub trait TextModel: Send + Sync {
    /// What the model is (shown in the article's provenance).
    fn id(&self) -> String;
    /// Answers `req`, calling `on_text` with each piece of new text; a `Break` from it ends the
    /// generation (the answer is then an error or cut short: the caller that stopped it knows).
    fn complete(&self, req: &Request, on_text: &mut (dyn FnMut(&str) -> ControlFlow<()> + Send)) -> Result<Completion, String>;
    /// Whether [`Request::grammar`] is enforced (tokens outside it masked); `false` by default.
    fn takes_grammar(&self) -> bool {
        false
    }
}

/// How a prompt becomes the model's input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptFormat {
    /// The model's own chat template, a user message, then the answer prefix.
    ChatTemplate,
    /// InternLM-XComposer's raw format: `<s> <|User|>:{user}\n<TOKENS_UNUSED_0> <|Bot|>:{prefix}`.
    XComposer,
}

/// A model's tokens as grammars read them ([`Vocabulary`]), computed at the first constrained
/// request (one decode per token) and shared by every clone (the stages of one model).
#[derive(Debug, Clone, Default)]
pub struct LazyVocabulary(Arc<OnceLock<Arc<Vocabulary>>>);

impl LazyVocabulary {
    /// `grammar` over the tokens of `tokenizer` (the vocabulary computed on the first call).
    pub fn constraint(&self, tokenizer: &Tokenizer, grammar: Arc<Grammar>) -> Constraint {
        Constraint { grammar, vocabulary: self.0.get_or_init(|| Arc::new(Vocabulary::new(tokenizer))).clone() }
    }
}

/// A loaded [`LanguageModel`] as a [`TextModel`].
pub struct ChatLanguageModel<B: Backend> {
    /// The model.
    pub model: LanguageModel<B>,
    /// How prompts are laid out: the chat template when the model has one, else XComposer's.
    pub format: PromptFormat,
    /// The tokens' bytes for grammars.
    vocabulary: LazyVocabulary,
}

impl<B: Backend> ChatLanguageModel<B> {
    /// Wraps a model, picking the prompt format from whether it has a chat template.
    pub fn new(model: LanguageModel<B>) -> Self {
        let format = if model.chat_template.is_some() { PromptFormat::ChatTemplate } else { PromptFormat::XComposer };
        ChatLanguageModel { model, format, vocabulary: LazyVocabulary::default() }
    }

    /// The input text of a prompt, as the model will see it (before tokenization).
    pub fn input_text(&self, prompt: &Prompt) -> Result<String, String> {
        match self.format {
            PromptFormat::ChatTemplate => {
                let mut text = self.model.chat_prompt(&[Message::new("user", prompt.user.trim())]).map_err(|e| e.to_string())?;
                text.push_str(prompt.prefix.trim_start());
                Ok(text)
            }
            PromptFormat::XComposer => Ok(format!(" <|User|>:{}\n<TOKENS_UNUSED_0> <|Bot|>:{}", prompt.user, prompt.prefix)),
        }
    }
}

impl<B: Backend> TextModel for ChatLanguageModel<B>
where
    LanguageModel<B>: Sync,
{
    fn id(&self) -> String {
        self.model.path.file_name().map_or_else(|| self.model.path.display().to_string(), |n| n.to_string_lossy().into_owned())
    }

    fn takes_grammar(&self) -> bool {
        true
    }

    fn complete(&self, req: &Request, on_text: &mut (dyn FnMut(&str) -> ControlFlow<()> + Send)) -> Result<Completion, String> {
        if req.sampling.beams > 1 {
            return Err(format!("{} decodes one sequence; {} beams need the InternLM-XComposer model", self.id(), req.sampling.beams));
        }
        let text = self.input_text(req.prompt)?;
        let ids = match self.format {
            // The chat template writes any BOS itself.
            PromptFormat::ChatTemplate => self.model.tokenizer.encode(&text),
            PromptFormat::XComposer => self.model.tokenizer.encode_prompt(&text),
        }
        .map_err(|e| e.to_string())?;
        let cfg = GenerationConfig {
            max_new_tokens: req.max_new_tokens,
            temperature: req.sampling.temperature,
            top_p: req.sampling.top_p,
            repetition_penalty: req.sampling.repetition_penalty,
            penalize_prompt: req.prompt_as_inputs,
            seed: req.sampling.seed,
            stop_strings: req.stop.clone(),
            max_lines: req.max_lines,
            constraint: req.grammar.as_ref().map(|g| self.vocabulary.constraint(&self.model.tokenizer, g.clone())),
            ..Default::default()
        };
        // On a rayon worker, so that each token's parallel products start inside the pool.
        let stop = AtomicBool::new(false);
        let mut show = |t: &str| {
            if on_text(t).is_break() {
                stop.store(true, Ordering::Relaxed);
            }
        };
        let out = rayon::scope(|_| self.model.generate_cancellable(&ids, &cfg, &mut show, &stop)).map_err(|e| e.to_string())?;
        let stop_reason = match out.stop_reason {
            StopReason::StopToken => "stop_token",
            StopReason::StopString => "stop_string",
            StopReason::MaxTokens => "max_tokens",
            StopReason::MaxLines => "max_lines",
            StopReason::ContextFull => "context_full",
            StopReason::GrammarComplete => "grammar_complete",
        };
        Ok(Completion {
            text: out.text,
            prompt_tokens: ids.len(),
            new_tokens: out.ids.len(),
            prefill_seconds: out.prefill_time.as_secs_f64(),
            decode_seconds: out.decode_time.as_secs_f64(),
            stop_reason: stop_reason.into(),
        })
    }
}

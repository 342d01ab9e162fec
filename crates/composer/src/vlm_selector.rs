//! The original's model image selection ("Model selects images", `model_select_image`): with an
//! InternLM-XComposer model configured, the model sees the article so far with the images
//! already chosen in place and the four candidates as A–D, and answers with a letter.
//!
//! Prompt, as the original executes it after `align_text` (note its double space and second eoh):
//! `[BOS]"  <|User|>:{select.user}" " <|Bot|>:{select.prefix}"`, `<ImageHere>` replaced by image
//! embeddings (earlier chosen images in the context, then A, B, C, D), at most 1679 positions;
//! 5 beams, 9 new tokens, no repetition penalty and no eoh/eoa stop (the demo passes none); the
//! answer's first character, or its second after a space, picks the image, and an answer that
//! is no letter of the candidates falls back to A. By default ([`VlmSelector::new`]) the answer
//! is decoded under [`choice_grammar`], so it is always a letter offered; the provenance says
//! which way it was decoded.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde_json::json;
use xcomposer_llm::beam::{EmbedGenConfig, EmbedGenOutput, every_step};

use crate::answer_grammar::choice_grammar;
use crate::article::{Candidate, Provenance, Source};
use crate::error::ComposeError;
use crate::prompts::Prompts;
use crate::selector::{SelectContext, Selector};
use crate::text_model::LazyVocabulary;
use xcomposer_vision::xcomposer::model::{IMAGE_PLACEHOLDER, Piece, XComposer};

/// Longest prompt, in positions: the original cuts the text and images to its `max_txt_len`
/// 1680, puts BOS in front and drops the last 2 (its appended eoa and `</s>`, which this prompt
/// never has).
pub const MAX_PROMPT: usize = 1679;

/// The letter in a model's answer, as the original reads it (`out_text[1] if out_text[0] == ' '
/// else out_text[0]`, a key of `{'A': 0, …, 'D': 3}`), if it names one of `n` candidates.
///
/// ```
/// use xcomposer_composer::vlm_selector::parse_choice;
/// assert_eq!(parse_choice(" C. the cat", 4), Some(2));
/// assert_eq!(parse_choice("E", 4), None);
/// assert_eq!(parse_choice("b", 4), None);
/// ```
pub fn parse_choice(answer: &str, n: usize) -> Option<usize> {
    let c = answer.strip_prefix(' ').unwrap_or(answer).chars().next()?;
    let i = "ABCD".find(c)?;
    (i < n.min(4)).then_some(i)
}

/// One A–D question as the model was asked it.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The prompt's text, `<ImageHere>` where the images go.
    pub text: String,
    /// The prompt's positions after the cut to [`MAX_PROMPT`]: token ids, `None` for an image's.
    pub layout: Vec<Option<u32>>,
    /// The decoding settings.
    pub config: EmbedGenConfig,
    /// The decoded sequence.
    pub output: EmbedGenOutput,
    /// The answer's text.
    pub answer: String,
}

/// The selection prompt's text with `<ImageHere>` places: the `select` template wrapped as the
/// original's `align_text` left it; with fewer than four candidates the missing letters go.
pub fn select_text(prompts: &Prompts, language: crate::Language, context: &str, offered: usize) -> Result<String, ComposeError> {
    let prompt = prompts.get(language).render("select", json!({"context": context}))?;
    let mut user = prompt.user.clone();
    for letter in ["D", "C", "B"].iter().take(4usize.saturating_sub(offered)) {
        user = user.replace(&format!("\n{letter}.{IMAGE_PLACEHOLDER}"), "");
    }
    Ok(format!("  <|User|>:{} <|Bot|>:{}", user.trim_start(), prompt.prefix))
}

/// Chooses among candidates with an InternLM-XComposer model.
pub struct VlmSelector<B: Backend> {
    /// The model.
    pub model: Arc<XComposer<B>>,
    /// The prompt sets (the `select` stage).
    pub prompts: Arc<Prompts>,
    /// Whether the answer is decoded under [`choice_grammar`] (every beam one letter of the
    /// offered ones, then the end); off, it is decoded and read as the original.
    pub constrained: bool,
    /// The tokens' bytes for the grammar (shareable with [`crate::xcomposer_text::XComposerText`]).
    pub vocabulary: LazyVocabulary,
}

impl<B: Backend> VlmSelector<B> {
    /// A selector whose answer is one letter by grammar ([`VlmSelector::constrained`]).
    pub fn new(model: Arc<XComposer<B>>, prompts: Arc<Prompts>) -> Self {
        VlmSelector { model, prompts, constrained: true, vocabulary: LazyVocabulary::default() }
    }

    fn image(&self, path: &std::path::Path) -> Result<Tensor<B, 3>, ComposeError> {
        self.model.encode_image(path).map_err(|e| ComposeError::Model { stage: "selector", reason: e.to_string() })
    }
}

impl<B: Backend> Selector for VlmSelector<B>
where
    XComposer<B>: Send + Sync,
{
    fn id(&self) -> String {
        format!("{} (A–D choice, 5 beams)", self.model.dir.display())
    }

    fn select(&self, ctx: &SelectContext, candidates: &[Candidate]) -> Result<(usize, Provenance), ComposeError> {
        if candidates.is_empty() {
            return Err(ComposeError::BadRequest("no candidate images to choose from".into()));
        }
        if candidates.len() < 2 {
            return Ok((0, Provenance::new(Source::Score, "a single candidate")));
        }
        let asked = self.ask(ctx, candidates)?;
        let how = if self.constrained { "decoded under a one-letter grammar" } else { "unconstrained: the answer parsed" };
        let answer = asked.answer;
        Ok(match parse_choice(&answer, candidates.len()) {
            Some(i) => (i, Provenance::model(format!("{how}; the model chose {}", (b'A' + i as u8) as char), answer)),
            None => (0, Provenance { by: Source::Fallback, detail: format!("{how}; the model's answer names no candidate; A, as the original"), raw: Some(answer) }),
        })
    }
}

impl<B: Backend> VlmSelector<B>
where
    XComposer<B>: Send + Sync,
{
    /// Asks the model to choose among the first four `candidates` for the slot of `ctx`.
    pub fn ask(&self, ctx: &SelectContext, candidates: &[Candidate]) -> Result<Asked, ComposeError> {
        let bad = |reason: String| ComposeError::Model { stage: "selector", reason };
        let (context, mut images) = self.context(ctx)?;
        // The original offers exactly four; with fewer, the missing letters are not asked for.
        let offered = &candidates[..candidates.len().min(4)];
        for c in offered {
            images.push(self.image(&c.path)?);
        }
        let text = select_text(&self.prompts, ctx.language, &context, offered.len())?;
        let chunks: Vec<&str> = text.split(IMAGE_PLACEHOLDER).collect();
        if chunks.len() != images.len() + 1 {
            return Err(bad(format!("the select prompt has {} image places for {} images", chunks.len() - 1, images.len())));
        }
        let mut pieces = vec![];
        let mut layout = vec![];
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 {
                layout.extend(std::iter::repeat_n(None, images[i - 1].dims()[1]));
                pieces.push(Piece::Image(images[i - 1].clone()));
            }
            layout.extend(self.model.tokenizer.encode(c, i == 0).map_err(|e| bad(e.to_string()))?.into_iter().map(Some));
            pieces.push(Piece::Text { text: c.to_string(), bos: i == 0 });
        }
        let mut embeds = self.model.embed(&pieces).map_err(|e| bad(e.to_string()))?;
        let [b, len, d] = embeds.dims();
        if len > MAX_PROMPT {
            embeds = embeds.slice([0..b, 0..MAX_PROMPT, 0..d]);
            layout.truncate(MAX_PROMPT);
        }
        let config = EmbedGenConfig { num_beams: 5, max_new_tokens: crate::xcomposer_text::budget::SELECT, repetition_penalty: 1.0, stop_ids: vec![], ..xcomposer_vision::xcomposer::language::gen_config() };
        let output = if self.constrained {
            let constraint = self.vocabulary.constraint(&self.model.tokenizer.sp, Arc::new(choice_grammar(offered.len())));
            self.model.decode_constrained(embeds, &constraint, &config, &mut every_step)
        } else {
            self.model.decode(embeds, &config)
        }
        .map_err(|e| bad(e.to_string()))?;
        let answer = self.model.answer_text(&output);
        Ok(Asked { text, layout, config, output, answer })
    }

    /// The article through the slot's paragraph with the images chosen before it in place, and
    /// those images.
    fn context(&self, ctx: &SelectContext) -> Result<(String, Vec<Tensor<B, 3>>), ComposeError> {
        let mut placed: Vec<&(usize, PathBuf)> = ctx.placed.iter().filter(|(p, _)| *p < ctx.after).collect();
        placed.sort_by_key(|(p, _)| *p);
        let mut context = String::new();
        let mut images = vec![];
        for (i, line) in ctx.paragraphs[..=ctx.after].iter().enumerate() {
            context.push_str(line);
            context.push('\n');
            if let Some((_, path)) = placed.iter().find(|(p, _)| *p == i) {
                context.push_str(IMAGE_PLACEHOLDER);
                images.push(self.image(path)?);
            }
        }
        Ok((context, images))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chinese_prompt_is_the_original_after_align_text() {
        let t = select_text(&Prompts::default(), crate::Language::Zh, "第一行\n<ImageHere>第二行\n", 4).unwrap();
        assert_eq!(
            t,
            "  <|User|>:根据给定上下文和候选图像，选择合适的配图：第一行\n<ImageHere>第二行\n\n\n候选图像包括: A.<ImageHere>\nB.<ImageHere>\nC.<ImageHere>\nD.<ImageHere>\n\n<TOKENS_UNUSED_0> <TOKENS_UNUSED_0> <|Bot|>:最合适的图是"
        );
        let two = select_text(&Prompts::default(), crate::Language::Zh, "x", 2).unwrap();
        assert!(two.contains("A.<ImageHere>\nB.<ImageHere>\n\n<TOKENS"), "{two}");
        assert_eq!(parse_choice("B", 2), Some(1));
        assert_eq!(parse_choice("b", 2), None);
        assert_eq!(parse_choice("  B", 4), None);
        assert_eq!(parse_choice("C", 2), None);
        assert_eq!(parse_choice("", 4), None);
    }
}

//! The original's model image selection ("Model selects images", `model_select_image`): with an
//! InternLM-XComposer model configured, the model sees the article so far with the images
//! already chosen in place and the four candidates as A–D, and answers with a letter.
//!
//! Prompt, as the original executes it after `align_text` (note its double space and second eoh):
//! `[BOS]"  <|User|>:{select.user}" " <|Bot|>:{select.prefix}"`, `<ImageHere>` replaced by image
//! embeddings (earlier chosen images in the context, then A, B, C, D), at most 1678 positions;
//! 5 beams, 9 new tokens, no repetition penalty; the first non-space character of the answer
//! picks the image, and an answer that is no letter of the candidates falls back to A.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde_json::json;
use xcomposer_llm::beam::EmbedGenConfig;

use crate::article::{Candidate, Provenance, Source};
use crate::error::ComposeError;
use crate::prompts::Prompts;
use crate::selector::{SelectContext, Selector};
use crate::xcomposer_model::{IMAGE_PLACEHOLDER, Piece, XComposer};

/// Longest prompt, in positions (the original's `max_txt_len` 1680, less the 2 it drops).
pub const MAX_PROMPT: usize = 1678;

/// The letter in a model's answer: its first non-space character, if it names one of `n` candidates.
///
/// ```
/// use xcomposer_composer::vlm_selector::parse_choice;
/// assert_eq!(parse_choice(" C. the cat", 4), Some(2));
/// assert_eq!(parse_choice("E", 4), None);
/// ```
pub fn parse_choice(answer: &str, n: usize) -> Option<usize> {
    let c = answer.trim_start().chars().next()?;
    let i = (c.to_ascii_uppercase() as u32).checked_sub('A' as u32)? as usize;
    (i < n.min(4)).then_some(i)
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
}

impl<B: Backend> VlmSelector<B> {
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
        let bad = |reason: String| ComposeError::Model { stage: "selector", reason };
        // The article through this slot's paragraph, earlier chosen images in place.
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
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 {
                pieces.push(Piece::Image(images[i - 1].clone()));
            }
            pieces.push(Piece::Text { text: c.to_string(), bos: i == 0 });
        }
        let mut embeds = self.model.embed(&pieces).map_err(|e| bad(e.to_string()))?;
        let [b, len, d] = embeds.dims();
        if len > MAX_PROMPT {
            embeds = embeds.slice([0..b, 0..MAX_PROMPT, 0..d]);
        }
        let cfg = EmbedGenConfig { num_beams: 5, max_new_tokens: 9, repetition_penalty: 1.0, ..EmbedGenConfig::xcomposer() };
        let out = self.model.decode(embeds, &cfg).map_err(|e| bad(e.to_string()))?;
        let answer = self.model.answer_text(&out);
        Ok(match parse_choice(&answer, offered.len()) {
            Some(i) => (i, Provenance::model(format!("the model chose {}", (b'A' + i as u8) as char), answer)),
            None => (0, Provenance { by: Source::Fallback, detail: "the model's answer names no candidate; A, as the original".into(), raw: Some(answer) }),
        })
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
        assert_eq!(parse_choice("b", 2), Some(1));
        assert_eq!(parse_choice("C", 2), None);
        assert_eq!(parse_choice("", 4), None);
    }
}

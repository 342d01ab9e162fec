//! Stage 2b, [`Captioner`]: one caption per image slot, from the article around it and the
//! captions so far. The default, [`LlmCaptioner`], prompts as the original does and cuts the
//! answer at the closing quote ([`cut_caption`]); an empty answer falls back to the paragraph
//! ([`caption_from_paragraph`]).

use std::ops::ControlFlow;
use std::sync::Arc;

use serde_json::json;

use crate::answer_grammar::{CAPTION_GRAMMAR_CHARS, caption_grammar};
use crate::article::{Provenance, Source};
use crate::error::ComposeError;
use crate::language::Language;
use crate::prompts::Prompts;
use crate::text_model::{Request, Sampling, TextModel};
use crate::writer::{marked_lines, strip_marker};

/// Writes captions.
pub trait Captioner: Send + Sync {
    /// What the captioner is (for provenance).
    fn id(&self) -> String;
    /// The caption of an image after paragraph `after`, given the captions so far as
    /// `(paragraph, caption)`. `variation` 0 is the default answer; others ask for another one.
    fn caption(&self, paragraphs: &[String], after: usize, previous: &[(usize, String)], language: Language, variation: u64) -> Result<(String, Provenance), ComposeError>;
    /// The caption of an image the user adds after paragraph `after` (the web demo's ➕); by
    /// default the same as [`Captioner::caption`].
    fn insert_caption(&self, paragraphs: &[String], after: usize, previous: &[(usize, String)], language: Language) -> Result<(String, Provenance), ComposeError> {
        self.caption(paragraphs, after, previous, language, 0)
    }
}

/// Longest caption kept, in characters.
pub const MAX_CAPTION_CHARS: usize = 160;

/// The caption in a model's answer: up to the first closing quote or line break, trimmed of
/// quotes and emphasis; `None` when nothing is left.
///
/// ```
/// use xcomposer_composer::captioner::cut_caption;
/// assert_eq!(cut_caption("A cup of espresso\" is shown").as_deref(), Some("A cup of espresso"));
/// assert_eq!(cut_caption("  \"  ").as_deref(), None);
/// ```
pub fn cut_caption(answer: &str) -> Option<String> {
    let end = answer.find(['"', '”', '」', '\n']).unwrap_or(answer.len());
    let c = strip_marker(&answer[..end]).trim().trim_matches(|c: char| matches!(c, '*' | '“' | '「' | '\'' | '`') || c.is_whitespace());
    let c = c.trim_end_matches([',', '，', ';']).trim();
    if c.chars().any(char::is_alphanumeric) { Some(shorten(c, MAX_CAPTION_CHARS)) } else { None }
}

/// `s` cut to at most `max` characters, at a word boundary when there is one.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max).collect();
    match cut.rfind(' ') {
        Some(at) if at > max / 2 => cut[..at].trim_end_matches([',', ';', ':']).to_string(),
        _ => cut,
    }
}

/// The caption in a model's answer as the original web demo takes it: up to the first `"`,
/// whitespace trimmed (Python's `split('"')[0].strip()`); `None` when nothing is left.
///
/// ```
/// use xcomposer_composer::captioner::cut_caption_as_original;
/// assert_eq!(cut_caption_as_original(" **A cup**\n of tea\" is").as_deref(), Some("**A cup**\n of tea"));
/// ```
pub fn cut_caption_as_original(answer: &str) -> Option<String> {
    let python_space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    let c = answer.split('"').next().unwrap_or_default().trim_matches(python_space);
    (!c.is_empty()).then(|| c.to_string())
}

/// A caption from the paragraph itself: its first sentence, at most 80 characters.
///
/// ```
/// use xcomposer_composer::captioner::caption_from_paragraph;
/// assert_eq!(caption_from_paragraph("Espresso is strong. It is Italian."), "Espresso is strong");
/// ```
pub fn caption_from_paragraph(paragraph: &str) -> String {
    let p = paragraph.trim().trim_start_matches('#').trim();
    let end = p.find(['.', '!', '?', '。', '！', '？']).unwrap_or(p.len());
    let s = if p[..end].trim().is_empty() { p } else { &p[..end] };
    shorten(s.trim(), 80)
}

/// How [`LlmCaptioner`] asks for captions and takes them from the answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptionStyle {
    /// For small chat models: [`cut_caption`], a caption that repeats an earlier one replaced by
    /// the paragraph's first sentence, an added image captioned like any other.
    Cleaned,
    /// As the original web demo: [`cut_caption_as_original`]; an added image captioned as its
    /// `generate_insert_cap` asks (the prompt's ids penalised too, a budget of
    /// [`crate::xcomposer_text::budget::INSERT_CAPTION`] plus the prompt's characters, and "。"
    /// standing alone when no caption comes before).
    Original,
}

/// The default captioner: the model with the `caption` prompt, greedy.
pub struct LlmCaptioner {
    /// The model.
    pub model: Arc<dyn TextModel>,
    /// The prompt sets.
    pub prompts: Arc<Prompts>,
    /// Repetition penalty over the answer (the original's 5.0 suits its 7B model; small models
    /// do better with less).
    pub repetition_penalty: f32,
    /// Token budget of a caption.
    pub max_new_tokens: usize,
    /// How captions are asked and cut.
    pub style: CaptionStyle,
}

impl LlmCaptioner {
    /// A captioner with repetition penalty 1.3, 40 tokens per caption, [`CaptionStyle::Cleaned`].
    pub fn new(model: Arc<dyn TextModel>, prompts: Arc<Prompts>) -> Self {
        LlmCaptioner { model, prompts, repetition_penalty: 1.3, max_new_tokens: 40, style: CaptionStyle::Cleaned }
    }

    /// The stop strings of an answer: the closing quote, and for [`CaptionStyle::Cleaned`] the
    /// other closing quotes and a line break.
    fn stop(&self) -> Vec<String> {
        match self.style {
            CaptionStyle::Cleaned => vec!["\"".into(), "”".into(), "\n".into()],
            CaptionStyle::Original => vec!["\"".into()],
        }
    }

    /// Whether captions are decoded under [`caption_grammar`]: a model that takes grammars and
    /// the cleaned style (the original's style keeps the original's decoding).
    fn constrained(&self) -> bool {
        self.style == CaptionStyle::Cleaned && self.model.takes_grammar()
    }

    /// How the answer was decoded, for the provenance.
    fn decoding(&self) -> String {
        if self.constrained() {
            format!("decoded under a grammar: a quoted caption of at most {CAPTION_GRAMMAR_CHARS} characters")
        } else {
            "unconstrained (the model takes no grammar)".into()
        }
    }

    /// Asks the model (`insert`: the ➕ caption of [`CaptionStyle::Original`]) and takes the caption.
    fn ask(&self, paragraphs: &[String], after: usize, previous: &[(usize, String)], language: Language, sampling: Sampling, insert: bool) -> Result<(Option<String>, String), ComposeError> {
        let (article, past) = caption_context(paragraphs, after, previous);
        let paragraph = &paragraphs[after];
        let prompt = self.prompts.get(language).render("caption", json!({"article": article, "past": past, "line": after, "paragraph": paragraph, "insert": insert}))?;
        let max_new_tokens = if insert { crate::xcomposer_text::budget::INSERT_CAPTION } else { self.max_new_tokens };
        let grammar = self.constrained().then(|| Arc::new(caption_grammar()));
        let req = Request { prompt: &prompt, max_new_tokens, sampling, stop: self.stop(), max_lines: 0, prompt_as_inputs: insert, grammar };
        let out = self.model.complete(&req, &mut |_| ControlFlow::Continue(())).map_err(|reason| ComposeError::Model { stage: "captioner", reason })?;
        let caption = match self.style {
            CaptionStyle::Cleaned => cut_caption(&out.text),
            CaptionStyle::Original => cut_caption_as_original(&out.text),
        };
        Ok((caption, out.text))
    }
}

fn no_paragraph(paragraphs: &[String], after: usize) -> ComposeError {
    ComposeError::BadRequest(format!("paragraph {after} does not exist (the article has {})", paragraphs.len()))
}

/// The caption, or the paragraph's first sentence when the answer gave none (said so).
fn caption_or_fallback(caption: Option<String>, raw: String, paragraph: &str, detail: String) -> (String, Provenance) {
    match caption {
        Some(c) => (c, Provenance::model(detail, raw)),
        None => (caption_from_paragraph(paragraph), Provenance { by: Source::Fallback, detail: "the model's caption was empty; the paragraph's first sentence".into(), raw: Some(raw) }),
    }
}

/// The context the original gives a caption: the lines up to and including the one after the
/// slot, and the captions placed before that line.
pub fn caption_context(paragraphs: &[String], after: usize, previous: &[(usize, String)]) -> (String, Vec<serde_json::Value>) {
    let end = (after + 2).min(paragraphs.len());
    let past = previous.iter().filter(|(line, _)| *line < end && *line != after).map(|(line, caption)| json!({"line": line, "caption": caption})).collect();
    (marked_lines(&paragraphs[..end]), past)
}

impl Captioner for LlmCaptioner {
    fn id(&self) -> String {
        format!("{} (greedy, repetition penalty {})", self.model.id(), self.repetition_penalty)
    }

    fn caption(&self, paragraphs: &[String], after: usize, previous: &[(usize, String)], language: Language, variation: u64) -> Result<(String, Provenance), ComposeError> {
        let paragraph = paragraphs.get(after).ok_or_else(|| no_paragraph(paragraphs, after))?;
        let sampling = if variation == 0 { Sampling::greedy(self.repetition_penalty) } else { Sampling { temperature: 0.8, top_p: 0.95, repetition_penalty: self.repetition_penalty, seed: variation, beams: 1 } };
        let (caption, raw) = self.ask(paragraphs, after, previous, language, sampling, false)?;
        let repeated = |c: &String| self.style == CaptionStyle::Cleaned && previous.iter().any(|(_, p)| p.trim().eq_ignore_ascii_case(c));
        if caption.as_ref().is_some_and(repeated) {
            let why = Provenance { by: Source::Fallback, detail: "the model repeated an earlier caption; the paragraph's first sentence".into(), raw: Some(raw) };
            return Ok((caption_from_paragraph(paragraph), why));
        }
        let detail = if variation == 0 { format!("the model's caption, {}", self.decoding()) } else { format!("the model's caption, sampled (variation {variation}), {}", self.decoding()) };
        Ok(caption_or_fallback(caption, raw, paragraph, detail))
    }

    fn insert_caption(&self, paragraphs: &[String], after: usize, previous: &[(usize, String)], language: Language) -> Result<(String, Provenance), ComposeError> {
        if self.style == CaptionStyle::Cleaned {
            return self.caption(paragraphs, after, previous, language, 0);
        }
        let paragraph = paragraphs.get(after).ok_or_else(|| no_paragraph(paragraphs, after))?;
        let (caption, raw) = self.ask(paragraphs, after, previous, language, Sampling::greedy(self.repetition_penalty), true)?;
        Ok(caption_or_fallback(caption, raw, paragraph, "the model's caption for an added image (the prompt penalised too, as the original's ➕)".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_cut_at_the_quote_and_cleaned() {
        assert_eq!(cut_caption("**The Great Wall at dawn**\" shows").as_deref(), Some("The Great Wall at dawn"));
        assert_eq!(cut_caption("长城的烽火台”。").as_deref(), Some("长城的烽火台"));
        assert_eq!(cut_caption("A view,\nmore").as_deref(), Some("A view"));
        assert_eq!(cut_caption("<Seg0> 中国古代宫殿").as_deref(), Some("中国古代宫殿"));
        assert_eq!(cut_caption("\""), None);
        assert_eq!(cut_caption("..."), None);
        let long = "word ".repeat(60);
        let c = cut_caption(&long).unwrap();
        assert!(c.chars().count() <= MAX_CAPTION_CHARS && c.ends_with("word"), "{c}");
    }

    #[test]
    fn fallback_caption_is_the_first_sentence_and_never_empty() {
        assert_eq!(caption_from_paragraph("## Coffee"), "Coffee");
        assert_eq!(caption_from_paragraph("长城很长。它在北方。"), "长城很长");
        assert_eq!(caption_from_paragraph("...and more"), "...and more");
        assert!(caption_from_paragraph(&"a".repeat(300)).chars().count() <= 80);
    }

    #[test]
    fn context_is_the_lines_through_the_next_one_and_earlier_captions() {
        let p: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
        let (article, past) = caption_context(&p, 1, &[(0, "zero".into()), (1, "self".into()), (4, "later".into())]);
        assert_eq!(article, "<Seg0> p0\n<Seg1> p1\n<Seg2> p2\n");
        assert_eq!(past, vec![json!({"line": 0, "caption": "zero"})]);
        let (article, _) = caption_context(&p, 4, &[]);
        assert!(article.ends_with("<Seg4> p4\n"));
    }
}

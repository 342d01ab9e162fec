//! Stage 1, [`ArticleWriter`]: the article's text from the instruction, one paragraph per line,
//! and its title. The default, [`LlmWriter`], streams a language model's answer.

use std::ops::ControlFlow;
use std::sync::Arc;

use serde_json::json;

use crate::article::{Provenance, Source};
use crate::error::ComposeError;
use crate::language::Language;
use crate::prompts::Prompts;
use crate::text_model::{Completion, Request, Sampling, TextModel};

/// What the writer is asked for.
#[derive(Debug, Clone)]
pub struct WriteRequest<'a> {
    /// The user's instruction.
    pub instruction: &'a str,
    /// The prompt language.
    pub language: Language,
    /// Token budget of the article text.
    pub max_new_tokens: usize,
    /// Most paragraphs kept (the original keeps 60).
    pub max_paragraphs: usize,
    /// Sampling seed.
    pub seed: u64,
}

/// The writer's result.
#[derive(Debug, Clone)]
pub struct Written {
    /// The title.
    pub title: String,
    /// How the title was made.
    pub title_source: Provenance,
    /// The paragraphs.
    pub paragraphs: Vec<String>,
    /// How the text was made (raw text included).
    pub text_source: Provenance,
    /// Tokens generated (text and title).
    pub new_tokens: usize,
}

/// Writes the article's text.
pub trait ArticleWriter: Send + Sync {
    /// What the writer is (for provenance).
    fn id(&self) -> String;
    /// Writes the article, calling `on_text` with the text as it is written; a `Break` from it
    /// stops the writing with [`ComposeError::Cancelled`].
    fn write(&self, req: &WriteRequest, on_text: &mut (dyn FnMut(&str) -> ControlFlow<()> + Send)) -> Result<Written, ComposeError>;
    /// Writes paragraph `index` anew in the context of the others.
    fn rewrite_paragraph(&self, paragraphs: &[String], index: usize, language: Language, seed: u64) -> Result<(String, Provenance), ComposeError>;
}

/// The original's post-processing: blank lines collapsed, one paragraph per line, trimmed, at
/// most `max_paragraphs`. When the text was cut by the token budget, an unfinished last
/// sentence is dropped (and a last paragraph with no finished sentence).
///
/// ```
/// use xcomposer_composer::writer::paragraphs;
/// let p = paragraphs("One.\n\n  \nTwo. Three is cut", 60, true);
/// assert_eq!(p, ["One.", "Two."]);
/// ```
pub fn paragraphs(text: &str, max_paragraphs: usize, truncated: bool) -> Vec<String> {
    let mut out: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if truncated && let Some(last) = out.pop() {
        if let Some(end) = last_sentence_end(&last) {
            out.push(last[..end].trim_end().to_string());
        } else if out.is_empty() {
            out.push(last);
        }
    }
    out.truncate(max_paragraphs.max(1));
    out
}

/// Longest paragraph kept whole, in words (CJK characters count as half a word each).
pub const LONG_PARAGRAPH_WORDS: usize = 140;

fn words(s: &str) -> usize {
    s.split_whitespace().count() + s.chars().filter(|c| (*c as u32) >= 0x3000).count() / 2
}

/// Splits paragraphs longer than [`LONG_PARAGRAPH_WORDS`] at sentence ends into pieces of
/// about 80 words (small models often write a whole article as one line); returns how many
/// were split.
///
/// ```
/// use xcomposer_composer::writer::split_long_paragraphs;
/// let mut p = vec!["One two three. ".repeat(60).trim().to_string()];
/// assert_eq!(split_long_paragraphs(&mut p), 1);
/// assert!(p.len() > 1 && p.iter().all(|x| x.ends_with('.')));
/// ```
pub fn split_long_paragraphs(paragraphs: &mut Vec<String>) -> usize {
    let mut split = 0;
    let mut out = Vec::with_capacity(paragraphs.len());
    for p in paragraphs.drain(..) {
        if words(&p) <= LONG_PARAGRAPH_WORDS {
            out.push(p);
            continue;
        }
        split += 1;
        let mut piece = String::new();
        for sentence in sentences(&p) {
            piece.push_str(sentence);
            if words(&piece) >= 80 {
                out.push(piece.trim().to_string());
                piece.clear();
            }
        }
        if !piece.trim().is_empty() {
            match out.last_mut() {
                Some(last) if words(&piece) < 30 => {
                    last.push(' ');
                    last.push_str(piece.trim());
                }
                _ => out.push(piece.trim().to_string()),
            }
        }
    }
    *paragraphs = out;
    split
}

/// `s` cut after each sentence end (the pieces concatenate back to `s`).
pub(crate) fn sentences(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for end in sentence_ends(s) {
        out.push(&s[start..end]);
        start = end;
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// The byte offset just after the last sentence-ending mark of `s`.
fn last_sentence_end(s: &str) -> Option<usize> {
    sentence_ends(s).last().copied()
}

/// The byte offsets just after each sentence-ending mark of `s` (closing quotes included).
fn sentence_ends(s: &str) -> Vec<usize> {
    let ends = ['.', '!', '?', '。', '！', '？', '…'];
    let closers = ['"', '\'', '”', '’', ')', '）', '」', '*'];
    let mut found = Vec::new();
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        let (i, c) = chars[k];
        k += 1;
        if ends.contains(&c) {
            let mut end = i + c.len_utf8();
            while k < chars.len() && closers.contains(&chars[k].1) {
                end = chars[k].0 + chars[k].1.len_utf8();
                k += 1;
            }
            // "3.5" and "e.g.x" are not sentence ends: the mark must close the text or precede a space.
            if k == chars.len() || chars[k].1.is_whitespace() || !c.is_ascii() {
                found.push(end);
            }
        }
    }
    found
}

/// A title cleaned of quotes, heading marks and emphasis; `None` when nothing is left.
pub fn clean_title(raw: &str) -> Option<String> {
    let line = raw.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line.trim_start_matches('#').trim();
    let line = line.strip_prefix("Title:").or_else(|| line.strip_prefix("标题：")).unwrap_or(line);
    let t = line.trim().trim_matches(|c: char| matches!(c, '"' | '“' | '”' | '*' | '「' | '」' | '《' | '》') || c.is_whitespace());
    if t.is_empty() { None } else { Some(t.chars().take(120).collect()) }
}

/// Whether a model's title is one: short (≤ 15 words) and not a copy of the article's opening.
pub fn usable_title(title: &str, first_paragraph: &str) -> bool {
    words(title) <= 15 && !first_paragraph.starts_with(title.trim_end_matches(['.', '…']))
}

/// What follows the first `marker` in `s`, matched ignoring ASCII case; positions are found in
/// `s` itself, so any Unicode input is safe.
fn after_marker<'a>(s: &'a str, marker: &str) -> Option<&'a str> {
    s.char_indices().find_map(|(at, _)| s.get(at..at + marker.len()).filter(|w| w.eq_ignore_ascii_case(marker)).map(|_| &s[at + marker.len()..]))
}

/// A title from the instruction alone: "Write an illustrated article about the Moon" → "The Moon".
pub fn title_from_instruction(instruction: &str) -> String {
    let s = instruction.trim().trim_end_matches(['.', '。', '!', '！']);
    let rest = [" about ", " on ", "关于"].iter().find_map(|m| after_marker(s, m)).unwrap_or(s);
    let rest = rest.trim().trim_end_matches("的文章").trim_end_matches("的图文并茂的文章");
    let mut chars = rest.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).take(120).collect(),
        None => instruction.trim().chars().take(120).collect(),
    }
}

/// Numbers the lines as the original does: `<Seg{i}> line\n`.
pub fn marked_lines(paragraphs: &[String]) -> String {
    paragraphs.iter().enumerate().map(|(i, p)| format!("<Seg{i}> {p}\n")).collect()
}

/// `s` without a leading `<SegN>` marker that a model echoed.
pub fn strip_marker(s: &str) -> &str {
    match s.trim_start().strip_prefix("<Seg") {
        Some(rest) => rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start_matches('>').trim_start(),
        None => s,
    }
}

/// The default writer: a language model prompted with the `writer` and `title` templates.
pub struct LlmWriter {
    /// The model.
    pub model: Arc<dyn TextModel>,
    /// The prompt sets.
    pub prompts: Arc<Prompts>,
    /// Token choice for the article text (the seed is the request's).
    pub sampling: Sampling,
}

impl LlmWriter {
    /// A writer with the defaults tuned for small chat models: temperature 0.6, top-p 0.9,
    /// repetition penalty 1.15.
    pub fn new(model: Arc<dyn TextModel>, prompts: Arc<Prompts>) -> Self {
        LlmWriter { model, prompts, sampling: Sampling { temperature: 0.6, top_p: 0.9, repetition_penalty: 1.15, seed: 0, beams: 1 } }
    }

    fn title(&self, paragraphs: &[String], language: Language) -> Result<(Option<String>, String, usize), ComposeError> {
        let excerpt: String = paragraphs[0].chars().take(600).collect();
        let prompt = self.prompts.get(language).render("title", json!({"article": excerpt}))?;
        let req = Request { prompt: &prompt, max_new_tokens: 24, sampling: Sampling::greedy(1.3), stop: vec!["\"".into(), "”".into(), "\n".into()], max_lines: 0, prompt_as_inputs: false, grammar: None };
        let out = self.model.complete(&req, &mut |_| ControlFlow::Continue(())).map_err(|reason| ComposeError::Model { stage: "title", reason })?;
        let title = clean_title(&out.text).filter(|t| usable_title(t, &paragraphs[0]));
        Ok((title, out.text, out.new_tokens))
    }
}

impl ArticleWriter for LlmWriter {
    fn id(&self) -> String {
        let s = &self.sampling;
        if s.beams > 1 {
            return format!("{} ({} beams, repetition penalty {})", self.model.id(), s.beams, s.repetition_penalty);
        }
        format!("{} (temperature {}, top-p {}, repetition penalty {})", self.model.id(), s.temperature, s.top_p, s.repetition_penalty)
    }

    fn write(&self, req: &WriteRequest, on_text: &mut (dyn FnMut(&str) -> ControlFlow<()> + Send)) -> Result<Written, ComposeError> {
        let prompt = self.prompts.get(req.language).render("writer", json!({"instruction": req.instruction}))?;
        let sampling = Sampling { seed: req.seed, ..self.sampling };
        // One line more than kept, so that the last kept paragraph is known to be complete.
        let mreq = Request { prompt: &prompt, max_new_tokens: req.max_new_tokens, sampling, stop: vec![], max_lines: req.max_paragraphs + 1, prompt_as_inputs: false, grammar: None };
        let out = complete_or_cancel(self.model.as_ref(), &mreq, on_text)?;
        let mut paras = paragraphs(&out.text, req.max_paragraphs + 1, out.truncated());
        // A first line that is a heading is the title.
        let heading = paras.first().filter(|p| p.starts_with('#') && paras.len() > 1).and_then(|p| clean_title(p));
        if heading.is_some() {
            paras.remove(0);
        }
        let split = split_long_paragraphs(&mut paras);
        paras.truncate(req.max_paragraphs.max(1));
        if paras.is_empty() {
            return Err(ComposeError::EmptyArticle(req.instruction.into()));
        }
        let mut detail = format!("{} tokens, ended by {}", out.new_tokens, out.stop_reason);
        if out.truncated() {
            detail.push_str("; an unfinished last sentence was dropped");
        }
        if split > 0 {
            detail.push_str(&format!("; {split} overlong line(s) split into paragraphs at sentence ends"));
        }
        let text_source = Provenance::model(detail, out.text);
        let (title, title_source, title_tokens) = match heading {
            Some(t) => (t, Provenance::new(Source::Model, "the article's first line, a heading"), 0),
            None => match self.title(&paras, req.language)? {
                (Some(t), raw, n) => (t, Provenance::model("asked the model for a title", raw), n),
                (None, raw, n) => (
                    title_from_instruction(req.instruction),
                    Provenance { by: Source::Fallback, detail: "the model's title was empty, too long or a copy of the opening; taken from the instruction".into(), raw: Some(raw) },
                    n,
                ),
            },
        };
        Ok(Written { title, title_source, paragraphs: paras, text_source, new_tokens: out.new_tokens + title_tokens })
    }

    fn rewrite_paragraph(&self, paragraphs: &[String], index: usize, language: Language, seed: u64) -> Result<(String, Provenance), ComposeError> {
        let current = paragraphs.get(index).ok_or_else(|| ComposeError::BadRequest(format!("paragraph {index} does not exist (the article has {})", paragraphs.len())))?;
        let prompt = self.prompts.get(language).render("paragraph", json!({"article": marked_lines(paragraphs), "line": index, "paragraph": current}))?;
        let req = Request { prompt: &prompt, max_new_tokens: 200, sampling: Sampling { seed, ..self.sampling }, stop: vec![], max_lines: 1, prompt_as_inputs: false, grammar: None };
        let out = self.model.complete(&req, &mut |_| ControlFlow::Continue(())).map_err(|reason| ComposeError::Model { stage: "paragraph", reason })?;
        let text = paragraphs_of(&out.text, out.truncated());
        match text {
            Some(t) => Ok((t, Provenance::model(format!("rewritten by the model (seed {seed})"), out.text))),
            None => Err(ComposeError::Model { stage: "paragraph", reason: format!("the model's answer has no text: {:?}", out.text) }),
        }
    }
}

/// The first paragraph of a model's answer, the marker it may echo removed.
fn paragraphs_of(text: &str, truncated: bool) -> Option<String> {
    let first = paragraphs(text, 1, truncated).into_iter().next()?;
    let first = strip_marker(&first).trim().to_string();
    (!first.is_empty()).then_some(first)
}

/// Runs the writer's model on `req`, streaming to `on_text`: [`ComposeError::Cancelled`] when
/// `on_text` asked to stop, the model's failure as the writer stage's error.
pub(crate) fn complete_or_cancel(model: &dyn TextModel, req: &Request, on_text: &mut (dyn FnMut(&str) -> ControlFlow<()> + Send)) -> Result<Completion, ComposeError> {
    let mut stopped = false;
    let out = model.complete(req, &mut |t| {
        let flow = on_text(t);
        stopped |= flow.is_break();
        flow
    });
    if stopped {
        return Err(ComposeError::Cancelled);
    }
    out.map_err(|reason| ComposeError::Model { stage: "writer", reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_follow_the_original_normalisation() {
        let text = "\n  First line.  \n\n\t\nSecond line.\n \nThird.\n";
        assert_eq!(paragraphs(text, 60, false), ["First line.", "Second line.", "Third."]);
        assert_eq!(paragraphs(text, 2, false), ["First line.", "Second line."]);
        // Cut by the budget: the unfinished sentence goes, a paragraph with no full sentence too.
        assert_eq!(paragraphs("A. B.\nC is 3.5 m tall. D is", 60, true), ["A. B.", "C is 3.5 m tall."]);
        assert_eq!(paragraphs("A. B.\nunfinished", 60, true), ["A. B."]);
        assert_eq!(paragraphs("He said \"go.\" Then", 60, true), ["He said \"go.\""]);
        assert_eq!(paragraphs("长城很长。它在北方", 60, true), ["长城很长。"]);
        assert_eq!(paragraphs("only unfinished", 60, true), ["only unfinished"]);
        assert!(paragraphs(" \n\n", 60, false).is_empty());
    }

    #[test]
    fn overlong_lines_are_split_at_sentence_ends() {
        let long = (0..40).map(|i| format!("Sentence number {i} is here.")).collect::<Vec<_>>().join(" ");
        let mut p = vec!["Short one.".to_string(), long.clone()];
        assert_eq!(split_long_paragraphs(&mut p), 1);
        assert_eq!(p[0], "Short one.");
        assert!(p.len() >= 3, "{p:?}");
        assert_eq!(p[1..].join(" "), long);
        assert!(p[1..].iter().all(|x| x.ends_with("here.")));
        let mut zh = vec!["长城很长。".repeat(80)];
        assert_eq!(split_long_paragraphs(&mut zh), 1);
        assert!(zh.len() > 1 && zh.iter().all(|x| x.ends_with('。')));
    }

    #[test]
    fn titles_are_cleaned_or_taken_from_the_instruction() {
        assert!(usable_title("A Short History of Coffee", "Coffee came from Ethiopia."));
        assert!(!usable_title("Coffee came from", "Coffee came from Ethiopia."));
        assert!(!usable_title(&"word ".repeat(16), "x"));
        assert_eq!(clean_title("## **The Moon**").as_deref(), Some("The Moon"));
        assert_eq!(clean_title("Title: \"Coffee\"\nmore").as_deref(), Some("Coffee"));
        assert_eq!(clean_title("  \" \" "), None);
        assert_eq!(title_from_instruction("Write an illustrated article about the history of coffee."), "The history of coffee");
        assert_eq!(title_from_instruction("写一篇关于长城的文章"), "长城");
        assert_eq!(title_from_instruction("Space travel"), "Space travel");
    }

    #[test]
    fn titles_from_any_unicode_instruction_never_panic() {
        let tricky = ["İstanbul", "ﬃ", "e\u{301}\u{301}", "👩‍👩‍👧", "", "   ", "\u{0}\u{7f}", "ΣΑΣ", "ẞ", "Å", "ı"];
        let markers = ["", " about ", " ABOUT ", " On ", "关于", " about", "about "];
        for a in tricky {
            for m in markers {
                for b in tricky {
                    for input in [format!("{a}{m}{b}"), format!("{a}{a}{m}长城{b}"), format!("Write{m}{a}{b}."), format!("{}{m}{b}", a.repeat(500))] {
                        let t = title_from_instruction(&input);
                        assert!(t.chars().count() <= 120, "{input:?} → {t:?}");
                    }
                }
            }
        }
        assert_eq!(title_from_instruction("İ about 长城"), "长城");
        assert_eq!(title_from_instruction("İİ ABOUT the city"), "The city");
        assert_eq!(title_from_instruction("Write about İstanbul."), "İstanbul");
    }

    #[test]
    fn lines_are_marked_from_zero() {
        assert_eq!(marked_lines(&["a".into(), "b".into()]), "<Seg0> a\n<Seg1> b\n");
        assert_eq!(paragraphs_of("<Seg2> New text.\nmore", false).as_deref(), Some("New text."));
    }
}

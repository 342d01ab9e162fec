//! [`StructuredWriter`]: plan, then write. The model first gives a title and an outline of
//! sections (under [`outline_grammar`] when it takes grammars), then writes each section with
//! the title, the outline and the end of the previous section in its prompt; meta-talk and
//! repeated sentences are removed ([`crate::cleanup`]). Small models stay on topic far longer
//! this way than when asked for a whole article at once.

use std::ops::ControlFlow;
use std::sync::Arc;

use serde_json::json;

use crate::answer_grammar::{outline_grammar, paragraph_grammar};
use crate::article::{Provenance, Source};
use crate::cleanup::clean;
use crate::error::ComposeError;
use crate::language::Language;
use crate::text_model::{Request, Sampling};
use crate::writer::{ArticleWriter, LlmWriter, WriteRequest, Written, clean_title, complete_or_cancel, paragraphs, split_long_paragraphs, title_from_instruction, usable_title};

/// Sections when neither the instruction nor the caller says.
pub const DEFAULT_SECTIONS: usize = 4;

/// Most sections an outline may have.
pub const MAX_SECTIONS: usize = 12;

/// Fewest new tokens a section gets (the article's budget is otherwise shared out).
pub const MIN_SECTION_TOKENS: usize = 90;

/// Shortest section a model that takes grammars may write, in characters (half for Chinese).
pub const MIN_SECTION_CHARS: usize = 200;

/// The number of sections or paragraphs an instruction asks for ("in 5 sections", "five
/// paragraphs", "3 parts", "分五节", "4个部分"), if it asks, within 1 to [`MAX_SECTIONS`].
///
/// ```
/// use xcomposer_composer::structured_writer::sections_from_instruction;
/// assert_eq!(sections_from_instruction("An article on bikes, in 5 sections."), Some(5));
/// assert_eq!(sections_from_instruction("Write three paragraphs about tea"), Some(3));
/// assert_eq!(sections_from_instruction("写一篇分五个部分的文章"), Some(5));
/// assert_eq!(sections_from_instruction("Write about the 1990s"), None);
/// ```
pub fn sections_from_instruction(instruction: &str) -> Option<usize> {
    const WORDS: [&str; 12] = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"];
    const UNITS: [&str; 6] = ["section", "paragraph", "part", "chapter", "step", "point"];
    let lower = instruction.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    for pair in words.windows(2) {
        let n = pair[0].parse::<usize>().ok().or_else(|| WORDS.iter().position(|w| *w == pair[0]).map(|i| i + 1));
        if let Some(n) = n.filter(|n| (1..=MAX_SECTIONS).contains(n))
            && UNITS.iter().any(|u| pair[1].starts_with(u))
        {
            return Some(n);
        }
    }
    const ZH: [char; 10] = ['一', '二', '三', '四', '五', '六', '七', '八', '九', '十'];
    let chars: Vec<char> = instruction.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let n = c.to_digit(10).map(|d| d as usize).or_else(|| ZH.iter().position(|z| z == c).map(|i| i + 1));
        let rest: String = chars[i + 1..].iter().take(3).collect::<String>().trim_start_matches('个').to_string();
        if let Some(n) = n.filter(|n| (1..=MAX_SECTIONS).contains(n))
            && ["节", "段", "部分", "章"].iter().any(|u| rest.starts_with(u))
        {
            return Some(n);
        }
    }
    None
}

/// A plan: the title line and the section headings.
#[derive(Debug, Clone, PartialEq)]
pub struct Outline {
    /// The model's title line, cleaned (`None` when it wrote none).
    pub title: Option<String>,
    /// The headings, in order.
    pub headings: Vec<String>,
}

/// Reads a plan: the first line is the title, numbered or bulleted lines (`1. `, `2) `, `- `)
/// are headings; at most `sections` are kept.
///
/// ```
/// use xcomposer_composer::structured_writer::parse_outline;
/// let o = parse_outline(" Bees at Work\n1. The hive\n2) **Honey**\n- Winter", 4);
/// assert_eq!(o.title.as_deref(), Some("Bees at Work"));
/// assert_eq!(o.headings, ["The hive", "Honey", "Winter"]);
/// ```
pub fn parse_outline(text: &str, sections: usize) -> Outline {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let title = lines.next().and_then(clean_title);
    let headings = lines
        .filter_map(|l| {
            let digits = l.trim_start_matches(|c: char| c.is_ascii_digit());
            let numbered = (digits.len() < l.len()).then(|| digits.strip_prefix(['.', ')', '、'])).flatten();
            let bulleted = l.strip_prefix(['-', '*', '•']).filter(|r| r.starts_with(' '));
            numbered.or(bulleted).and_then(clean_title)
        })
        .take(sections)
        .collect();
    Outline { title, headings }
}

/// `text` without an opening line or phrase that repeats `heading` ("The Hive: …", "The hive\n…").
fn without_heading(text: &str, heading: &str) -> String {
    let t = text.trim_start().trim_start_matches(['#', '*', ' ']);
    match t.get(..heading.len()).filter(|h| h.eq_ignore_ascii_case(heading)) {
        Some(_) => {
            let rest = t[heading.len()..].trim_start_matches(['*', '"', '”']);
            match rest.strip_prefix([':', '：', '\n']) {
                Some(r) => r.trim_start().to_string(),
                None => text.to_string(),
            }
        }
        None => text.to_string(),
    }
}

/// Whether a line is a heading rather than prose: short and without a sentence end, or ending
/// with a colon.
fn heading_like(line: &str) -> bool {
    let l = line.trim();
    l.ends_with([':', '：']) || (l.split_whitespace().count() <= 12 && l.chars().count() < 80 && !l.ends_with(['.', '!', '?', '。', '！', '？', '"', '”', ')']))
}

/// `p` without a leading label such as "The World of Honeybees: " (at most 8 words, no
/// sentence end) when prose follows it.
fn without_label(p: &str) -> String {
    if let Some((label, rest)) = p.split_once([':', '：'])
        && label.split_whitespace().count() <= 8
        && !label.contains(['.', '!', '?', '。'])
        && rest.trim().chars().count() >= 40
    {
        return rest.trim_start_matches(['*', ' ']).trim().to_string();
    }
    p.to_string()
}

/// The end of a section for the next one's prompt: its last sentences, about 250 characters
/// (more, and a small model copies it).
fn tail(section: &[String]) -> String {
    let text = section.join(" ");
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 250 {
        return text;
    }
    let cut: String = chars[chars.len() - 250..].iter().collect();
    let start = cut.find(['.', '!', '?', '。', '！', '？']).map_or(0, |i| i + 1);
    cut[start..].trim().to_string()
}

/// The plan-then-write writer (see the module documentation).
pub struct StructuredWriter {
    /// The one-shot writer over the same model: its sampling writes the sections, and it
    /// rewrites single paragraphs.
    pub oneshot: LlmWriter,
    /// Sections to write (`None`: as the instruction says, else [`DEFAULT_SECTIONS`]).
    pub sections: Option<usize>,
}

impl StructuredWriter {
    /// A structured writer around a one-shot writer's model, prompts and sampling.
    pub fn new(oneshot: LlmWriter) -> Self {
        StructuredWriter { oneshot, sections: None }
    }

    /// Asks for the plan; returns the outline, whether a grammar held it, the raw answer and its tokens.
    fn plan(&self, req: &WriteRequest, sections: usize) -> Result<(Outline, bool, String, usize), ComposeError> {
        let w = &self.oneshot;
        let prompt = w.prompts.get(req.language).render("plan", json!({"instruction": req.instruction, "sections": sections}))?;
        let constrained = w.model.takes_grammar();
        let grammar = constrained.then(|| Arc::new(outline_grammar(sections)));
        let budget = 40 + 24 * sections;
        let mreq = Request {
            prompt: &prompt,
            max_new_tokens: budget,
            sampling: Sampling { seed: req.seed, ..Sampling::greedy(1.1) },
            stop: vec![],
            max_lines: sections + 1,
            prompt_as_inputs: false,
            grammar,
        };
        let out = w.model.complete(&mreq, &mut |_| ControlFlow::Continue(())).map_err(|reason| ComposeError::Model { stage: "plan", reason })?;
        Ok((parse_outline(&out.text, sections), constrained, out.text, out.new_tokens))
    }

    /// Writes one section; returns its paragraphs, the raw answer and its tokens.
    fn section(
        &self,
        req: &WriteRequest,
        vars: serde_json::Value,
        budget: usize,
        k: usize,
        on_text: &mut (dyn FnMut(&str) -> ControlFlow<()> + Send),
    ) -> Result<(Vec<String>, String, usize), ComposeError> {
        let w = &self.oneshot;
        let prompt = w.prompts.get(req.language).render("section", vars)?;
        let sampling = Sampling { seed: req.seed.wrapping_add(k as u64), ..w.sampling };
        // Under a grammar, one paragraph of prose; otherwise a few lines, headings dropped below.
        // A Chinese character carries about what an English word does: half the characters.
        let min_chars = if req.language == Language::Zh { MIN_SECTION_CHARS / 2 } else { MIN_SECTION_CHARS };
        let grammar = w.model.takes_grammar().then(|| Arc::new(paragraph_grammar(min_chars)));
        let max_lines = if grammar.is_some() { 1 } else { 3 };
        let mreq = Request { prompt: &prompt, max_new_tokens: budget, sampling, stop: vec![], max_lines, prompt_as_inputs: false, grammar };
        let out = complete_or_cancel(w.model.as_ref(), &mreq, on_text)?;
        let mut paras: Vec<String> = paragraphs(&out.text, 3, out.truncated()).into_iter().filter(|p| !heading_like(p)).map(|p| without_label(&p)).collect();
        paras.truncate(2);
        Ok((paras, out.text, out.new_tokens))
    }
}

impl ArticleWriter for StructuredWriter {
    fn id(&self) -> String {
        let sections = self.sections.map_or_else(|| "sections as the instruction says, else 4".to_string(), |n| format!("{n} sections"));
        format!("structured ({sections}): {}", self.oneshot.id())
    }

    fn write(&self, req: &WriteRequest, on_text: &mut (dyn FnMut(&str) -> ControlFlow<()> + Send)) -> Result<Written, ComposeError> {
        let sections = self.sections.or_else(|| sections_from_instruction(req.instruction)).unwrap_or(DEFAULT_SECTIONS).clamp(1, MAX_SECTIONS);
        let (outline, constrained, plan_raw, mut new_tokens) = self.plan(req, sections)?;
        let missing = sections.saturating_sub(outline.headings.len());
        let mut headings = outline.headings.clone();
        let topic = title_from_instruction(req.instruction);
        headings.extend((headings.len()..sections).map(|k| format!("{topic}, part {}", k + 1)));
        let title = outline.title.clone().unwrap_or_else(|| topic.clone());
        let outline_text: String = headings.iter().enumerate().map(|(k, h)| format!("{}. {h}\n", k + 1)).collect();
        let budget = (req.max_new_tokens / sections).max(MIN_SECTION_TOKENS);
        let mut paras: Vec<String> = Vec::new();
        let mut raw = format!("[plan]\n{plan_raw}\n");
        let mut previous: Vec<String> = Vec::new();
        for (k, heading) in headings.iter().enumerate() {
            if k > 0 && on_text("\n\n").is_break() {
                return Err(ComposeError::Cancelled);
            }
            let vars = json!({"title": title, "outline": outline_text.trim_end(), "number": k + 1, "heading": heading, "previous": tail(&previous)});
            let (section, text, n) = self.section(req, vars, budget, k, on_text)?;
            new_tokens += n;
            raw.push_str(&format!("[section {}]\n{text}\n", k + 1));
            let section: Vec<String> = section.iter().map(|p| without_heading(p, heading)).filter(|p| !p.trim().is_empty()).collect();
            previous = clean(section.clone()).0;
            paras.extend(section);
        }
        let (mut paras, removed) = clean(paras);
        let split = split_long_paragraphs(&mut paras);
        paras.truncate(req.max_paragraphs.max(1));
        if paras.is_empty() {
            return Err(ComposeError::EmptyArticle(req.instruction.into()));
        }
        let mut detail = format!(
            "structured writer: an outline of {sections} sections ({}), then each section written with the title, the outline and the end of the previous section; {new_tokens} tokens",
            if constrained { "decoded under the outline grammar" } else { "unconstrained: the model takes no grammar" }
        );
        if missing > 0 {
            detail.push_str(&format!("; the outline had {} heading(s), {missing} named after the instruction", outline.headings.len()));
        }
        for note in [removed.describe(), if split > 0 { format!("{split} overlong line(s) split at sentence ends") } else { String::new() }] {
            if !note.is_empty() {
                detail.push_str("; ");
                detail.push_str(&note);
            }
        }
        let (title, title_source) = match outline.title.filter(|t| usable_title(t, &paras[0]) && !crate::cleanup::is_meta_talk(t)) {
            Some(t) => (t, Provenance::model("the title line of the model's outline", plan_raw)),
            None => (topic, Provenance { by: Source::Fallback, detail: "the outline's title was missing, too long or a copy of the opening; taken from the instruction".into(), raw: Some(plan_raw) }),
        };
        Ok(Written { title, title_source, paragraphs: paras, text_source: Provenance::model(detail, raw), new_tokens })
    }

    fn rewrite_paragraph(&self, paragraphs: &[String], index: usize, language: Language, seed: u64) -> Result<(String, Provenance), ComposeError> {
        self.oneshot.rewrite_paragraph(paragraphs, index, language, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_counts_come_from_words_digits_and_chinese() {
        assert_eq!(sections_from_instruction("Write an illustrated article on how bicycles changed city life, in 5 sections."), Some(5));
        assert_eq!(sections_from_instruction("Six parts on rivers"), Some(6));
        assert_eq!(sections_from_instruction("a 3-paragraph story"), Some(3));
        assert_eq!(sections_from_instruction("写一篇关于长城的文章，分4节"), Some(4));
        assert_eq!(sections_from_instruction("write 40 sections"), None);
        assert_eq!(sections_from_instruction("Write about coffee."), None);
        assert_eq!(sections_from_instruction("写一篇关于长城的图文并茂的文章"), None);
    }

    #[test]
    fn outlines_are_read_from_numbered_or_bulleted_lines() {
        let o = parse_outline("Title: \"Honeybees\"\n\n1. Inside the hive\n2. The waggle dance\n3. Winter\nSome chatter", 2);
        assert_eq!(o.title.as_deref(), Some("Honeybees"));
        assert_eq!(o.headings, ["Inside the hive", "The waggle dance"]);
        assert_eq!(parse_outline("", 3), Outline { title: None, headings: vec![] });
        assert_eq!(parse_outline("标题\n1、长城的历史\n2. 建筑", 5).headings, ["长城的历史", "建筑"]);
    }

    #[test]
    fn an_echoed_heading_is_removed_and_the_tail_keeps_whole_sentences() {
        assert_eq!(without_heading("The Hive: Bees live there.", "The hive"), "Bees live there.");
        assert_eq!(without_heading("**The hive**\nBees live there.", "The hive"), "Bees live there.");
        assert_eq!(without_heading("The hive is warm.", "The hive"), "The hive is warm.");
        let long = vec!["First sentence is here. ".repeat(30).trim().to_string()];
        let t = tail(&long);
        assert!(t.chars().count() <= 250 && t.starts_with("First") && t.ends_with('.'), "{t}");
        assert_eq!(tail(&["Short.".to_string()]), "Short.");
    }

    #[test]
    fn heading_lines_and_labels_are_not_prose() {
        assert!(heading_like("The World of Honeybees:"));
        assert!(heading_like("The Life of a Beekeeper"));
        assert!(!heading_like("Bees live in hives."));
        assert!(!heading_like(&"word ".repeat(20)));
        assert_eq!(without_label("The World of Honeybees: Bees live in hives and make honey all summer long."), "Bees live in hives and make honey all summer long.");
        assert_eq!(without_label("In 1850: a year."), "In 1850: a year.");
        assert_eq!(without_label("He said one thing. Then: more and more and more and more and more text."), "He said one thing. Then: more and more and more and more and more text.");
    }
}

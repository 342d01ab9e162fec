//! Stage 2a, [`ImageSpotter`]: after which paragraphs the images go. The default,
//! [`LlmSpotter`], asks the model with `<SegN>`-marked lines as the original does, parses the
//! answer robustly ([`parse_spots`]) and falls back to [`spread_spots`] when the answer is
//! unusable.

use std::ops::ControlFlow;
use std::sync::Arc;

use serde_json::json;

use crate::article::{Provenance, Source};
use crate::error::ComposeError;
use crate::language::Language;
use crate::prompts::Prompts;
use crate::text_model::{Request, Sampling, TextModel};
use crate::answer_grammar::spot_grammar;
use crate::writer::marked_lines;

/// The chosen positions: an image goes after each listed paragraph (ascending, distinct).
#[derive(Debug, Clone, PartialEq)]
pub struct Spots {
    /// Paragraph indices.
    pub after: Vec<usize>,
    /// How they were chosen.
    pub provenance: Provenance,
}

/// Chooses where images go.
pub trait ImageSpotter: Send + Sync {
    /// What the spotter is (for provenance).
    fn id(&self) -> String;
    /// Chooses `count` positions (or as many as fit, when `None`).
    fn spot(&self, paragraphs: &[String], count: Option<usize>, language: Language) -> Result<Spots, ComposeError>;
}

/// What [`parse_spots`] made of an answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedSpots {
    /// Valid line numbers, in the order the answer gives them, without repeats.
    pub lines: Vec<usize>,
    /// Numbers that name no line.
    pub out_of_range: Vec<usize>,
    /// Whether `<SegN>` markers were found (bare numbers are then ignored).
    pub markers: bool,
}

/// Reads line numbers from a model's answer: `<SegN>` markers (also `Seg N`, `<seg3`,
/// `segment 3`) when there are any, else bare numbers and ranges (`2-4`, `2 to 4`, `2~4`,
/// `2至4`); full-width digits are read too. Repeats are dropped, numbers ≥ `n_lines` reported.
///
/// ```
/// use xcomposer_composer::spotter::parse_spots;
/// let p = parse_spots("适合插入图像的行是<Seg1>, <Seg4> and <Seg1> again, <Seg9>", 6);
/// assert_eq!(p.lines, [1, 4]);
/// assert_eq!(p.out_of_range, [9]);
/// ```
pub fn parse_spots(answer: &str, n_lines: usize) -> ParsedSpots {
    let text: String = answer
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from_u32(c as u32 - '０' as u32 + '0' as u32).unwrap_or(c),
            _ => c,
        })
        .collect();
    let mut numbers = Vec::new();
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("seg") {
        let mut i = from + at + 3;
        let bytes = lower.as_bytes();
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1; // "segment"
        }
        while i < bytes.len() && matches!(bytes[i], b' ' | b'_' | b'-' | b'#') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i > start
            && let Ok(n) = lower[start..i].parse::<usize>()
        {
            numbers.push(n);
        }
        from = i.max(from + at + 3);
    }
    let markers = !numbers.is_empty();
    if !markers {
        numbers = bare_numbers(&text, n_lines);
    }
    let mut out = ParsedSpots { markers, ..Default::default() };
    for n in numbers {
        if n >= n_lines {
            if !out.out_of_range.contains(&n) {
                out.out_of_range.push(n);
            }
        } else if !out.lines.contains(&n) {
            out.lines.push(n);
        }
    }
    out
}

/// Bare numbers of `text`, ranges expanded (a range is capped at `n_lines` entries).
fn bare_numbers(text: &str, n_lines: usize) -> Vec<usize> {
    let mut found: Vec<(usize, usize, usize)> = Vec::new(); // (value, start, end)
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_ascii_digit() {
            let mut end = i + 1;
            while let Some(&(j, d)) = chars.peek() {
                if !d.is_ascii_digit() {
                    break;
                }
                end = j + 1;
                chars.next();
            }
            if let Ok(v) = text[i..end].parse() {
                found.push((v, i, end));
            }
        }
    }
    let mut out = Vec::new();
    let mut k = 0;
    while k < found.len() {
        let (a, _, a_end) = found[k];
        if let Some(&(b, b_start, _)) = found.get(k + 1) {
            let sep = text[a_end..b_start].trim().to_lowercase();
            if matches!(sep.as_str(), "-" | "–" | "—" | "~" | "to" | "至" | "到" | "..") && a <= b {
                out.extend((a..=b).take(n_lines.max(1)));
                k += 2;
                continue;
            }
        }
        out.push(a);
        k += 1;
    }
    out
}

/// How many images an article of `n` paragraphs gets from the rule-based spotter and the
/// fallback of an unconstrained model left to decide: about one per two paragraphs, 1 to 5.
pub fn default_count(n: usize) -> usize {
    n.div_ceil(2).clamp(1, 5).min(n.max(1))
}

/// How many images a constrained spotter asks for when nobody says: about one per 2–3
/// paragraphs (n / 2.5, rounded), at least 1, at most 8.
///
/// ```
/// use xcomposer_composer::spotter::target_count;
/// assert_eq!([1, 2, 4, 5, 8, 10, 40].map(target_count), [1, 1, 2, 2, 3, 4, 8]);
/// ```
pub fn target_count(n: usize) -> usize {
    ((2 * n + 2) / 5).clamp(1, 8).min(n.max(1))
}

/// The lines an image may follow: all but headings (`#…`), unless that leaves none.
fn image_lines(paragraphs: &[String]) -> Vec<usize> {
    let text: Vec<usize> = (0..paragraphs.len()).filter(|&i| !paragraphs[i].starts_with('#')).collect();
    if text.is_empty() { (0..paragraphs.len()).collect() } else { text }
}

/// The deterministic rule: the paragraphs are cut into `count` runs of about equal length and
/// the image goes after the longest paragraph of each run (headings avoided).
///
/// ```
/// use xcomposer_composer::spotter::spread_spots;
/// let p: Vec<String> = ["a", "bbbb", "cc", "d", "eeeee", "f"].iter().map(|s| s.to_string()).collect();
/// assert_eq!(spread_spots(&p, 2, &[]), [1, 4]);
/// ```
pub fn spread_spots(paragraphs: &[String], count: usize, taken: &[usize]) -> Vec<usize> {
    let heading = |i: &usize| paragraphs[*i].starts_with('#');
    let mut free: Vec<usize> = (0..paragraphs.len()).filter(|i| !taken.contains(i) && !heading(i)).collect();
    if free.len() < count {
        free = (0..paragraphs.len()).filter(|i| !taken.contains(i)).collect();
    }
    let count = count.min(free.len());
    let mut out = Vec::with_capacity(count);
    for b in 0..count {
        let run = &free[b * free.len() / count..(b + 1) * free.len() / count];
        let weight = |i: usize| if heading(&i) { 0 } else { paragraphs[i].chars().count() };
        // The longest; the earliest of equals.
        if let Some(&best) = run.iter().rev().max_by_key(|&&i| weight(i)) {
            out.push(best);
        }
    }
    out.sort_unstable();
    out
}

/// The default spotter: the model with the `spot` prompt.
pub struct LlmSpotter {
    /// The model.
    pub model: Arc<dyn TextModel>,
    /// The prompt sets.
    pub prompts: Arc<Prompts>,
    /// Token budget of the answer.
    pub max_new_tokens: usize,
    /// Beams of the (greedy) answer: 1, or the original's 5 on InternLM-XComposer.
    pub beams: usize,
}

impl LlmSpotter {
    /// A spotter with a 48-token answer budget, one beam.
    pub fn new(model: Arc<dyn TextModel>, prompts: Arc<Prompts>) -> Self {
        LlmSpotter { model, prompts, max_new_tokens: 48, beams: 1 }
    }
}

/// Turns a parsed answer into spots: the first `count` valid lines (at most half the article
/// when the model decides), topped up or replaced by [`spread_spots`] and said so.
pub fn spots_from_answer(answer: &str, paragraphs: &[String], count: Option<usize>) -> Spots {
    let n = paragraphs.len();
    let parsed = parse_spots(answer, n);
    let want = count.map(|c| c.min(n));
    let cap = want.unwrap_or_else(|| default_count(n).max(n / 2));
    let mut lines: Vec<usize> = parsed.lines.iter().copied().take(cap).collect();
    let mut notes = Vec::new();
    if !parsed.out_of_range.is_empty() {
        notes.push(format!("ignored {:?} (the article has lines 0–{})", parsed.out_of_range, n.saturating_sub(1)));
    }
    if parsed.lines.len() > cap {
        notes.push(format!("kept the first {cap} of {} lines", parsed.lines.len()));
    }
    let by;
    if lines.is_empty() {
        let k = want.unwrap_or_else(|| default_count(n));
        lines = spread_spots(paragraphs, k, &[]);
        by = Source::Fallback;
        notes.insert(0, format!("the answer names no line; {k} placed after the longest paragraphs, spread out"));
    } else {
        by = Source::Model;
        if let Some(k) = want
            && lines.len() < k
        {
            let extra = spread_spots(paragraphs, k - lines.len(), &lines);
            notes.push(format!("the model named {}, {} more placed by the longest-paragraph rule", lines.len(), extra.len()));
            lines.extend(extra);
        }
    }
    lines.sort_unstable();
    let detail = if notes.is_empty() { format!("the model chose lines {lines:?}") } else { notes.join("; ") };
    Spots { after: lines, provenance: Provenance { by, detail, raw: Some(answer.into()) } }
}

impl ImageSpotter for LlmSpotter {
    fn id(&self) -> String {
        if self.beams > 1 { format!("{} ({} beams)", self.model.id(), self.beams) } else { format!("{} (greedy)", self.model.id()) }
    }

    fn spot(&self, paragraphs: &[String], count: Option<usize>, language: Language) -> Result<Spots, ComposeError> {
        if paragraphs.is_empty() {
            return Ok(Spots { after: vec![], provenance: Provenance::new(Source::Fallback, "no paragraphs") });
        }
        if count == Some(0) {
            return Ok(Spots { after: vec![], provenance: Provenance::new(Source::User, "no images asked: the model was not asked") });
        }
        // A model that takes a grammar is asked for a number of images (the caller's, else about
        // one per 2–3 paragraphs) and can answer only with that many valid markers; another is
        // asked as the original asks and its answer parsed.
        let constrained = self.model.takes_grammar();
        let count = if constrained { Some(count.unwrap_or_else(|| target_count(image_lines(paragraphs).len()))) } else { count };
        let count_text = count.map(|c| c.min(paragraphs.len()).to_string()).unwrap_or_default();
        let prompt = self.prompts.get(language).render("spot", json!({"article": marked_lines(paragraphs), "count": count_text}))?;
        let grammar = count.filter(|_| constrained).map(|c| Arc::new(spot_grammar(&image_lines(paragraphs), c)));
        let max_new_tokens = count.filter(|_| constrained).map_or(self.max_new_tokens, |c| self.max_new_tokens.max(8 * c + 8));
        let req = Request { prompt: &prompt, max_new_tokens, sampling: Sampling { beams: self.beams, ..Sampling::greedy(1.0) }, stop: vec![], max_lines: 0, prompt_as_inputs: false, grammar };
        let out = self.model.complete(&req, &mut |_| ControlFlow::Continue(())).map_err(|reason| ComposeError::Model { stage: "spotter", reason })?;
        let mut spots = spots_from_answer(&out.text, paragraphs, count);
        let how = if constrained { format!("decoded under a grammar of {} distinct valid line markers", count.unwrap_or(0).min(image_lines(paragraphs).len())) } else { "unconstrained (the model takes no grammar): the answer parsed".to_string() };
        spots.provenance.detail = format!("{how}; {}", spots.provenance.detail);
        Ok(spots)
    }
}

/// A spotter without a model: [`spread_spots`] alone.
pub struct SpreadSpotter;

impl ImageSpotter for SpreadSpotter {
    fn id(&self) -> String {
        "longest paragraph per run".into()
    }

    fn spot(&self, paragraphs: &[String], count: Option<usize>, _: Language) -> Result<Spots, ComposeError> {
        let k = count.unwrap_or_else(|| default_count(paragraphs.len()));
        Ok(Spots { after: spread_spots(paragraphs, k, &[]), provenance: Provenance::new(Source::Fallback, format!("{k} after the longest paragraphs, spread out")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paras(n: usize) -> Vec<String> {
        (0..n).map(|i| "x".repeat(10 + (i * 7) % 5)).collect()
    }

    #[test]
    fn parser_reads_markers_numbers_ranges_and_rejects_the_rest() {
        assert_eq!(parse_spots(":\n\n<Seg1> This discovery...\n<Seg2> Over time", 5).lines, [1, 2]);
        assert_eq!(parse_spots("seg 3, SEG_0 and segment 2", 5).lines, [3, 0, 2]);
        // Markers win over the years quoted in the text.
        let p = parse_spots("<Seg2> In 1623 the king", 5);
        assert_eq!((p.lines, p.markers, p.out_of_range), (vec![2], true, vec![]));
        assert_eq!(parse_spots("lines 1, 3 and 3", 5).lines, [1, 3]);
        assert_eq!(parse_spots("2-4", 6).lines, [2, 3, 4]);
        assert_eq!(parse_spots("1 to 2 and 4", 6).lines, [1, 2, 4]);
        assert_eq!(parse_spots("第１行和第３行", 6).lines, [1, 3]);
        assert_eq!(parse_spots("0至2", 6).lines, [0, 1, 2]);
        let p = parse_spots("7 and 12", 6);
        assert_eq!((p.lines.len(), p.out_of_range), (0, vec![7, 12]));
        assert_eq!(parse_spots("", 6), ParsedSpots::default());
        assert!(parse_spots("segments are nice", 6).lines.is_empty());
        // A huge range is capped, not expanded to millions.
        assert_eq!(parse_spots("0-99999999", 3).lines, [0, 1, 2]);
    }

    #[test]
    fn spots_fall_back_top_up_and_cap_with_a_record() {
        let p = paras(6);
        let s = spots_from_answer("I like this article", &p, None);
        assert_eq!(s.provenance.by, Source::Fallback);
        assert_eq!(s.after.len(), default_count(6));
        assert!(s.provenance.detail.contains("names no line"));
        let s = spots_from_answer("<Seg4>", &p, Some(3));
        assert_eq!(s.provenance.by, Source::Model);
        assert_eq!(s.after.len(), 3);
        assert!(s.after.contains(&4), "{:?}", s.after);
        assert!(s.provenance.detail.contains("2 more placed"), "{}", s.provenance.detail);
        let s = spots_from_answer("<Seg5> <Seg0> <Seg3> <Seg9>", &p, Some(2));
        assert_eq!(s.after, [0, 5]);
        assert!(s.provenance.detail.contains("ignored [9]"));
        // The model deciding: every line named is capped at half the article.
        let s = spots_from_answer("<Seg0><Seg1><Seg2><Seg3><Seg4><Seg5>", &p, None);
        assert_eq!(s.after, [0, 1, 2]);
        // More images asked than lines: one per line.
        assert_eq!(spots_from_answer("", &paras(2), Some(5)).after, [0, 1]);
    }

    #[test]
    fn spread_prefers_long_paragraphs_and_skips_headings_and_taken_lines() {
        let p: Vec<String> = ["# Heading that is long", "short", "a longer one", "mid one"].iter().map(|s| s.to_string()).collect();
        assert_eq!(spread_spots(&p, 1, &[]), [2]);
        assert_eq!(spread_spots(&p, 2, &[]), [1, 2]);
        assert_eq!(spread_spots(&p, 2, &[2]), [1, 3]);
        assert_eq!(spread_spots(&p, 9, &[]).len(), 4);
        assert!(spread_spots(&[], 2, &[]).is_empty());
        assert_eq!(default_count(6), 3);
        assert_eq!(default_count(1), 1);
        assert_eq!(default_count(30), 5);
    }
}

//! Cleaning a small model's article text: meta-talk (the model talking about the article or to
//! the user instead of writing it) and repeated sentences and paragraphs are removed, and both
//! can be counted in a finished article.

use crate::writer::sentences;

/// Sentence openings that talk about the text or to the reader, matched ignoring case after
/// leading `#`, `*` and spaces.
const META_OPENINGS: &[&str] = &[
    "title:",
    "outline:",
    "section ",
    "sure",
    "certainly",
    "of course",
    "absolutely!",
    "here is",
    "here's",
    "here are",
    "in this article",
    "in this section",
    "in this blog",
    "in this post",
    "this article",
    "this section",
    "this blog post",
    "this post",
    "i hope",
    "i'm glad",
    "i am glad",
    "i'd be happy",
    "i would be happy",
    "as an ai",
    "let me know",
    "feel free",
    "what would you like",
    "do you have any",
    "would you like",
    "if you have any",
    "note:",
    "标题：",
    "标题:",
    "当然！",
    "当然可以",
    "以下是",
    "在这篇文章中",
    "本文将",
    "希望这篇文章",
    "你还想了解",
    "您还想了解",
];

/// Whether a sentence or line is meta-talk: it opens as one of the openings above, or it is a
/// question to the reader ("Would you like to know more?", "What else can I tell you?").
///
/// ```
/// use xcomposer_composer::cleanup::is_meta_talk;
/// assert!(is_meta_talk("Sure! Here is an article about bees:"));
/// assert!(is_meta_talk("What would you like to know?"));
/// assert!(!is_meta_talk("Bees make honey from nectar."));
/// ```
pub fn is_meta_talk(sentence: &str) -> bool {
    let s = sentence.trim().trim_start_matches(['#', '*', ' ', '"', '“']).trim().to_lowercase();
    let opens = |m: &&str| s.strip_prefix(*m).is_some_and(|rest| !m.ends_with(|c: char| c.is_alphanumeric()) || !rest.starts_with(|c: char| c.is_alphanumeric() || c == '-'));
    if META_OPENINGS.iter().any(opens) {
        return true;
    }
    s.ends_with(['?', '？']) && READER_QUESTIONS.iter().any(|q| s.contains(q))
}

/// Phrases of a question put to the reader rather than asked by the article.
const READER_QUESTIONS: &[&str] =
    &["would you like", "do you want", "do you have any", "like to know", "want to know more", "anything else", "can i help", "can i do", "shall i", "should i", "any questions", "你还想", "您还想"];

/// A sentence reduced to its letters and digits, lowercased, for comparing repeats.
fn normalized(s: &str) -> String {
    s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// What [`clean`] removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Removed {
    /// Meta-talk sentences, as written.
    pub meta_talk: Vec<String>,
    /// Sentences that repeated an earlier one.
    pub repeated_sentences: usize,
    /// Paragraphs left empty and dropped.
    pub empty_paragraphs: usize,
}

impl Removed {
    /// A one-line account for the provenance ("" when nothing was removed).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.meta_talk.is_empty() {
            parts.push(format!("{} meta-talk sentence(s) removed ({:?})", self.meta_talk.len(), self.meta_talk.iter().map(|s| s.chars().take(40).collect::<String>()).collect::<Vec<_>>()));
        }
        if self.repeated_sentences > 0 {
            parts.push(format!("{} repeated sentence(s) removed", self.repeated_sentences));
        }
        parts.join("; ")
    }
}

/// Removes meta-talk sentences and sentences (hence paragraphs) that repeat an earlier one of
/// the article, keeping the first; paragraphs left empty go.
///
/// ```
/// use xcomposer_composer::cleanup::clean;
/// let (p, removed) = clean(vec!["Sure! Here is the article.".into(), "Bees fly. Bees fly.".into(), "Bees fly.".into()]);
/// assert_eq!(p, ["Bees fly."]);
/// assert_eq!((removed.meta_talk.len(), removed.repeated_sentences), (2, 2));
/// ```
pub fn clean(paragraphs: Vec<String>) -> (Vec<String>, Removed) {
    let mut removed = Removed::default();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for p in paragraphs {
        let mut kept = String::new();
        for sentence in sentences(&p) {
            let s = sentence.trim();
            if s.is_empty() {
                continue;
            }
            if is_meta_talk(s) {
                removed.meta_talk.push(s.to_string());
                continue;
            }
            let key = normalized(s);
            if !key.is_empty() && !seen.insert(key) {
                removed.repeated_sentences += 1;
                continue;
            }
            if !kept.is_empty() && !is_cjk_end(&kept) {
                kept.push(' ');
            }
            kept.push_str(s);
        }
        if kept.chars().any(char::is_alphanumeric) {
            out.push(kept);
        } else {
            removed.empty_paragraphs += 1;
        }
    }
    (out, removed)
}

/// Whether `s` ends with a CJK sentence mark (no space follows one).
fn is_cjk_end(s: &str) -> bool {
    s.ends_with(['。', '！', '？', '”'])
}

/// How many sentences of `paragraphs` are meta-talk (for measuring articles).
pub fn count_meta_talk(paragraphs: &[String]) -> usize {
    paragraphs.iter().flat_map(|p| sentences(p)).filter(|s| is_meta_talk(s)).count()
}

/// How many sentences of `paragraphs` repeat an earlier one (for measuring articles).
pub fn count_repeated_sentences(paragraphs: &[String]) -> usize {
    let mut seen = std::collections::HashSet::new();
    paragraphs.iter().flat_map(|p| sentences(p)).map(normalized).filter(|k| !k.is_empty() && !seen.insert(k.clone())).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_talk_rules_catch_the_small_models_habits_and_spare_content() {
        for meta in [
            "Title: The Honeybee",
            "## Title: Bees",
            "**Sure!** Here is an article about bees.",
            "Certainly! Below is the article.",
            "In this article, we will explore the life of bees.",
            "In this article we look at bees.",
            "This article explores bicycles.",
            "I hope you enjoyed this article!",
            "What would you like to know?",
            "Would you like me to write more?",
            "Let me know if you want changes.",
            "Feel free to ask.",
            "Here's a short article:",
            "标题：长城",
            "当然！以下是文章。",
        ] {
            assert!(is_meta_talk(meta), "{meta}");
        }
        for content in [
            "Bees make honey from nectar.",
            "Why do bees dance? They tell each other where flowers are.",
            "Sure-footed goats climb the cliffs.",
            "The title of world champion went to Kenya.",
            "Sections of the wall date from the Ming dynasty.",
            "长城很长。",
            "",
        ] {
            assert!(!is_meta_talk(content), "{content}");
        }
        // A question the article asks itself is content; one put to the reader is not.
        assert!(!is_meta_talk("Why do bees dance?"));
        assert!(is_meta_talk("Do you want to know more about bees?"));
    }

    #[test]
    fn clean_drops_meta_talk_and_repeats_across_the_article() {
        let (p, r) = clean(vec![
            "Sure! Here is an article. Bees live in hives.".into(),
            "They make honey. BEES live in hives!".into(),
            "They make honey.".into(),
            "What would you like to know?".into(),
            "长城很长。长城很长。它在北方。".into(),
        ]);
        assert_eq!(p, ["Bees live in hives.", "They make honey.", "长城很长。它在北方。"]);
        assert_eq!(r.meta_talk, ["Sure!", "Here is an article.", "What would you like to know?"]);
        assert_eq!((r.repeated_sentences, r.empty_paragraphs), (3, 2));
        assert!(r.describe().contains("3 meta-talk") && r.describe().contains("3 repeated"));
        assert_eq!(Removed::default().describe(), "");
    }

    #[test]
    fn counts_measure_what_is_left() {
        let p = vec!["Sure! Bees fly.".to_string(), "Bees fly. Ants walk.".to_string(), "Would you like more?".to_string()];
        assert_eq!(count_meta_talk(&p), 2);
        assert_eq!(count_repeated_sentences(&p), 1);
    }
}

//! Editing a saved article, the original web demo's operations plus paragraph regeneration.
//! Each returns a one-line summary and appends it to [`Article::edits`]; render again after.

use crate::article::{Article, ImageSlot, Provenance, Source};
use crate::composer::Composer;
use crate::error::ComposeError;

/// One edit. Slots and paragraphs are numbered from 0, as in the article's JSON. As JSON (the
/// server's edit body): `{"op": "swap", "slot": 0, "candidate": 2}`, `{"op": "add", "paragraph": 1}`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Edit {
    /// Write slot's caption anew with the model (another sample each time), then search again.
    Recaption {
        /// The slot.
        slot: usize,
    },
    /// Set slot's caption to `text` and search again with it.
    Caption {
        /// The slot.
        slot: usize,
        /// The new caption.
        text: String,
    },
    /// Use candidate `candidate` of slot's alternatives.
    Swap {
        /// The slot.
        slot: usize,
        /// The candidate's index.
        candidate: usize,
    },
    /// Remove slot's image.
    Delete {
        /// The slot.
        slot: usize,
    },
    /// Add an image after paragraph `after`, captioned by the model.
    Add {
        /// The paragraph.
        #[serde(rename = "paragraph")]
        after: usize,
    },
    /// Place `count` images anew: spot, caption, retrieve and select again.
    Insert {
        /// How many.
        count: usize,
    },
    /// Write paragraph `paragraph` anew with the model.
    Regenerate {
        /// The paragraph.
        paragraph: usize,
    },
}

fn no_slot(article: &Article, slot: usize) -> ComposeError {
    slot_missing(article.images.len(), slot)
}

fn slot_missing(n: usize, slot: usize) -> ComposeError {
    ComposeError::BadRequest(format!("image slot {slot} does not exist (the article has {n} image slots, numbered from 0)"))
}

fn no_paragraph(article: &Article, p: usize) -> ComposeError {
    ComposeError::BadRequest(format!("paragraph {p} does not exist (the article has {} paragraphs, numbered from 0)", article.paragraphs.len()))
}

impl Composer {
    /// Applies `edit` to `article`; returns what was done.
    pub fn edit(&self, article: &mut Article, edit: &Edit) -> Result<String, ComposeError> {
        let summary = match edit {
            Edit::Recaption { slot } => {
                let s = article.images.get(*slot).ok_or_else(|| no_slot(article, *slot))?;
                let after = s.after_paragraph;
                let previous: Vec<(usize, String)> = article.captions().into_iter().filter(|(p, _)| *p != after).collect();
                let variation = article.edits.len() as u64 + 1;
                let (caption, why) = self.captioner.caption(&article.paragraphs, after, &previous, article.language, variation)?;
                let s = &mut article.images[*slot];
                s.caption = caption.clone();
                s.caption_source = why;
                self.fill_slot(article, *slot)?;
                format!("recaptioned slot {slot}: {caption:?}")
            }
            Edit::Caption { slot, text } => {
                let text = text.trim();
                if text.is_empty() {
                    return Err(ComposeError::BadRequest("the new caption is empty".into()));
                }
                let n = article.images.len();
                let s = article.images.get_mut(*slot).ok_or_else(|| slot_missing(n, *slot))?;
                s.caption = text.to_string();
                s.caption_source = Provenance::new(Source::User, "edited by the user");
                self.fill_slot(article, *slot)?;
                format!("set slot {slot}'s caption to {text:?} and searched again")
            }
            Edit::Swap { slot, candidate } => {
                let n = article.images.len();
                let s = article.images.get_mut(*slot).ok_or_else(|| slot_missing(n, *slot))?;
                if *candidate >= s.candidates.len() {
                    return Err(ComposeError::BadRequest(format!("slot {slot} has {} candidates (0–{}), not {candidate}", s.candidates.len(), s.candidates.len().saturating_sub(1))));
                }
                s.chosen = *candidate;
                s.selection = Provenance::new(Source::User, format!("swapped to candidate {candidate} by the user"));
                format!("slot {slot} now shows candidate {candidate}")
            }
            Edit::Delete { slot } => {
                if *slot >= article.images.len() {
                    return Err(no_slot(article, *slot));
                }
                let s = article.images.remove(*slot);
                format!("deleted slot {slot} (after paragraph {})", s.after_paragraph)
            }
            Edit::Add { after } => {
                if *after >= article.paragraphs.len() {
                    return Err(no_paragraph(article, *after));
                }
                if article.slot_after(*after).is_some() {
                    return Err(ComposeError::BadRequest(format!("paragraph {after} already has an image (swap, recaption or delete it instead)")));
                }
                let previous = article.captions();
                let (caption, why) = self.captioner.insert_caption(&article.paragraphs, *after, &previous, article.language)?;
                let at = article.images.iter().position(|s| s.after_paragraph > *after).unwrap_or(article.images.len());
                let slot = ImageSlot {
                    after_paragraph: *after,
                    caption: caption.clone(),
                    caption_source: why,
                    candidates: vec![],
                    chosen: 0,
                    selection: Provenance::new(Source::Score, "not yet"),
                    asset: None,
                };
                article.images.insert(at, slot);
                self.fill_slot(article, at)?;
                format!("added slot {at} after paragraph {after}: {caption:?}")
            }
            Edit::Insert { count } => {
                if *count == 0 {
                    return Err(ComposeError::BadRequest("insert needs a count of at least 1 (delete removes images)".into()));
                }
                self.illustrate(article, Some(*count), &mut |_| std::ops::ControlFlow::Continue(()))?;
                article.settings.images = Some(*count);
                format!("placed {} images anew", article.images.len())
            }
            Edit::Regenerate { paragraph } => {
                if *paragraph >= article.paragraphs.len() {
                    return Err(no_paragraph(article, *paragraph));
                }
                let seed = article.settings.seed.wrapping_add(article.edits.len() as u64 + 1);
                let (text, _why) = self.writer.rewrite_paragraph(&article.paragraphs, *paragraph, article.language, seed)?;
                article.paragraphs[*paragraph] = text;
                format!("rewrote paragraph {paragraph} (seed {seed})")
            }
        };
        article.edits.push(summary.clone());
        article.check().map_err(|e| ComposeError::BadRequest(format!("the edit left the article inconsistent: {e}")))?;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::Edit;

    #[test]
    fn edits_read_from_the_servers_json_bodies() {
        let read = |s: &str| serde_json::from_str::<Edit>(s);
        assert_eq!(read(r#"{"op": "swap", "slot": 0, "candidate": 2}"#).unwrap(), Edit::Swap { slot: 0, candidate: 2 });
        assert_eq!(read(r#"{"op": "add", "paragraph": 1}"#).unwrap(), Edit::Add { after: 1 });
        assert_eq!(read(r#"{"op": "regenerate", "paragraph": 3}"#).unwrap(), Edit::Regenerate { paragraph: 3 });
        assert!(read(r#"{"op": "add", "after": 1}"#).is_err(), "the field is called paragraph");
        assert!(read(r#"{"op": "delete", "slot": 0, "extra": 1}"#).is_err(), "unknown fields are refused");
        assert!(read(r#"{"op": "rotate", "slot": 0}"#).is_err(), "unknown operations are refused");
    }
}

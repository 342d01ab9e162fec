//! The article's language, which picks the prompt set.

use serde::{Deserialize, Serialize};

/// A language the composer has prompts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// English.
    En,
    /// Chinese (the original system's prompts).
    Zh,
}

impl Language {
    /// Chinese when the text holds a CJK ideograph, else English.
    ///
    /// ```
    /// use xcomposer_composer::Language;
    /// assert_eq!(Language::detect("写一篇关于长城的文章"), Language::Zh);
    /// assert_eq!(Language::detect("Write about the Great Wall"), Language::En);
    /// ```
    pub fn detect(text: &str) -> Self {
        let cjk = |c: char| matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF);
        if text.chars().any(cjk) { Language::Zh } else { Language::En }
    }

    /// The two-letter code (`en`, `zh`).
    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Zh => "zh",
        }
    }
}

impl std::str::FromStr for Language {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "en" => Ok(Language::En),
            "zh" => Ok(Language::Zh),
            other => Err(format!("language {other:?}: expected en or zh")),
        }
    }
}

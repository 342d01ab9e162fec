//! The prompts of the language-model stages, kept in TOML files of minijinja templates
//! (`assets/prompts/{en,zh}.toml`, built in) rather than in string literals.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::Environment;
use serde::{Deserialize, Serialize};

use crate::error::ComposeError;
use crate::language::Language;
use xcomposer_llm::readers::path_io::AtPath;

/// The stages that prompt a language model; each is a table in a prompt file.
pub const STAGES: &[&str] = &["writer", "title", "spot", "caption", "paragraph", "select"];

/// The structured writer's stages, which a prompt file may leave out (rendering one that is
/// missing is then an error naming the file and the stage).
pub const OPTIONAL_STAGES: &[&str] = &["plan", "section"];

/// One stage's prompt: the user's turn and the start of the model's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromptTemplate {
    /// The user's turn (a template).
    pub user: String,
    /// The beginning of the answer, which the model continues (a template).
    #[serde(default)]
    pub prefix: String,
}

/// A rendered prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The user's turn.
    pub user: String,
    /// The start of the answer.
    pub prefix: String,
}

/// The prompts of one language.
#[derive(Debug, Clone)]
pub struct PromptSet {
    name: String,
    templates: BTreeMap<String, PromptTemplate>,
}

impl PromptSet {
    /// The built-in set of a language.
    pub fn builtin(lang: Language) -> Self {
        let (name, text) = match lang {
            Language::En => ("assets/prompts/en.toml", include_str!("../../../assets/prompts/en.toml")),
            Language::Zh => ("assets/prompts/zh.toml", include_str!("../../../assets/prompts/zh.toml")),
        };
        Self::parse(name, text).expect("the built-in prompt files are valid (tested)")
    }

    /// Reads a prompt file: one table per stage of [`STAGES`], each with `user` and `prefix`.
    pub fn from_file(path: &Path) -> Result<Self, ComposeError> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses prompt-file text; `name` is used in errors.
    pub fn parse(name: &str, text: &str) -> Result<Self, ComposeError> {
        let bad = |reason: String| ComposeError::Prompts { file: name.into(), reason };
        let templates: BTreeMap<String, PromptTemplate> = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for stage in STAGES {
            if !templates.contains_key(*stage) {
                return Err(bad(format!("missing the [{stage}] table (each of {} needs `user` and `prefix`)", STAGES.join(", "))));
            }
        }
        if let Some(extra) = templates.keys().find(|k| !STAGES.contains(&k.as_str()) && !OPTIONAL_STAGES.contains(&k.as_str())) {
            return Err(bad(format!("unknown stage [{extra}] (expected {}, and optionally {})", STAGES.join(", "), OPTIONAL_STAGES.join(", "))));
        }
        let set = PromptSet { name: name.into(), templates };
        for (stage, t) in &set.templates {
            for (field, src) in [("user", &t.user), ("prefix", &t.prefix)] {
                Environment::new().template_from_str(src).map_err(|e| bad(format!("[{stage}] {field}: {e}")))?;
            }
        }
        Ok(set)
    }

    /// Where the set came from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders a stage's prompt with `vars` (a serializable map of the template's variables).
    pub fn render(&self, stage: &str, vars: impl Serialize) -> Result<Prompt, ComposeError> {
        let t = self.templates.get(stage).ok_or_else(|| ComposeError::Prompts { file: self.name.clone(), reason: format!("no [{stage}] table (the structured writer needs [plan] and [section]; --writer oneshot does not)") })?;
        let vars = minijinja::Value::from_serialize(&vars);
        let render = |field: &str, src: &str| -> Result<String, ComposeError> {
            let mut env = Environment::new();
            env.set_keep_trailing_newline(true);
            env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
            env.render_str(src, &vars).map_err(|e| ComposeError::Prompts { file: self.name.clone(), reason: format!("[{stage}] {field}: {e}") })
        };
        Ok(Prompt { user: render("user", &t.user)?, prefix: render("prefix", &t.prefix)? })
    }
}

/// The prompt sets by language, built in unless a file replaces one.
#[derive(Debug, Clone)]
pub struct Prompts {
    en: PromptSet,
    zh: PromptSet,
}

impl Default for Prompts {
    fn default() -> Self {
        Prompts { en: PromptSet::builtin(Language::En), zh: PromptSet::builtin(Language::Zh) }
    }
}

impl Prompts {
    /// The set for `lang`.
    pub fn get(&self, lang: Language) -> &PromptSet {
        match lang {
            Language::En => &self.en,
            Language::Zh => &self.zh,
        }
    }

    /// The original InternLM-XComposer web demo's prompts: the built-in Chinese set for every
    /// language (its composition prompts are Chinese whatever the title's language).
    pub fn original() -> Self {
        let zh = PromptSet::builtin(Language::Zh);
        Prompts { en: zh.clone(), zh }
    }

    /// Replaces the set of `lang`.
    pub fn set(&mut self, lang: Language, set: PromptSet) {
        match lang {
            Language::En => self.en = set,
            Language::Zh => self.zh = set,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chinese_prompts_are_the_original_strings() {
        let zh = PromptSet::builtin(Language::Zh);
        let p = zh.render("spot", json!({"article": "<Seg0> 甲\n<Seg1> 乙\n", "count": ""})).unwrap();
        assert_eq!(p.user, "给定文章\"<Seg0> 甲\n<Seg1> 乙\n\" 根据上述文章，选择适合插入图像的行 ");
        assert_eq!(p.prefix, "适合插入图像的行是");
        let past = json!([{"line": 0, "caption": "长城"}, {"line": 3, "caption": "烽火台"}]);
        let p = zh.render("caption", json!({"article": "A\n", "past": past, "line": 5, "paragraph": "乙"})).unwrap();
        assert_eq!(
            p.user,
            " 给定文章\"A\n\" 现在<Seg0>后插入图像对应的标题是\"长城\"， <Seg3>后插入图像对应的标题是\"烽火台\"。给出适合在<Seg5>后插入的图像对应的标题。 "
        );
        assert_eq!(p.prefix, " 标题是\"");
        let first = zh.render("caption", json!({"article": "A\n", "past": [], "line": 0, "paragraph": "甲", "insert": false})).unwrap();
        assert_eq!(first.user, " 给定文章\"A\n\" 给出适合在<Seg0>后插入的图像对应的标题。 ");
        // The ➕ caption with no earlier caption keeps the original's lone "。".
        let added = zh.render("caption", json!({"article": "A\n", "past": [], "line": 0, "paragraph": "甲", "insert": true})).unwrap();
        assert_eq!(added.user, " 给定文章\"A\n\" 。给出适合在<Seg0>后插入的图像对应的标题。 ");
        let w = zh.render("writer", json!({"instruction": "长城"})).unwrap();
        assert_eq!(w.user, "根据给定标题写一个图文并茂，不重复的文章：长城");
    }

    #[test]
    fn both_builtin_sets_render_every_stage() {
        let vars = json!({"instruction": "x", "article": "a", "count": 2, "past": [], "line": 1, "paragraph": "p", "context": "c", "insert": false, "sections": 3, "title": "t", "outline": "1. a", "number": 1, "heading": "a", "previous": ""});
        for lang in [Language::En, Language::Zh] {
            let set = PromptSet::builtin(lang);
            for stage in STAGES.iter().chain(OPTIONAL_STAGES) {
                let p = set.render(stage, &vars).unwrap();
                assert!(!p.user.is_empty(), "{lang:?} {stage}");
            }
        }
        let original = Prompts::original();
        assert_eq!(original.get(Language::En).render("writer", &vars).unwrap(), original.get(Language::Zh).render("writer", &vars).unwrap());
        let en = PromptSet::builtin(Language::En).render("spot", &vars).unwrap();
        assert!(en.user.contains("choose 2 lines"), "{}", en.user);
    }

    #[test]
    fn bad_prompt_files_name_the_file_and_the_problem() {
        let e = PromptSet::parse("my.toml", "[writer]\nuser = 'x'\n").unwrap_err().to_string();
        assert!(e.starts_with("my.toml: missing the [title] table"), "{e}");
        let mut text = include_str!("../../../assets/prompts/en.toml").to_string();
        text.push_str("\n[extra]\nuser = 'x'\n");
        let e = PromptSet::parse("my.toml", &text).unwrap_err().to_string();
        assert!(e.contains("unknown stage [extra]"), "{e}");
        let text = include_str!("../../../assets/prompts/en.toml").replacen("{{ instruction }}", "{{ instruction ", 1);
        let e = PromptSet::parse("my.toml", &text).unwrap_err().to_string();
        assert!(e.starts_with("my.toml: [writer] user:"), "{e}");
        let e = PromptSet::builtin(Language::En).render("writer", json!({})).unwrap_err().to_string();
        assert!(e.contains("[writer] user") && e.contains("undefined"), "{e}");
        // A file of the required stages alone is valid; the structured writer's stages then
        // fail by name when rendered.
        let text = include_str!("../../../assets/prompts/en.toml");
        let required = &text[..text.find("[plan]").unwrap()];
        let set = PromptSet::parse("old.toml", required).unwrap();
        let e = set.render("plan", json!({"instruction": "x", "sections": 2})).unwrap_err().to_string();
        assert!(e.starts_with("old.toml: no [plan] table"), "{e}");
    }
}

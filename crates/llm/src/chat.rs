//! `ChatTemplate`: renders a model's Jinja chat template (`tokenizer.chat_template`) the way
//! Hugging Face's `apply_chat_template` does.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with the given role.
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// Errors from chat templates.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The model carries no chat template.
    #[error("{0} has no chat template (tokenizer.chat_template); use --raw to send the prompt as it is")]
    NoTemplate(String),
    /// The template failed to parse or render.
    #[error("chat template: {0}")]
    Render(String),
}

/// Template instructions one render may run: far more than any real chat template needs for a
/// long conversation (5,000 ChatML messages), and a bound on hostile ones (nested `range` loops
/// would otherwise run for hours): spent in about 0.2 s (20 M took 1 s, past the fuzzing bound).
pub const TEMPLATE_FUEL: u64 = 4_000_000;

/// A compiled chat template with the special-token strings it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Wraps a template string; it is compiled on first use, and now to report errors early.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let t = ChatTemplate { source: source.into(), bos_token: bos_token.into(), eos_token: eos_token.into() };
        t.env()?;
        Ok(t)
    }

    fn env(&self) -> Result<Environment<'_>, ChatError> {
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", &self.source).map_err(|e| ChatError::Render(e.to_string()))?;
        Ok(env)
    }

    /// Renders the conversation; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        let env = self.env()?;
        let tmpl = env.get_template("chat").map_err(|e| ChatError::Render(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| ChatError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_python_style_methods() {
        let src = "{% for m in messages %}<|{{ m.role }}|>{{ m['content'].strip() }}\n{% endfor %}\
                   {% if add_generation_prompt %}<|assistant|>{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t.render(&[Message::new("user", "  hi ")], true).unwrap();
        assert_eq!(out, "<|user|>hi\n<|assistant|>");
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_reported() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    #[test]
    fn a_template_that_would_run_for_hours_runs_out_of_fuel() {
        let t = ChatTemplate::new("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "", "").unwrap();
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(e.contains("fuel"), "{e}");
        // A long real conversation stays far inside the budget.
        let chatml = ChatTemplate::new("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}", "", "").unwrap();
        let long: Vec<Message> = (0..5000).map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "some words")).collect();
        assert!(chatml.render(&long, true).is_ok());
    }
}

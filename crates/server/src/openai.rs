//! The OpenAI-compatible request: parsing with the failing field named, and checking each
//! setting against the limits before the model sees it.

use serde::Deserialize;
use xcomposer_llm::{GenerationConfig, Message};

use crate::error::ApiError;
use crate::images::{self, RequestImage};
use crate::limits::Limits;

/// `POST /v1/chat/completions`'s body (fields this server does not use are ignored, as the
/// official clients send some by default).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The model id, one of `GET /v1/models`.
    pub model: String,
    /// The conversation.
    pub messages: Vec<InMessage>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `{"include_usage": true}` adds a last chunk with the usage.
    pub stream_options: Option<StreamOptions>,
    /// Most new tokens.
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature, 0 to 2 (OpenAI's default 1; 0 is greedy).
    pub temperature: Option<f64>,
    /// Nucleus mass, (0, 1].
    pub top_p: Option<f64>,
    /// Sampling seed.
    pub seed: Option<i64>,
    /// Up to 4 strings that end the answer.
    pub stop: Option<Stop>,
    /// Choices to generate (only 1).
    pub n: Option<i64>,
    /// Not supported when non-zero.
    pub frequency_penalty: Option<f64>,
    /// Not supported when non-zero.
    pub presence_penalty: Option<f64>,
    /// Tool calling is not supported.
    pub tools: Option<serde_json::Value>,
}

/// `stream_options`.
#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    /// Send a usage chunk before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// One message of the conversation.
#[derive(Debug, Deserialize)]
pub struct InMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// Text, or a list of text and image parts.
    pub content: Option<Content>,
}

/// A message's content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image by URL (a data: URI here).
    ImageUrl {
        /// The URL object.
        image_url: ImageUrl,
    },
}

/// `{"url": …, "detail": …}`.
#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    /// A `data:image/…;base64,…` URI.
    pub url: String,
}

/// A checked request, ready for the model.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The model id asked for.
    pub model: String,
    /// The conversation as chat-template messages (image parts removed).
    pub messages: Vec<Message>,
    /// Images by message index, with their request field.
    pub images: Vec<(usize, String, RequestImage)>,
    /// Sampling and stopping.
    pub cfg: GenerationConfig,
    /// Stream as server-sent events.
    pub stream: bool,
    /// Send the usage chunk when streaming.
    pub include_usage: bool,
}

/// Parses a body, naming the field that does not fit (`messages[0].content`).
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let param = if path == "." || path == "?" { missing_field(&inner.to_string()).unwrap_or_else(|| "body".into()) } else { path };
        ApiError::invalid(param, format!("the request body is not a valid chat completion request: {inner}"))
    })
}

fn missing_field(msg: &str) -> Option<String> {
    let start = msg.find("missing field `")? + "missing field `".len();
    let end = msg[start..].find('`')? + start;
    Some(msg[start..end].to_string())
}

/// Checks `req` against `limits` and builds its [`Plan`].
pub fn plan(req: ChatRequest, limits: &Limits) -> Result<Plan, ApiError> {
    let max_tokens = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => check_max_tokens(m, "max_completion_tokens", limits)?,
        (None, Some(m)) => check_max_tokens(m, "max_tokens", limits)?,
        (None, None) => limits.default_max_tokens,
    };
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", format!("temperature must be between 0 and 2, got {temperature}")));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], got {top_p}")));
    }
    if let Some(n) = req.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid("n", format!("this server generates one choice; n = {n} is not supported")));
    }
    for (name, v) in [("frequency_penalty", req.frequency_penalty), ("presence_penalty", req.presence_penalty)] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(name, format!("{name} is not supported (only 0)")));
        }
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ApiError::invalid("tools", "tool calling is not supported"));
    }
    let stop = match req.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid("stop", "stop takes up to 4 non-empty strings"));
    }
    let (messages, images) = messages(req.messages, limits)?;
    let cfg = GenerationConfig {
        max_new_tokens: max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        seed: req.seed.unwrap_or(0) as u64,
        stop_strings: stop,
        ..Default::default()
    };
    let stream = req.stream.unwrap_or(false);
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    Ok(Plan { model: req.model, messages, images, cfg, stream, include_usage })
}

fn check_max_tokens(m: i64, field: &str, limits: &Limits) -> Result<usize, ApiError> {
    if m < 1 {
        return Err(ApiError::invalid(field, format!("{field} must be at least 1, got {m}")));
    }
    if m as u64 > limits.max_tokens_cap as u64 {
        return Err(ApiError::invalid(field, format!("{field} is {m}, over this server's cap of {}", limits.max_tokens_cap)).code("max_tokens_too_large"));
    }
    Ok(m as usize)
}

type Messages = (Vec<Message>, Vec<(usize, String, RequestImage)>);

/// The messages as text, their image parts decoded and checked.
fn messages(input: Vec<InMessage>, limits: &Limits) -> Result<Messages, ApiError> {
    if input.is_empty() {
        return Err(ApiError::invalid("messages", "messages is empty: send at least one user message"));
    }
    let mut out = vec![];
    let mut images = vec![];
    for (i, m) in input.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => return Err(ApiError::invalid(format!("messages[{i}].role"), format!("role {other:?} is not supported (system, developer, user, assistant)"))),
        };
        let mut text = String::new();
        match m.content {
            None => {}
            Some(Content::Text(t)) => text = t,
            Some(Content::Parts(parts)) => {
                for (j, p) in parts.into_iter().enumerate() {
                    match p {
                        Part::Text { text: t } => {
                            if !text.is_empty() {
                                text.push('\n');
                            }
                            text.push_str(&t);
                        }
                        Part::ImageUrl { image_url } => {
                            let param = format!("messages[{i}].content[{j}].image_url.url");
                            if images.len() == limits.max_images {
                                return Err(ApiError::invalid(param, format!("more than {} images in one request", limits.max_images)));
                            }
                            let img = images::from_data_uri(&image_url.url, &param, limits)?;
                            images.push((i, param, img));
                        }
                    }
                }
            }
        }
        out.push(Message::new(role, &text));
    }
    if out.last().is_some_and(|m| m.role == "assistant") {
        return Err(ApiError::invalid(format!("messages[{}].role", out.len() - 1), "the last message must not be the assistant's: there is nothing to answer"));
    }
    Ok((out, images))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        match parse(body.as_bytes()).and_then(|r| plan(r, &Limits::default())) {
            Ok(_) => panic!("{body} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(err(r#"{"messages": []}"#).param.as_deref(), Some("model"));
        assert_eq!(err(r#"{"model": "m", "messages": []}"#).param.as_deref(), Some("messages"));
        assert_eq!(err(r#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#).param.as_deref(), Some("messages[0].content"));
        assert_eq!(err(r#"{"model": "m", "messages": [{"role": "tool", "content": "x"}]}"#).param.as_deref(), Some("messages[0].role"));
        assert_eq!(err(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}"#).param.as_deref(), Some("temperature"));
        assert_eq!(err(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#).param.as_deref(), Some("temperature"));
        assert_eq!(err(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#).param.as_deref(), Some("max_tokens"));
        assert_eq!(err(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}"#).code, Some("max_tokens_too_large"));
        assert_eq!(err(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}"#).param.as_deref(), Some("n"));
        assert_eq!(err(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}"#).param.as_deref(), Some("stop"));
        assert_eq!(err("not json").param.as_deref(), Some("body"));
    }

    #[test]
    fn a_good_request_becomes_a_plan() {
        let body = r#"{"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "max_tokens": 7, "temperature": 0, "seed": 3, "stop": "END", "stream": true, "stream_options": {"include_usage": true}}"#;
        let p = plan(parse(body.as_bytes()).unwrap(), &Limits::default()).unwrap();
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.messages[1].content, "Hi");
        assert_eq!((p.cfg.max_new_tokens, p.cfg.temperature, p.cfg.seed), (7, 0.0, 3));
        assert_eq!(p.cfg.stop_strings, vec!["END".to_string()]);
        assert!(p.stream && p.include_usage);
    }
}

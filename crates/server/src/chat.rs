//! `POST /v1/chat/completions` and `GET /v1/models`: a checked request is queued for the model;
//! the answer comes back whole or as OpenAI's `chat.completion.chunk` events.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;
use xcomposer_llm::generation::GenerationError;
use xcomposer_llm::{GenerationConfig, StopReason};

use crate::AppState;
use crate::error::ApiError;
use crate::openai::{self, Plan};
use crate::queue::CancelOnDrop;

/// What the model's job sends back to the handler.
#[derive(Debug)]
pub enum ChatEvent {
    /// New text.
    Delta(String),
    /// The end, with the counts.
    Done {
        /// `stop` or `length`.
        finish_reason: &'static str,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// New tokens.
        completion_tokens: usize,
    },
    /// The model failed.
    Error(ApiError),
}

/// `GET /v1/models`: the text model, and InternLM-XComposer when loaded.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let ids: Vec<String> = std::iter::once(state.text_model_id()).chain(state.xcomposer_id()).collect();
    let data: Vec<_> = ids.iter().map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "xcomposer"})).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// The body as bytes, a too-large body answered as 413 naming `body`.
pub fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", format!("the request body is over this server's limit of {limit} bytes")).param("body").code("body_too_large")
        } else {
            ApiError::invalid("body", format!("the request body could not be read: {e}"))
        }
    })
}

/// `POST /v1/chat/completions`.
pub async fn completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    match start(&state, body) {
        Ok((plan, rx, guard)) if plan.stream => stream_response(&state, plan, rx, guard),
        Ok((plan, rx, guard)) => whole_response(&state, plan, rx, guard).await,
        Err(e) => e.into_response(),
    }
}

type Started = (Plan, mpsc::UnboundedReceiver<ChatEvent>, CancelOnDrop);

/// Parses and checks the request, then queues its generation.
fn start(state: &Arc<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Started, ApiError> {
    let limits = &state.config.limits;
    let body = body_bytes(body, limits.max_body_bytes)?;
    let plan = openai::plan(openai::parse(&body)?, limits)?;
    let text_id = state.text_model_id();
    if plan.model != text_id && Some(&plan.model) != state.xcomposer_id().as_ref() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("the model {:?} does not exist here; GET /v1/models lists {text_id:?}", plan.model)).param("model").code("model_not_found"));
    }
    if let Some(xc) = state.models.xcomposer.clone().filter(|_| plan.model != text_id) {
        let (tx, rx) = mpsc::unbounded_channel();
        let guard = CancelOnDrop::new();
        let job = crate::vlm::job(state, xc, plan.clone(), tx, guard.flag.clone());
        state.queue.submit(job)?;
        return Ok((plan, rx, guard));
    }
    if let Some((_, param, _)) = plan.images.first() {
        let hint = match state.xcomposer_id() {
            Some(id) => format!("ask for the model {id:?}, which sees images"),
            None => "start the server with --xcomposer DIR to answer about images".into(),
        };
        return Err(ApiError::invalid(param.clone(), format!("the model {:?} cannot see images (a text model); {hint}", plan.model)).code("image_input_unsupported"));
    }
    let model = state.models.text.clone();
    let ids = model.model.encode_chat(&plan.messages).map_err(|e| ApiError::invalid("messages", format!("the messages do not fit the model's chat template: {e}")))?;
    if ids.len() > limits.max_prompt_tokens {
        return Err(ApiError::invalid("messages", format!("the prompt is {} tokens, over the limit of {}", ids.len(), limits.max_prompt_tokens)).code("context_length_exceeded"));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let guard = CancelOnDrop::new();
    let job = text_job(state, ids, plan.cfg.clone(), tx, guard.flag.clone());
    state.queue.submit(job)?;
    Ok((plan, rx, guard))
}

/// What a chat generation ends with: `(finish_reason, prompt tokens, new tokens)`, or the error
/// to answer (`None`: cancelled, nobody to answer).
pub type Outcome = Result<(&'static str, usize, usize), Option<ApiError>>;

/// A chat generation as a queue job: skipped if its client left while it waited; `run` gets the
/// channel and the cancel flag, and its outcome goes to the channel and the metrics.
pub fn chat_job(
    state: &Arc<AppState>,
    tx: mpsc::UnboundedSender<ChatEvent>,
    cancel: Arc<AtomicBool>,
    run: impl FnOnce(&mpsc::UnboundedSender<ChatEvent>, &AtomicBool) -> Outcome + Send + 'static,
) -> crate::queue::Job {
    let metrics = state.metrics.clone();
    Box::new(move || {
        if cancel.load(Ordering::SeqCst) {
            metrics.record_cancel();
            return;
        }
        let t = Instant::now();
        match run(&tx, &cancel) {
            Ok((finish_reason, prompt_tokens, completion_tokens)) => {
                metrics.record_generation(completion_tokens, t.elapsed().as_secs_f64());
                let _ = tx.send(ChatEvent::Done { finish_reason, prompt_tokens, completion_tokens });
            }
            Err(None) => metrics.record_cancel(),
            Err(Some(e)) => {
                let _ = tx.send(ChatEvent::Error(e));
            }
        }
    })
}

/// The text model's generation as a queue job: text pieces go to `tx`; `cancel` (or `tx`'s
/// receiver gone) stops it before the next token.
fn text_job(state: &Arc<AppState>, ids: Vec<u32>, cfg: GenerationConfig, tx: mpsc::UnboundedSender<ChatEvent>, cancel: Arc<AtomicBool>) -> crate::queue::Job {
    let model = state.models.text.clone();
    chat_job(state, tx, cancel, move |tx, cancel| {
        let result = rayon::scope(|_| {
            model.model.generate_cancellable(
                &ids,
                &cfg,
                &mut |piece| {
                    if tx.send(ChatEvent::Delta(piece.to_string())).is_err() {
                        cancel.store(true, Ordering::SeqCst);
                    }
                },
                cancel,
            )
        });
        match result {
            Ok(out) => {
                let finish_reason = match out.stop_reason {
                    StopReason::MaxTokens | StopReason::ContextFull => "length",
                    _ => "stop",
                };
                Ok((finish_reason, ids.len(), out.ids.len()))
            }
            Err(GenerationError::Cancelled) => Err(None),
            Err(e @ GenerationError::PromptTooLong(..)) => Err(Some(ApiError::invalid("messages", e.to_string()).code("context_length_exceeded"))),
            Err(e) => Err(Some(ApiError::internal(format!("generation failed: {e}")))),
        }
    })
}

fn completion_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("chatcmpl-{nanos:x}{:04x}", N.fetch_add(1, Ordering::Relaxed))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn usage(prompt: usize, completion: usize) -> serde_json::Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Waits for the whole answer; the guard cancels the generation if this future is dropped.
async fn whole_response(_state: &Arc<AppState>, plan: Plan, mut rx: mpsc::UnboundedReceiver<ChatEvent>, mut guard: CancelOnDrop) -> Response {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            ChatEvent::Delta(t) => text.push_str(&t),
            ChatEvent::Error(e) => return e.into_response(),
            ChatEvent::Done { finish_reason, prompt_tokens, completion_tokens } => {
                guard.disarm();
                let body = json!({
                    "id": completion_id(), "object": "chat.completion", "created": now(), "model": plan.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null}, "logprobs": null, "finish_reason": finish_reason}],
                    "usage": usage(prompt_tokens, completion_tokens), "system_fingerprint": null,
                });
                return axum::Json(body).into_response();
            }
        }
    }
    ApiError::internal("the model stopped without an answer").into_response()
}

/// One `data: …` event.
fn sse(v: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

struct StreamState {
    rx: mpsc::UnboundedReceiver<ChatEvent>,
    guard: CancelOnDrop,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Events queued to send before reading the model again.
    pending: std::collections::VecDeque<Bytes>,
    done: bool,
}

impl StreamState {
    fn chunk(&self, delta: serde_json::Value, finish_reason: Option<&str>) -> Bytes {
        sse(&json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]}))
    }

    /// The events for one model event.
    fn on_event(&mut self, ev: ChatEvent) {
        match ev {
            ChatEvent::Delta(t) => {
                let c = self.chunk(json!({"content": t}), None);
                self.pending.push_back(c);
            }
            ChatEvent::Error(e) => {
                self.pending.push_back(sse(&e.body()));
                self.done = true;
            }
            ChatEvent::Done { finish_reason, prompt_tokens, completion_tokens } => {
                self.guard.disarm();
                let c = self.chunk(json!({}), Some(finish_reason));
                self.pending.push_back(c);
                if self.include_usage {
                    let u = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [], "usage": usage(prompt_tokens, completion_tokens)});
                    self.pending.push_back(sse(&u));
                }
                self.pending.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                self.done = true;
            }
        }
    }
}

/// Streams the answer as server-sent events; dropping the body (the client went away)
/// cancels the generation.
fn stream_response(_state: &Arc<AppState>, plan: Plan, rx: mpsc::UnboundedReceiver<ChatEvent>, guard: CancelOnDrop) -> Response {
    let mut st = StreamState { rx, guard, id: completion_id(), created: now(), model: plan.model, include_usage: plan.include_usage, pending: Default::default(), done: false };
    let first = st.chunk(json!({"role": "assistant", "content": ""}), None);
    st.pending.push_back(first);
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(b), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(ev) => st.on_event(ev),
                None => {
                    st.on_event(ChatEvent::Error(ApiError::internal("the model stopped without an answer")));
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

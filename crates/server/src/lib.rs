//! `xcomposer serve`: the HTTP server. One process loads the models once and answers
//!
//! - the OpenAI-compatible API ([`chat`]): `POST /v1/chat/completions` (streamed as server-sent
//!   events or not) and `GET /v1/models`, with OpenAI's error JSON ([`error::ApiError`]);
//! - the article API ([`article_api`], stored by [`articles`]): compose, follow, fetch, edit;
//! - the web app ([`web`]): a compose page at `/` and a chat page at `/chat`;
//! - `/health` and `/metrics` (Prometheus text, [`metrics`]).
//!
//! Model work goes through one bounded queue ([`queue::ModelQueue`]): a request past its
//! capacity gets 429 with `Retry-After`, and a client that goes away cancels its generation.

pub mod article_api;
pub mod articles;
pub mod chat;
pub mod error;
pub mod images;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod queue;
pub mod remote;
pub mod vlm;
pub mod web;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use burn::backend::Flex;
use xcomposer_composer::{ChatLanguageModel, TextModel};
use xcomposer_vision::xcomposer::model::XComposer;

pub use error::{ApiError, ServerError};
pub use limits::Limits;

/// The loaded models, shared by every request.
pub struct ServerModels {
    /// The text model (the default SmolLM2 or `--model`).
    pub text: Arc<ChatLanguageModel<Flex>>,
    /// InternLM-XComposer (`--xcomposer DIR`), which sees images.
    pub xcomposer: Option<Arc<XComposer<Flex>>>,
    /// Builds the article pipeline (`None`: the article API answers 503).
    pub composers: Option<Arc<dyn articles::ComposerFactory>>,
}

/// The article side: the store and the pipelines built so far, by library name.
pub struct Articles {
    /// The articles on disk.
    pub store: articles::Store,
    /// Makes a pipeline for a library.
    pub factory: Arc<dyn articles::ComposerFactory>,
    /// Pipelines built so far.
    pub cache: std::sync::Mutex<std::collections::HashMap<Option<String>, Arc<xcomposer_composer::Composer>>>,
}

/// Settings that are not models.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests to the API must carry `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// Where articles and uploads are kept.
    pub data_dir: PathBuf,
    /// Request limits.
    pub limits: Limits,
}

/// Everything a handler needs.
pub struct AppState {
    /// Settings.
    pub config: ServerConfig,
    /// Models.
    pub models: ServerModels,
    /// The model's queue.
    pub queue: queue::ModelQueue,
    /// Counters.
    pub metrics: Arc<metrics::Metrics>,
    /// The article store and pipelines, when a composer factory was given.
    pub articles: Option<Articles>,
    /// The queue compositions go to instead of the model thread (`serve --redis`).
    pub remote: Option<remote::RemoteArticles>,
}

impl AppState {
    /// State around loaded models: opens the data folder's articles and starts the model's
    /// worker thread.
    pub fn new(config: ServerConfig, models: ServerModels) -> Result<Arc<Self>, ServerError> {
        Self::with_remote(config, models, None)
    }

    /// As [`AppState::new`], with the article API's compositions sent to `remote` (whose
    /// watcher thread starts here).
    pub fn with_remote(config: ServerConfig, models: ServerModels, remote: Option<remote::RemoteArticles>) -> Result<Arc<Self>, ServerError> {
        let articles = match &models.composers {
            Some(factory) => Some(Articles { store: articles::Store::open(&config.data_dir)?, factory: factory.clone(), cache: Default::default() }),
            None => None,
        };
        let metrics = Arc::new(metrics::Metrics::default());
        let queue = queue::ModelQueue::start(config.limits.queue_capacity, metrics.clone());
        let watched = remote.is_some();
        let state = Arc::new(AppState { config, models, queue, metrics, articles, remote });
        if watched {
            remote::RemoteArticles::watch(state.clone());
        }
        Ok(state)
    }

    /// The id of the text model, as `GET /v1/models` lists it.
    pub fn text_model_id(&self) -> String {
        self.models.text.id()
    }

    /// The id of the XComposer model, if loaded.
    pub fn xcomposer_id(&self) -> Option<String> {
        self.models.xcomposer.as_ref().map(|m| m.dir.file_name().map_or_else(|| "internlm-xcomposer".into(), |n| n.to_string_lossy().into_owned()))
    }
}

/// The whole application: API routes behind the key check, `/health` open.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(chat::models))
        .route("/metrics", get(metrics_page))
        .route("/api/articles", get(article_api::list).post(article_api::create))
        .route("/api/articles/{id}", get(article_api::get).delete(article_api::delete))
        .route("/api/articles/{id}/events", get(article_api::events))
        .route("/api/articles/{id}/edit", post(article_api::edit))
        .route("/api/articles/{id}/cancel", post(article_api::cancel))
        .route("/api/articles/{id}/assets/{name}", get(article_api::asset))
        .route("/api/articles/{id}/{file}", get(article_api::file))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .route("/", get(web::compose_page))
        .route("/chat", get(web::chat_page))
        .route("/static/{name}", get(web::file))
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> Result<(), ServerError> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    axum::serve(listener, router(state)).await.map_err(|source| ServerError::Io { addr, source })
}

/// Binds `host:port` on a new tokio runtime and serves until Ctrl-C; `on_bound` gets the
/// address bound (port 0 picks a free one).
pub fn run(host: &str, port: u16, state: Arc<AppState>, on_bound: impl FnOnce(std::net::SocketAddr)) -> Result<(), ServerError> {
    let addr = format!("{host}:{port}");
    let io = |source| ServerError::Io { addr: addr.clone(), source };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(io)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(io)?;
        let bound = listener.local_addr().map_err(io)?;
        on_bound(bound);
        // Ctrl-C stops accepting connections and lets the answers in flight finish.
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        axum::serve(listener, router(state)).with_graceful_shutdown(stop).await.map_err(|source| ServerError::Io { addr: bound.to_string(), source })
    })
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({"status": "ok", "queue_depth": state.queue.waiting(), "busy": state.queue.busy()})).into_response()
}

async fn metrics_page(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(state.queue.waiting(), state.queue.busy());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn count_status(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    state.metrics.count_status(r.status().as_u16());
    r
}

/// Refuses a request without the right `Authorization: Bearer KEY` when a key is set.
async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => return ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "this server needs an API key: send Authorization: Bearer KEY").code("missing_api_key").into_response(),
            Some(g) if !constant_time_eq(g.trim().as_bytes(), key.as_bytes()) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "the API key is not this server's").code("invalid_api_key").into_response();
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference (the length still shows).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

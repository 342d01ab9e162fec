//! The article API under `/api/articles`: create a composition job, follow it as server-sent
//! events (stages and streamed text), fetch the article as JSON, Markdown, HTML or a zip bundle,
//! apply the edit operations, list and delete, cancel a composition. Composition runs on the
//! model's queue.

use std::convert::Infallible;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use xcomposer_composer::render::{self, Format};
use xcomposer_composer::{Article, ComposeRequest, Composer, Edit, Event, Language};

use crate::AppState;
use crate::articles::{Job, Status};
use crate::chat::body_bytes;
use crate::error::ApiError;

/// `POST /api/articles`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateArticle {
    /// The writing instruction.
    pub instruction: String,
    /// `en` or `zh` (default: detected from the instruction).
    pub language: Option<Language>,
    /// How many images (default: the model decides), at most 8.
    pub images: Option<usize>,
    /// The writer's seed.
    #[serde(default)]
    pub seed: u64,
    /// The writer's token budget (default 400).
    pub max_new_tokens: Option<usize>,
    /// A library folder name under `DATA/libraries` (default: the server's library).
    pub library: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." || path == "?" { "body".to_string() } else { path };
        ApiError::invalid(param, format!("the request body does not fit: {}", e.into_inner()))
    })
}

fn articles(state: &AppState) -> Result<&crate::Articles, ApiError> {
    state.articles.as_ref().ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "this server composes no articles (no image library was set up)"))
}

/// The composer for a library name, built on first use (on the model thread) and kept.
fn composer(state: &AppState, library: Option<&str>) -> Result<Arc<Composer>, String> {
    let a = state.articles.as_ref().ok_or("no composer")?;
    let key = library.map(String::from);
    if let Some(c) = a.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let dir = match library {
        Some(name) => Some(a.store.library_dir(name).map_err(|e| e.message)?),
        None => None,
    };
    let c = Arc::new(a.factory.composer(dir.as_deref())?);
    a.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, c.clone());
    Ok(c)
}

/// `POST /api/articles`: checks the request and queues the composition; 202 with the id.
pub async fn create(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let a = articles(&state)?;
    let req: CreateArticle = parse(&body_bytes(body, state.config.limits.max_body_bytes)?)?;
    if req.instruction.trim().is_empty() {
        return Err(ApiError::invalid("instruction", "the instruction is empty: say what the article should be about"));
    }
    if req.instruction.chars().count() > 2000 {
        return Err(ApiError::invalid("instruction", "the instruction is over 2000 characters"));
    }
    if req.images.is_some_and(|n| n > 8) {
        return Err(ApiError::invalid("images", "at most 8 images"));
    }
    let max_new_tokens = req.max_new_tokens.unwrap_or(400);
    if max_new_tokens == 0 || max_new_tokens > state.config.limits.max_tokens_cap {
        return Err(ApiError::invalid("max_new_tokens", format!("max_new_tokens must be 1 to {}", state.config.limits.max_tokens_cap)));
    }
    if let Some(remote) = &state.remote {
        let id = remote.enqueue(a, &req, max_new_tokens)?;
        return Ok((StatusCode::ACCEPTED, axum::Json(json!({"id": id, "status": "queued", "events": format!("/api/articles/{id}/events")}))).into_response());
    }
    if let Some(name) = &req.library {
        a.store.library_dir(name)?;
    }
    let job = a.store.create(&req.instruction, req.library.clone())?;
    let compose = ComposeRequest {
        instruction: req.instruction.clone(),
        language: Some(req.language.unwrap_or_else(|| Language::detect(&req.instruction))),
        images: req.images,
        seed: req.seed,
        max_new_tokens,
        ..ComposeRequest::new("")
    };
    let (st, j) = (state.clone(), job.clone());
    let id = job.record().id;
    if let Err(e) = state.queue.submit(Box::new(move || compose_job(&st, &j, &compose))) {
        a.store.discard(&id);
        return Err(e);
    }
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"id": id, "status": "queued", "events": format!("/api/articles/{id}/events")}))).into_response())
}

pub(crate) fn set_status(state: &AppState, job: &Job, status: Status, error: Option<String>, title: Option<String>) {
    let rec = {
        let mut r = job.record.lock().unwrap_or_else(|p| p.into_inner());
        r.status = status;
        r.error = error;
        if title.is_some() {
            r.title = title;
        }
        r.clone()
    };
    if let Some(a) = &state.articles {
        let _ = a.store.save(&rec);
    }
}

/// Composes on the model thread, pushing each stage and text piece as an event. A cancel asked
/// for stops it at the next stage or generated text; it then ends `cancelled` with no article.
fn compose_job(state: &AppState, job: &Job, req: &ComposeRequest) {
    if job.cancelled() {
        return end_cancelled(state, job);
    }
    set_status(state, job, Status::Running, None, None);
    job.push(json!({"type": "status", "status": "running"}));
    match compose_article(state, job, req) {
        Ok(article) => {
            set_status(state, job, Status::Done, None, Some(article.title.clone()));
            job.push(json!({"type": "done", "title": article.title}));
        }
        Err(None) => end_cancelled(state, job),
        Err(Some(e)) => {
            set_status(state, job, Status::Failed, Some(e.clone()), None);
            job.push(json!({"type": "error", "message": e}));
        }
    }
}

/// Composes and writes the article; `Err(None)` when cancelled before it was written.
fn compose_article(state: &AppState, job: &Job, req: &ComposeRequest) -> Result<Article, Option<String>> {
    let library = job.record().library;
    let c = composer(state, library.as_deref()).map_err(Some)?;
    let composed = c.compose_stoppable(req, &mut |e| {
        job.push(match e {
            Event::Started(stage) => json!({"type": "stage", "stage": stage.name(), "state": "started"}),
            Event::Text(t) => json!({"type": "text", "text": t}),
            Event::Finished { stage, seconds, summary } => json!({"type": "stage", "stage": stage.name(), "state": "finished", "seconds": seconds, "summary": summary}),
        });
        if job.cancelled() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    if job.cancelled() {
        return Err(None);
    }
    let mut article = composed.map_err(|e| Some(e.to_string()))?;
    let dir = state.articles.as_ref().ok_or_else(|| Some("no store".to_string()))?.store.dir(&job.record().id);
    render::write(&mut article, &dir, &[Format::Markdown, Format::Html, Format::Json], true, &c.image_roots()).map_err(|e| Some(e.to_string()))?;
    Ok(article)
}

fn end_cancelled(state: &AppState, job: &Job) {
    set_status(state, job, Status::Cancelled, None, None);
    job.push(json!({"type": "cancelled"}));
}

/// `POST /api/articles/{id}/cancel`: asks a queued or running composition to stop (202); it
/// ends with status `cancelled` and no article. A job that has ended answers 409.
pub async fn cancel(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    let job = articles(&state)?.store.get(&id)?;
    let status = job.record().status;
    if status.ended() {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_request_error", format!("the article's job has already ended ({})", json!(status))).param("id"));
    }
    job.cancel.store(true, Ordering::SeqCst);
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"id": id, "status": status, "cancel": "requested"}))).into_response())
}

/// `GET /api/articles`: every article, newest first.
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    Ok(axum::Json(json!({"data": articles(&state)?.store.list()})).into_response())
}

/// `GET /api/articles/{id}`: the job and, once written, the article.
pub async fn get(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    let a = articles(&state)?;
    let job = a.store.get(&id)?;
    let article = std::fs::read_to_string(a.store.dir(&id).join("article.json")).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    Ok(axum::Json(json!({"job": job.record(), "article": article})).into_response())
}

/// `DELETE /api/articles/{id}`.
pub async fn delete(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    articles(&state)?.store.delete(&id)?;
    Ok(axum::Json(json!({"id": id, "deleted": true})).into_response())
}

/// `GET /api/articles/{id}/{file}`: `article.json`, `article.md`, `article.html` or `bundle.zip`.
pub async fn file(State(state): State<Arc<AppState>>, UrlPath((id, name)): UrlPath<(String, String)>) -> Result<Response, ApiError> {
    let a = articles(&state)?;
    a.store.get(&id)?;
    let dir = a.store.dir(&id);
    let kind = match name.as_str() {
        "article.json" => "application/json",
        "article.md" => "text/markdown; charset=utf-8",
        "article.html" => "text/html; charset=utf-8",
        "bundle.zip" => return Ok(([(header::CONTENT_TYPE, "application/zip"), (header::CONTENT_DISPOSITION, "attachment; filename=\"article.zip\"")], bundle(&dir)?).into_response()),
        _ => return Err(ApiError::not_found(format!("no file {name:?}: article.json, article.md, article.html or bundle.zip"))),
    };
    let bytes = std::fs::read(dir.join(&name)).map_err(|_| ApiError::not_found("the article is not written yet"))?;
    // The page shows only the article's own images and runs no script, whatever its text says.
    Ok(([(header::CONTENT_TYPE, kind), (header::CONTENT_SECURITY_POLICY, "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'")], bytes).into_response())
}

/// `GET /api/articles/{id}/assets/{name}`: one of the article's copied images.
pub async fn asset(State(state): State<Arc<AppState>>, UrlPath((id, name)): UrlPath<(String, String)>) -> Result<Response, ApiError> {
    let a = articles(&state)?;
    a.store.get(&id)?;
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        return Err(ApiError::invalid("name", "not an asset name"));
    }
    let path = a.store.dir(&id).join(render::ASSETS_DIR).join(&name);
    let meta = std::fs::symlink_metadata(&path).map_err(|_| ApiError::not_found(format!("no asset {name:?}")))?;
    if !meta.is_file() {
        return Err(ApiError::not_found(format!("no asset {name:?}")));
    }
    let bytes = std::fs::read(&path).map_err(|e| ApiError::internal(e.to_string()))?;
    let kind = match Path::new(&name).extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        _ => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, kind)], bytes).into_response())
}

/// `article.md` and `assets/*` in a zip.
fn bundle(dir: &Path) -> Result<Vec<u8>, ApiError> {
    let md = std::fs::read(dir.join("article.md")).map_err(|_| ApiError::not_found("the article is not written yet"))?;
    let io = |e: &dyn std::fmt::Display| ApiError::internal(format!("building the bundle: {e}"));
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("article.md", opts).map_err(|e| io(&e))?;
    zip.write_all(&md).map_err(|e| io(&e))?;
    let mut assets: Vec<_> = std::fs::read_dir(dir.join(render::ASSETS_DIR)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assets.sort();
    for p in assets.iter().filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())) {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        zip.start_file(format!("{}/{name}", render::ASSETS_DIR), opts).map_err(|e| io(&e))?;
        zip.write_all(&std::fs::read(p).map_err(|e| io(&e))?).map_err(|e| io(&e))?;
    }
    Ok(zip.finish().map_err(|e| io(&e))?.into_inner())
}

/// `POST /api/articles/{id}/edit`: applies one edit on the model thread and renders again.
pub async fn edit(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let a = articles(&state)?;
    let job = a.store.get(&id)?;
    if job.record().status != Status::Done {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_request_error", "the article is not finished").param("id"));
    }
    let edit = parse::<Edit>(&body_bytes(body, state.config.limits.max_body_bytes)?)?;
    let (tx, rx) = oneshot::channel();
    let (st, dir) = (state.clone(), a.store.dir(&id));
    state.queue.submit(Box::new(move || {
        let _ = tx.send(apply_edit(&st, &dir, job.record().library.as_deref(), &edit));
    }))?;
    let (summary, article) = rx.await.map_err(|_| ApiError::internal("the edit was dropped"))??;
    Ok(axum::Json(json!({"summary": summary, "article": article})).into_response())
}

fn apply_edit(state: &AppState, dir: &Path, library: Option<&str>, edit: &Edit) -> Result<(String, serde_json::Value), ApiError> {
    let c = composer(state, library).map_err(ApiError::internal)?;
    let mut article = Article::load(&dir.join("article.json")).map_err(|e| ApiError::internal(e.to_string()))?;
    let summary = c.edit(&mut article, edit).map_err(|e| match e {
        xcomposer_composer::ComposeError::BadRequest(m) => ApiError::invalid("op", m),
        other => ApiError::internal(other.to_string()),
    })?;
    render::write(&mut article, dir, &[Format::Markdown, Format::Html, Format::Json], true, &c.image_roots()).map_err(|e| ApiError::internal(e.to_string()))?;
    let value = serde_json::from_str(&article.to_json()).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((summary, value))
}

/// `GET /api/articles/{id}/events`: every event so far, then new ones until the job ends.
pub async fn events(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    let job = articles(&state)?.store.get(&id)?;
    let stream = futures_util::stream::unfold((job, 0usize, false), |(job, seen, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let (new, status) = {
                let notified = job.notify.notified();
                let new: Vec<String> = job.events.lock().unwrap_or_else(|p| p.into_inner())[seen..].to_vec();
                let status = job.record().status;
                if new.is_empty() && !status.ended() {
                    notified.await;
                    continue;
                }
                (new, status)
            };
            if !new.is_empty() {
                let body: String = new.iter().map(|e| format!("data: {e}\n\n")).collect();
                return Some((Ok::<_, Infallible>(Bytes::from(body)), (job, seen + new.len(), false)));
            }
            let last = format!("data: {}\n\n", json!({"type": "end", "status": status}));
            return Some((Ok(Bytes::from(last)), (job, seen, true)));
        }
    });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response()))
}

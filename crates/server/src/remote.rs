//! `serve --redis URL`: `POST /api/articles` adds the composition to a Redis Streams queue
//! (`xcomposer-jobs`) instead of the server's model thread, so several servers and
//! `xcomposer worker`s share one queue. The workers write the article into the server's
//! `DATA/articles/<id>/` (give them `--out DATA/articles`); a watcher thread marks the job done
//! or failed when its result appears. The job's stages and text are not streamed in this mode.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use xcomposer_composer::Language;
use xcomposer_jobs::JobStatus;
use xcomposer_jobs::queue::Queue;

use crate::article_api::{CreateArticle, set_status};
use crate::articles::Status;
use crate::error::{ApiError, ServerError};
use crate::{AppState, Articles};

/// The queue the article API sends compositions to.
pub struct RemoteArticles {
    queue: Mutex<Queue>,
    /// The queue's address, for the watcher's own connection.
    url: String,
    prefix: String,
}

impl RemoteArticles {
    /// Connects to the queue at `url` under `prefix` (making the stream if missing).
    pub fn connect(url: &str, prefix: &str) -> Result<Self, ServerError> {
        let queue = Queue::connect(url, prefix).map_err(|e| ServerError::Data { path: url.to_string(), message: e.to_string() })?;
        Ok(RemoteArticles { queue: Mutex::new(queue), url: url.into(), prefix: prefix.into() })
    }

    /// Records a queued job (in memory until a worker stores its folder) and adds it to the
    /// queue with the article id as the job id; returns the id.
    pub(crate) fn enqueue(&self, a: &Articles, req: &CreateArticle, max_new_tokens: usize) -> Result<String, ApiError> {
        if req.library.is_some() {
            return Err(ApiError::invalid("library", "this server queues articles for workers (--redis), which compose with their own library: leave \"library\" out"));
        }
        let job = a.store.create_queued(&req.instruction);
        let id = job.record().id;
        let lang = req.language.unwrap_or_else(|| Language::detect(&req.instruction));
        let mut line = json!({"id": id, "instruction": req.instruction, "lang": lang, "seed": req.seed, "max_new_tokens": max_new_tokens});
        if let Some(n) = req.images {
            line["images"] = json!(n);
        }
        let spec = xcomposer_jobs::JobSpec::from_value(line, std::path::Path::new("POST /api/articles"), 0).map_err(|e| ApiError::internal(e.to_string()))?;
        let submitted = self.queue.lock().unwrap_or_else(|p| p.into_inner()).submit(&spec);
        if let Err(e) = submitted {
            a.store.discard(&id);
            return Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "server_error", format!("the job queue is unreachable: {e}")));
        }
        Ok(id)
    }

    /// Starts the thread that polls the queue's results for this server's unfinished jobs.
    pub fn watch(state: Arc<AppState>) {
        let _ = std::thread::Builder::new().name("xcomposer-queue-watch".into()).spawn(move || {
            let Some(remote) = &state.remote else { return };
            let mut queue = None;
            loop {
                std::thread::sleep(Duration::from_millis(250));
                if queue.is_none() {
                    queue = Queue::connect(&remote.url, &remote.prefix).ok();
                }
                if let Some(q) = queue.as_mut()
                    && poll(&state, q).is_err()
                {
                    queue = None;
                }
            }
        });
    }
}

/// Marks each queued job whose result has appeared as done or failed.
fn poll(state: &AppState, q: &mut Queue) -> Result<(), xcomposer_jobs::JobError> {
    let Some(a) = &state.articles else { return Ok(()) };
    for rec in a.store.list().into_iter().filter(|r| !r.status.ended()) {
        let Some(result) = q.result(&rec.id)? else { continue };
        let Ok(job) = a.store.get(&rec.id) else { continue };
        if result.status == JobStatus::Done {
            set_status(state, &job, Status::Done, None, result.title.clone());
            job.push(json!({"type": "done", "title": result.title}));
        } else {
            let error = result.error.unwrap_or_else(|| "the workers gave up on it".into());
            let _ = std::fs::create_dir_all(a.store.dir(&rec.id));
            set_status(state, &job, Status::Failed, Some(error.clone()), None);
            job.push(json!({"type": "error", "message": error}));
        }
    }
    Ok(())
}

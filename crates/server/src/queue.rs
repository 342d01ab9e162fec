//! The model's queue: one worker thread runs model jobs in order; at most `capacity` wait
//! behind the running one, and a job past that is refused (429) instead of queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use axum::http::StatusCode;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// A unit of model work, run on the model thread (it checks its own cancel flag).
pub type Job = Box<dyn FnOnce() + Send>;

/// The bounded queue in front of the model's worker thread.
pub struct ModelQueue {
    tx: std::sync::Mutex<mpsc::Sender<Job>>,
    capacity: usize,
    waiting: Arc<AtomicUsize>,
    running: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl ModelQueue {
    /// Starts the worker thread; `capacity` jobs may wait while one runs.
    pub fn start(capacity: usize, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicBool::new(false));
        let (w, r) = (waiting.clone(), running.clone());
        std::thread::Builder::new()
            .name("xcomposer-model".into())
            .spawn(move || {
                for job in rx {
                    w.fetch_sub(1, Ordering::SeqCst);
                    r.store(true, Ordering::SeqCst);
                    // A panicking job must not take the worker (and every later request) with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    r.store(false, Ordering::SeqCst);
                }
            })
            .expect("spawning the model thread");
        ModelQueue { tx: std::sync::Mutex::new(tx), capacity, waiting, running, metrics }
    }

    /// Queues `job`, or answers 429 with a `Retry-After` estimate when `capacity` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        if before >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("the model's queue is full ({} requests waiting): retry later", self.capacity),
            )
            .code("queue_full");
            e.retry_after = Some(self.metrics.retry_after_seconds(before + 1));
            return Err(e);
        }
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(job).map_err(|_| {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            ApiError::internal("the model's worker thread has stopped")
        })
    }

    /// Jobs waiting (not counting the running one).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Whether a job is running now.
    pub fn busy(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

/// Sets a cancel flag when dropped unless disarmed: a handler future dropped because its client
/// went away cancels its generation.
pub struct CancelOnDrop {
    /// The flag the job watches.
    pub flag: Arc<AtomicBool>,
    armed: bool,
}

impl CancelOnDrop {
    /// A guard over a new, unset flag.
    pub fn new() -> Self {
        CancelOnDrop { flag: Arc::new(AtomicBool::new(false)), armed: true }
    }

    /// The job finished: dropping the guard no longer cancels.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Default for CancelOnDrop {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

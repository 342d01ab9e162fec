//! Counters for `/metrics` (Prometheus text format) and the 429 retry estimate.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Server-wide counters, shared by every handler.
#[derive(Default)]
pub struct Metrics {
    by_status: Mutex<BTreeMap<u16, u64>>,
    generated_tokens: AtomicU64,
    /// Microseconds spent generating (prefill and decode).
    generation_micros: AtomicU64,
    completions: AtomicU64,
    cancelled: AtomicU64,
    /// Tokens per second of the last finished generation, as f64 bits.
    last_tps: AtomicU64,
}

impl Metrics {
    /// Counts one answered request by its status code.
    pub fn count_status(&self, status: u16) {
        *self.by_status.lock().unwrap_or_else(|p| p.into_inner()).entry(status).or_default() += 1;
    }

    /// Records a finished generation of `tokens` new tokens in `seconds`.
    pub fn record_generation(&self, tokens: usize, seconds: f64) {
        self.generated_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.generation_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.completions.fetch_add(1, Ordering::Relaxed);
        if seconds > 0.0 {
            self.last_tps.store((tokens as f64 / seconds).to_bits(), Ordering::Relaxed);
        }
    }

    /// Records a generation stopped because its client went away.
    pub fn record_cancel(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// Generations cancelled so far.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// A `Retry-After` in whole seconds for a request behind `ahead` others: the mean
    /// generation time so far times `ahead`, at least 1.
    pub fn retry_after_seconds(&self, ahead: usize) -> u64 {
        let n = self.completions.load(Ordering::Relaxed);
        let mean = if n == 0 { 1.0 } else { self.generation_micros.load(Ordering::Relaxed) as f64 / 1e6 / n as f64 };
        ((mean * ahead as f64).ceil() as u64).clamp(1, 600)
    }

    /// The Prometheus text exposition, with the queue's state given by the caller.
    pub fn render(&self, waiting: usize, busy: bool) -> String {
        let mut s = String::new();
        s += "# HELP xcomposer_queue_depth Requests waiting for the model.\n# TYPE xcomposer_queue_depth gauge\n";
        s += &format!("xcomposer_queue_depth {waiting}\n");
        s += "# HELP xcomposer_model_busy 1 while the model runs a request.\n# TYPE xcomposer_model_busy gauge\n";
        s += &format!("xcomposer_model_busy {}\n", u8::from(busy));
        s += "# HELP xcomposer_requests_total Answered HTTP requests by status code.\n# TYPE xcomposer_requests_total counter\n";
        for (code, n) in self.by_status.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            s += &format!("xcomposer_requests_total{{status=\"{code}\"}} {n}\n");
        }
        let tokens = self.generated_tokens.load(Ordering::Relaxed);
        let secs = self.generation_micros.load(Ordering::Relaxed) as f64 / 1e6;
        s += "# HELP xcomposer_generated_tokens_total New tokens generated.\n# TYPE xcomposer_generated_tokens_total counter\n";
        s += &format!("xcomposer_generated_tokens_total {tokens}\n");
        s += "# HELP xcomposer_generation_seconds_total Seconds spent generating.\n# TYPE xcomposer_generation_seconds_total counter\n";
        s += &format!("xcomposer_generation_seconds_total {secs:.6}\n");
        s += "# HELP xcomposer_tokens_per_second New tokens per second of the last generation.\n# TYPE xcomposer_tokens_per_second gauge\n";
        s += &format!("xcomposer_tokens_per_second {:.3}\n", f64::from_bits(self.last_tps.load(Ordering::Relaxed)));
        s += "# HELP xcomposer_cancelled_total Generations stopped because the client went away.\n# TYPE xcomposer_cancelled_total counter\n";
        s += &format!("xcomposer_cancelled_total {}\n", self.cancelled());
        s
    }
}

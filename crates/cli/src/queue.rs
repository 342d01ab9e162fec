//! `xcomposer queue submit` and `xcomposer queue status`: the client side of the Redis Streams
//! queue (`xcomposer-jobs`'s [`Queue`]); `xcomposer worker` composes what is submitted.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use xcomposer_jobs::queue::{DEFAULT_PREFIX, Queue};

use crate::batch::read_checked_jobs;

/// Where the queue is: the Redis server and the key prefix.
#[derive(clap::Args, Clone, Debug)]
pub struct QueueAddress {
    /// The Redis server, as redis://HOST:PORT[/DB].
    #[arg(long, env = "XCOMPOSER_REDIS")]
    pub redis: String,
    /// The prefix of the queue's keys (several queues can share one Redis).
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub queue: String,
}

impl QueueAddress {
    /// Connects, making the stream and its consumer group if missing.
    pub fn connect(&self) -> Result<Queue> {
        Queue::connect(&self.redis, &self.queue).with_context(|| format!("--redis {}", self.redis))
    }
}

/// `xcomposer queue …`.
#[derive(clap::Subcommand)]
pub enum QueueCommand {
    /// Check every line of a jobs file (as `batch` does), then add each job not done yet.
    Submit {
        /// The jobs file (one JSON object per line, as for `batch`).
        jobs: PathBuf,
        /// The queue.
        #[command(flatten)]
        at: QueueAddress,
    },
    /// Print the jobs pending, in flight, done and dead, and each dead job's error.
    Status {
        /// The queue.
        #[command(flatten)]
        at: QueueAddress,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `queue`.
pub fn run(command: QueueCommand) -> Result<()> {
    match command {
        QueueCommand::Submit { jobs, at } => submit(&jobs, &at),
        QueueCommand::Status { at, json } => status(&at, json),
    }
}

fn submit(file: &std::path::Path, at: &QueueAddress) -> Result<()> {
    let jobs = read_checked_jobs(file)?;
    let mut q = at.connect()?;
    let (mut added, mut finished) = (0, 0);
    for (job, _) in &jobs {
        if q.result(&job.id)?.is_some() {
            finished += 1;
            continue;
        }
        q.submit(job)?;
        added += 1;
    }
    eprintln!("[queue] submitted {added} jobs to {} ({finished} already finished)", q.key("jobs"));
    Ok(())
}

fn status(at: &QueueAddress, json: bool) -> Result<()> {
    let mut q = at.connect()?;
    let s = q.status()?;
    let dead = q.dead()?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({"pending": s.pending, "in_flight": s.in_flight, "done": s.done, "dead": s.dead, "dead_jobs": dead}))?;
        return Ok(());
    }
    writeln!(out, "pending {}, in flight {}, done {}, dead {}", s.pending, s.in_flight, s.done, s.dead)?;
    for d in dead {
        writeln!(out, "dead {} after {} tries: {}", d.id, d.tries, d.error)?;
    }
    Ok(())
}

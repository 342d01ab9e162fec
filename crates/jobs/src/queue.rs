//! The Redis Streams queue. Keys under a prefix `P` (default `xcomposer`):
//!
//! - `P:jobs`, a stream read by one consumer group (`workers`): entries `id`, `job` (the JSON
//!   line), `submitted_ms`. An entry is acknowledged and deleted only once its article is stored
//!   (or it is dead), so the stream holds exactly the jobs not yet finished;
//! - `P:results`, a hash from job id to its [`JobResult`] (JSON): what makes a job done;
//! - `P:tries`, a hash from job id to the number of tries started;
//! - `P:dead`, the dead-letter stream: entries `id`, `job`, `error`, `tries`.
//!
//! A worker that dies leaves its entry pending; after the visibility timeout another worker
//! takes it over with XAUTOCLAIM. A live worker keeps its entry by claiming it again now and
//! then ([`Queue::heartbeat`]). A connection lost (Redis restarted) is opened again on the next
//! call.

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{Connection, Value};
use serde::Serialize;

use crate::results::now_ms;
use crate::{JobError, JobResult, JobSpec};

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "xcomposer";

/// A job handed to one worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The stream entry id (what is acknowledged).
    pub entry: String,
    /// The job.
    pub job: JobSpec,
    /// When it was submitted (ms since the epoch).
    pub submitted_ms: u64,
    /// Tries started, this one included.
    pub tries: u32,
    /// Whether it was taken over from a worker that stopped answering.
    pub claimed: bool,
}

/// The queue's counts, as `xcomposer queue status` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    /// Submitted, not yet handed to a worker.
    pub pending: usize,
    /// Handed to a worker, not yet acknowledged.
    pub in_flight: usize,
    /// Articles stored.
    pub done: usize,
    /// In the dead-letter stream.
    pub dead: usize,
}

/// One entry of the dead-letter stream.
#[derive(Debug, Clone, Serialize)]
pub struct DeadJob {
    /// The job id.
    pub id: String,
    /// The last try's error.
    pub error: String,
    /// Tries made.
    pub tries: u32,
}

/// A connection to the queue under one prefix.
pub struct Queue {
    client: redis::Client,
    conn: Option<Connection>,
    prefix: String,
}

impl Queue {
    /// Opens `url` (`redis://HOST:PORT[/DB]`) and makes the stream and its group if missing.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, JobError> {
        let client = redis::Client::open(url)?;
        let mut q = Queue { client, conn: None, prefix: prefix.to_string() };
        let created: Result<(), _> = redis::cmd("XGROUP").arg("CREATE").arg(q.key("jobs")).arg(GROUP).arg("0").arg("MKSTREAM").query(q.conn()?);
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(q),
            other => q.checked(other).map(|()| q),
        }
    }

    /// `PREFIX:name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    fn conn(&mut self) -> Result<&mut Connection, JobError> {
        if self.conn.is_none() {
            self.conn = Some(self.client.get_connection_with_timeout(Duration::from_secs(5))?);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// Passes a reply on; a lost connection is dropped so that the next call opens a new one.
    fn checked<T>(&mut self, r: redis::RedisResult<T>) -> Result<T, JobError> {
        if let Err(e) = &r
            && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout())
        {
            self.conn = None;
        }
        r.map_err(JobError::from)
    }

    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, JobError> {
        let r = cmd.query(self.conn()?);
        self.checked(r)
    }

    fn exec(&mut self, pipe: &redis::Pipeline) -> Result<(), JobError> {
        let r = pipe.query::<()>(self.conn()?);
        self.checked(r)
    }

    /// Adds a job to the stream; returns its entry id.
    pub fn submit(&mut self, job: &JobSpec) -> Result<String, JobError> {
        let cmd = redis::cmd("XADD").arg(self.key("jobs")).arg("*").arg("id").arg(&job.id).arg("job").arg(job.to_line()).arg("submitted_ms").arg(now_ms()).clone();
        self.query(&cmd)
    }

    /// The job's result, if it finished (done or dead).
    pub fn result(&mut self, id: &str) -> Result<Option<JobResult>, JobError> {
        let key = self.key("results");
        let text: Option<String> = self.query(redis::cmd("HGET").arg(&key).arg(id))?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| JobError::BadEntry { key, message: format!("result of {id:?}: {e}") })).transpose()
    }

    /// The next job for `consumer`: first one whose worker has not answered for `visibility`
    /// (taken over), else a new one, waiting up to `block`; `None` when there is none.
    pub fn next(&mut self, consumer: &str, visibility: Duration, block: Duration) -> Result<Option<Delivery>, JobError> {
        let jobs = self.key("jobs");
        let claim = redis::cmd("XAUTOCLAIM").arg(&jobs).arg(GROUP).arg(consumer).arg(visibility.as_millis() as u64).arg("0-0").arg("COUNT").arg(1).clone();
        let claimed: StreamAutoClaimReply = self.query(&claim)?;
        let (entry, was_claimed) = match claimed.claimed.into_iter().next() {
            Some(e) => (e, true),
            None => {
                let read = redis::cmd("XREADGROUP").arg("GROUP").arg(GROUP).arg(consumer).arg("COUNT").arg(1).arg("BLOCK").arg(block.as_millis() as u64).arg("STREAMS").arg(&jobs).arg(">").clone();
                let reply: Option<StreamReadReply> = self.query(&read)?;
                match reply.and_then(|r| r.keys.into_iter().next()).and_then(|k| k.ids.into_iter().next()) {
                    Some(e) => (e, false),
                    None => return Ok(None),
                }
            }
        };
        let (job, submitted_ms) = self.parse_entry(&entry)?;
        let tries: u32 = self.query(redis::cmd("HINCRBY").arg(self.key("tries")).arg(&job.id).arg(1))?;
        Ok(Some(Delivery { entry: entry.id, job, submitted_ms, tries, claimed: was_claimed }))
    }

    fn parse_entry(&self, entry: &StreamId) -> Result<(JobSpec, u64), JobError> {
        let bad = |message: String| JobError::BadEntry { key: self.key("jobs"), message: format!("entry {}: {message}", entry.id) };
        let line: String = entry.get("job").ok_or_else(|| bad("no field \"job\"".into()))?;
        let value = serde_json::from_str(&line).map_err(|e| bad(format!("field \"job\" is not JSON: {e}")))?;
        let job = JobSpec::from_value(value, std::path::Path::new(&self.key("jobs")), 0).map_err(|e| bad(e.to_string()))?;
        Ok((job, entry.get("submitted_ms").unwrap_or(0)))
    }

    /// Tells the group that `consumer` is still working on `entry` (resets its idle time).
    pub fn heartbeat(&mut self, consumer: &str, entry: &str) -> Result<(), JobError> {
        let cmd = redis::cmd("XCLAIM").arg(self.key("jobs")).arg(GROUP).arg(consumer).arg(0).arg(entry).arg("JUSTID").clone();
        self.query::<Value>(&cmd).map(|_| ())
    }

    /// Records the result and acknowledges the entry, in one transaction.
    pub fn finish(&mut self, d: &Delivery, result: &JobResult) -> Result<(), JobError> {
        let text = serde_json::to_string(result).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic().hset(self.key("results"), &d.job.id, text).ignore();
        self.ack_into(&mut pipe, &d.entry);
        self.exec(&pipe)
    }

    /// Acknowledges an entry whose job is already finished (a duplicate).
    pub fn ack(&mut self, entry: &str) -> Result<(), JobError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.ack_into(&mut pipe, entry);
        self.exec(&pipe)
    }

    /// Puts a failed job back at the end of the stream for another try, in one transaction.
    pub fn retry(&mut self, d: &Delivery) -> Result<(), JobError> {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("XADD").arg(self.key("jobs")).arg("*").arg("id").arg(&d.job.id).arg("job").arg(d.job.to_line()).arg("submitted_ms").arg(d.submitted_ms).ignore();
        self.ack_into(&mut pipe, &d.entry);
        self.exec(&pipe)
    }

    /// Moves a job that failed its last try to the dead-letter stream with its error, records
    /// the result and acknowledges it, in one transaction.
    pub fn bury(&mut self, d: &Delivery, result: &JobResult) -> Result<(), JobError> {
        let error = result.error.clone().unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("XADD").arg(self.key("dead")).arg("*").arg("id").arg(&d.job.id).arg("job").arg(d.job.to_line()).arg("error").arg(error).arg("tries").arg(d.tries).ignore();
        pipe.hset(self.key("results"), &d.job.id, serde_json::to_string(result).unwrap_or_default()).ignore();
        self.ack_into(&mut pipe, &d.entry);
        self.exec(&pipe)
    }

    fn ack_into(&self, pipe: &mut redis::Pipeline, entry: &str) {
        pipe.cmd("XACK").arg(self.key("jobs")).arg(GROUP).arg(entry).ignore();
        pipe.cmd("XDEL").arg(self.key("jobs")).arg(entry).ignore();
    }

    /// Pending, in flight, done and dead (the stream holds only unfinished entries, so the
    /// pending ones are its length less those in flight).
    pub fn status(&mut self) -> Result<QueueStatus, JobError> {
        let jobs = self.key("jobs");
        let len: usize = self.query(redis::cmd("XLEN").arg(&jobs))?;
        let summary: Value = self.query(redis::cmd("XPENDING").arg(&jobs).arg(GROUP))?;
        let in_flight = match summary {
            Value::Array(v) => v.first().and_then(|c| redis::from_redis_value::<usize>(c.clone()).ok()).unwrap_or(0),
            _ => 0,
        };
        let results: Vec<String> = self.query(redis::cmd("HVALS").arg(self.key("results")))?;
        let done = results.iter().filter(|r| serde_json::from_str::<JobResult>(r).is_ok_and(|r| r.status == crate::JobStatus::Done)).count();
        let dead: usize = self.query(redis::cmd("XLEN").arg(self.key("dead")))?;
        Ok(QueueStatus { pending: len.saturating_sub(in_flight), in_flight, done, dead })
    }

    /// Every dead-letter entry, oldest first.
    pub fn dead(&mut self) -> Result<Vec<DeadJob>, JobError> {
        let reply: redis::streams::StreamRangeReply = self.query(redis::cmd("XRANGE").arg(self.key("dead")).arg("-").arg("+"))?;
        Ok(reply.ids.iter().map(|e| DeadJob { id: e.get("id").unwrap_or_default(), error: e.get("error").unwrap_or_default(), tries: e.get("tries").unwrap_or(0) }).collect())
    }
}

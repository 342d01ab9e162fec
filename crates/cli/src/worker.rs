//! `xcomposer worker`: loads the models once, then composes the jobs of a Redis Streams queue
//! one at a time, each stored whole as `OUT/<id>/` before it is acknowledged. Jobs of a worker
//! that stopped answering are taken over after the visibility timeout; a job that fails on its
//! last try goes to the dead-letter stream with its error.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use xcomposer_composer::{Composer, Language};
use xcomposer_jobs::queue::{Delivery, Queue};
use xcomposer_jobs::results::now_ms;
use xcomposer_jobs::{ArticleStore, FolderStore, JobError, JobResult, JobStatus, ResultsLog};

use crate::batch::{Outcome, done_result, job_args, run_job};
use crate::compose::{PipelineOptions, build_composer};
use crate::interrupt::Interrupt;
use crate::queue::QueueAddress;

/// Arguments of `xcomposer worker`.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The queue.
    #[command(flatten)]
    pub at: QueueAddress,
    /// The output folder every worker shares (a local or network folder): OUT/ID/ per job and
    /// OUT/results.jsonl.
    #[arg(long, default_value = "articles")]
    pub out: PathBuf,
    /// Where articles go, as a URL instead of --out: file:///path or a plain folder path. Other
    /// schemes (s3://, …) are refused: the README's "Many articles" says how an object store
    /// would plug in.
    #[arg(long, value_name = "URL", conflicts_with = "out")]
    pub store: Option<String>,
    /// Seconds a job may go without word from its worker before another worker takes it over.
    #[arg(long, default_value_t = 60)]
    pub visibility_timeout: u64,
    /// Tries of a job before it goes to the dead-letter stream.
    #[arg(long, default_value_t = 3)]
    pub max_tries: u32,
    /// Stop when no job is pending or in flight (default: wait for more until Ctrl-C).
    #[arg(long)]
    pub until_empty: bool,
    /// This worker's name in the consumer group (default: HOST-PID).
    #[arg(long)]
    pub name: Option<String>,
    /// Models, library and output formats.
    #[command(flatten)]
    pub pipeline: PipelineOptions,
}

/// HOST-PID, in the characters a job id may hold.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let host: String = host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(40).collect();
    format!("{host}-{}", std::process::id())
}

/// What a worker needs for each job.
struct Worker<'a> {
    name: String,
    args: &'a WorkerArgs,
    composer: Composer,
    store: Box<dyn ArticleStore>,
    log: ResultsLog,
    interrupt: Interrupt,
    /// The entry being composed, kept alive by the heartbeat thread.
    current: Mutex<Option<String>>,
}

/// Runs `worker`.
pub fn run(args: WorkerArgs) -> Result<()> {
    let name = args.name.clone().unwrap_or_else(default_name);
    if !xcomposer_jobs::spec::valid_id(&name) {
        bail!("--name {name:?}: use 1-64 letters, digits, '-', '_' or '.'");
    }
    if args.max_tries == 0 || args.visibility_timeout == 0 {
        bail!("--max-tries and --visibility-timeout must be at least 1");
    }
    if let Some(p) = &args.pipeline.prompts {
        bail!("--prompts {}: a worker takes jobs in any language, and a prompt file replaces one language's prompts; use `batch` for it", p.display());
    }
    let out = match &args.store {
        Some(url) => xcomposer_jobs::store::folder_of_url(url).map_err(|e| anyhow!("--store {e}"))?,
        None => args.out.clone(),
    };
    let mut queue = args.at.connect()?;
    let store: Box<dyn ArticleStore> = Box::new(FolderStore::open(&out)?);
    let interrupt = Interrupt::install("stopping after the job in flight")?;
    let composer = build_composer(&args.pipeline, Language::En)?;
    let w = Worker { name, args: &args, composer, store, log: ResultsLog::in_dir(&out), interrupt, current: Mutex::new(None) };
    eprintln!("[worker {}] waiting for jobs on {}", w.name, queue.key("jobs"));
    let stopped = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| w.heartbeat(&stopped));
        let r = w.serve(&mut queue);
        stopped.store(true, Ordering::SeqCst);
        r
    })
}

impl Worker<'_> {
    fn visibility(&self) -> Duration {
        Duration::from_secs(self.args.visibility_timeout)
    }

    /// Takes jobs until interrupted (or, with `--until-empty`, until none is left).
    fn serve(&self, q: &mut Queue) -> Result<()> {
        let mut served = 0usize;
        while !self.interrupt.is_set() {
            match q.next(&self.name, self.visibility(), Duration::from_secs(1)) {
                Ok(Some(d)) => {
                    self.handle(q, d)?;
                    served += 1;
                }
                Ok(None) if self.args.until_empty => match q.status() {
                    Ok(s) if s.pending == 0 && s.in_flight == 0 => break,
                    Ok(_) => {}
                    Err(e) => self.wait_for_redis(&e),
                },
                Ok(None) => {}
                Err(e) => self.wait_for_redis(&e),
            }
        }
        eprintln!("[worker {}] stopped after {served} jobs", self.name);
        Ok(())
    }

    fn wait_for_redis(&self, e: &JobError) {
        eprintln!("[worker {}] {e}; trying again in 1 s", self.name);
        std::thread::sleep(Duration::from_secs(1));
    }

    /// One delivered job: skipped if already finished, composed and stored otherwise, then
    /// acknowledged (or put back, or buried).
    fn handle(&self, q: &mut Queue, d: Delivery) -> Result<()> {
        let id = d.job.id.clone();
        if self.with_redis(q, |q| q.result(&id))?.is_some() {
            eprintln!("[worker {}] {id} was already finished; acknowledged the repeated entry", self.name);
            return self.with_redis(q, |q| q.ack(&d.entry));
        }
        if d.claimed {
            // Its earlier worker stopped answering: its temporary folder is dead too.
            self.store.clear_partials(Some(&id))?;
        }
        if self.store.is_stored(&id)? {
            // Stored by a worker that stopped before acknowledging.
            let r = done_result(self.store.as_ref(), &id, None, 0.0, &self.name)?;
            return self.with_redis(q, |q| q.finish(&d, &r));
        }
        if d.tries > self.args.max_tries {
            let error = format!("started {} times without finishing: its workers stopped while composing it", d.tries - 1);
            return self.fail(q, &d, error, 0.0, true);
        }
        let started = now_ms();
        eprintln!("[worker {}] composing {id} (try {}{})", self.name, d.tries, if d.claimed { ", taken over" } else { "" });
        let args = match job_args(&d.job, Path::new(&q.key("jobs"))) {
            Ok(a) => a,
            // A line no try can run: dead at once.
            Err(e) => return self.fail(q, &d, format!("{e:#}"), 0.0, true),
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(d.entry.clone());
        let t = Instant::now();
        let outcome = run_job(&self.composer, &d.job, &args, &self.args.pipeline, self.store.as_ref(), &self.name, &|| false);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let seconds = t.elapsed().as_secs_f64();
        match outcome? {
            Outcome::Stored { title, committed } => {
                let mut r = done_result(self.store.as_ref(), &id, Some(title), seconds, &self.name)?;
                (r.tries, r.waited_seconds) = (d.tries, Some(started.saturating_sub(d.submitted_ms) as f64 / 1000.0));
                self.with_redis(q, |q| q.finish(&d, &r))?;
                self.log.append(&r)?;
                eprintln!("[worker {}] stored {id} in {seconds:.1} s{}", self.name, if committed == xcomposer_jobs::Committed::AlreadyStored { " (another try had stored it first)" } else { "" });
                Ok(())
            }
            Outcome::Failed(error) => self.fail(q, &d, error, seconds, d.tries >= self.args.max_tries),
            Outcome::Abandoned => Ok(()),
        }
    }

    /// A failed try: put back for another, or (`last`) moved to the dead-letter stream.
    fn fail(&self, q: &mut Queue, d: &Delivery, error: String, seconds: f64, last: bool) -> Result<()> {
        eprintln!("[worker {}] {} failed (try {}): {error}", self.name, d.job.id, d.tries);
        if !last {
            return self.with_redis(q, |q| q.retry(d));
        }
        let r = JobResult { id: d.job.id.clone(), status: JobStatus::Dead, paths: vec![], title: None, error: Some(error), seconds, waited_seconds: None, tries: d.tries, worker: self.name.clone(), finished_ms: now_ms() };
        self.with_redis(q, |q| q.bury(d, &r))?;
        self.log.append(&r)?;
        Ok(())
    }

    /// Runs a queue step, trying again while Redis is unreachable (restarting, say): the
    /// article is stored by then, and giving up would leave the entry to be taken over later.
    fn with_redis<T>(&self, q: &mut Queue, mut step: impl FnMut(&mut Queue) -> Result<T, JobError>) -> Result<T> {
        loop {
            match step(q) {
                Ok(v) => return Ok(v),
                Err(JobError::Redis(e)) if !self.interrupt.is_set() && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()) => {
                    self.wait_for_redis(&JobError::Redis(e));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Claims the entry in flight again every third of the visibility timeout, so that no other
    /// worker takes over a job that is only slow.
    fn heartbeat(&self, stopped: &AtomicBool) {
        let period = self.visibility() / 3;
        let (mut q, mut last) = (None, Instant::now());
        while !stopped.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() < period {
                continue;
            }
            last = Instant::now();
            let entry = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if q.is_none() {
                q = self.args.at.connect().ok();
            }
            if let (Some(entry), Some(q)) = (entry, q.as_mut())
                && let Err(e) = q.heartbeat(&self.name, &entry)
            {
                eprintln!("[worker {}] heartbeat: {e}", self.name);
            }
        }
    }
}

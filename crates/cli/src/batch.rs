//! `xcomposer batch`: many articles from a jobs file on one machine, the models loaded once.
//! Each job's line holds `compose`'s own options (parsed by `compose`'s argument definition), and
//! its article is stored whole as `OUT/<id>/`; `OUT/results.jsonl` records each finished job, so
//! running the command again continues where it stopped.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use clap::{Args, CommandFactory, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use xcomposer_composer::{Composer, Language};
use xcomposer_jobs::results::now_ms;
use xcomposer_jobs::{ArticleStore, Committed, FolderStore, JobResult, JobSpec, JobStatus, ResultsLog};

use crate::compose::{ComposeArgs, PipelineOptions, build_composer, compose_to};
use crate::interrupt::Interrupt;

/// Arguments of `xcomposer batch`.
#[derive(clap::Args)]
pub struct BatchArgs {
    /// The jobs file: one JSON object per line with `instruction` and any of `compose`'s
    /// per-article options by their snake_case names (`seed`, `max_new_tokens`, `images`, …),
    /// plus an optional `id` (default: derived from the line, the same on every run).
    pub jobs: PathBuf,
    /// The output folder: one article folder OUT/ID/ per job and OUT/results.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Jobs composed at the same time, sharing the loaded models.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Run again the jobs whose last result is a failure (by default they are skipped).
    #[arg(long)]
    pub retry_failed: bool,
    /// Models, library and output formats, for every job.
    #[command(flatten)]
    pub pipeline: PipelineOptions,
}

/// `compose`'s arguments as a command of their own, to parse a job line with them.
#[derive(Parser)]
#[command(name = "job", no_binary_name = false)]
struct JobLine {
    #[command(flatten)]
    args: ComposeArgs,
}

/// A job's compose options as `compose`'s arguments: each field of the line is the flag of that
/// name, checked by the same definition. Options of the whole run (models, library, formats)
/// and `out`/`force` are refused, naming the line and the field.
pub(crate) fn job_args(job: &JobSpec, file: &Path) -> Result<ComposeArgs> {
    let at = |field: &str| format!("{}:{}: field {field:?}", file.display(), job.line);
    let cmd = JobLine::command();
    let run_wide = PipelineOptions::augment_args(clap::Command::new("run"));
    let mut argv = vec!["job".to_string()];
    for (key, value) in &job.options {
        if key == "instruction" {
            continue;
        }
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == key.as_str() && a.get_long().is_some()) else {
            bail!("{}: not a compose option (expected instruction, id, or one of: {})", at(key), per_job_options(&cmd, &run_wide).join(", "));
        };
        let long = arg.get_long().unwrap_or_default();
        if run_wide.get_arguments().any(|a| a.get_id() == key.as_str()) || matches!(key.as_str(), "out" | "force") {
            bail!("{}: --{long} is set for the whole run, not per job (give it on the command line)", at(key));
        }
        let takes_value = arg.get_num_args().is_none_or(|n| n.takes_values());
        match value {
            Value::Null | Value::Bool(false) if !takes_value => {}
            Value::Bool(true) if !takes_value => argv.push(format!("--{long}")),
            Value::Null => {}
            Value::String(s) => argv.push(format!("--{long}={s}")),
            Value::Number(n) => argv.push(format!("--{long}={n}")),
            Value::Array(items) if items.iter().all(|v| v.is_string() || v.is_number()) => {
                let parts: Vec<String> = items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), String::from)).collect();
                argv.push(format!("--{long}={}", parts.join(",")));
            }
            other => bail!("{}: expected {}, got {other}", at(key), if takes_value { "a string, a number or a list of them" } else { "true or false" }),
        }
    }
    match job.options.get("instruction") {
        Some(Value::String(s)) => argv.extend(["--".to_string(), s.clone()]),
        Some(other) => bail!("{}: expected the writing instruction as a string, got {other}", at("instruction")),
        None => bail!("{}:{}: no \"instruction\": say what the article should be about", file.display(), job.line),
    }
    let parsed = JobLine::try_parse_from(argv).map_err(|e| {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
        anyhow!("{}:{}: {first}", file.display(), job.line)
    })?;
    if parsed.args.instruction.trim().is_empty() {
        bail!("{}: the instruction is empty: say what the article should be about", at("instruction"));
    }
    Ok(parsed.args)
}

/// The snake_case names a job line may use.
fn per_job_options(cmd: &clap::Command, run_wide: &clap::Command) -> Vec<String> {
    cmd.get_arguments()
        .filter(|a| a.get_long().is_some() && !matches!(a.get_id().as_str(), "out" | "force" | "help" | "version"))
        .filter(|a| !run_wide.get_arguments().any(|r| r.get_id() == a.get_id()))
        .map(|a| a.get_id().to_string())
        .collect()
}

/// Every job of a file with its parsed options, all checked before any model loads.
pub(crate) fn read_checked_jobs(file: &Path) -> Result<Vec<CheckedJob>> {
    let jobs = xcomposer_jobs::spec::read_jobs(file)?;
    if jobs.is_empty() {
        bail!("{}: no jobs (one JSON object per line, e.g. {{\"instruction\": \"Write about owls.\"}})", file.display());
    }
    jobs.into_iter().map(|j| job_args(&j, file).map(|a| (j, a))).collect()
}

/// The prompt language to build the pipeline for: `--prompts` replaces one language's prompts,
/// so with it every job must be in that language.
pub(crate) fn pipeline_language(pipeline: &PipelineOptions, jobs: &[CheckedJob]) -> Result<Language> {
    let langs: Vec<Language> = jobs.iter().map(|(_, a)| a.lang.unwrap_or_else(|| Language::detect(&a.instruction))).collect();
    let first = langs.first().copied().unwrap_or(Language::En);
    if let Some(p) = &pipeline.prompts
        && let Some(i) = langs.iter().position(|l| *l != first)
    {
        bail!("--prompts {} applies to one language, but job {:?} is in {:?} and job {:?} in {:?}: run them in two batches", p.display(), jobs[0].0.id, first, jobs[i].0.id, langs[i]);
    }
    Ok(first)
}

/// A job with its options parsed.
pub(crate) type CheckedJob = (JobSpec, ComposeArgs);

/// The jobs of this run (those not stored yet, and not failed unless `retry_failed`), with the
/// counts of those already done and failed before.
fn pending_jobs(all: Vec<CheckedJob>, store: &dyn ArticleStore, log: &ResultsLog, retry_failed: bool) -> Result<(Vec<CheckedJob>, usize, usize)> {
    let previous = log.read(&mut |m| eprintln!("[batch] {m}"))?;
    let (mut todo, mut done, mut failed) = (vec![], 0, 0);
    for (job, args) in all {
        if store.is_stored(&job.id)? {
            if previous.get(&job.id).is_none_or(|r| r.status != JobStatus::Done) {
                // Stored, but the process stopped before its line was written.
                log.append(&done_result(store, &job.id, None, 0.0, "batch")?)?;
            }
            done += 1;
        } else if previous.get(&job.id).is_some_and(|r| r.status == JobStatus::Failed) && !retry_failed {
            failed += 1;
        } else {
            store.clear_partials(Some(&job.id))?;
            todo.push((job, args));
        }
    }
    Ok((todo, done, failed))
}

/// The result of a stored article.
pub(crate) fn done_result(store: &dyn ArticleStore, id: &str, title: Option<String>, seconds: f64, worker: &str) -> Result<JobResult> {
    Ok(JobResult { id: id.into(), status: JobStatus::Done, paths: store.files(id)?, title, error: None, seconds, waited_seconds: None, tries: 1, worker: worker.into(), finished_ms: now_ms() })
}

/// How one try of a job ended.
pub(crate) enum Outcome {
    /// Stored (or found stored by another try).
    Stored { title: String, committed: Committed },
    /// Stopped by the interrupt; nothing of it was kept.
    Abandoned,
    /// Failed; nothing of it was kept.
    Failed(String),
}

/// Composes one job into a temporary folder and moves it into place; a failed or stopped try
/// leaves nothing behind.
pub(crate) fn run_job(composer: &Composer, job: &JobSpec, args: &ComposeArgs, pipeline: &PipelineOptions, store: &dyn ArticleStore, worker: &str, stop: &(dyn Fn() -> bool + Sync)) -> Result<Outcome> {
    let tmp = store.begin(&job.id, worker)?;
    let composed = compose_to(composer, args, &pipeline.format, &tmp, true, &mut |_| if stop() { std::ops::ControlFlow::Break(()) } else { std::ops::ControlFlow::Continue(()) });
    match composed {
        Ok((article, _)) => Ok(Outcome::Stored { title: article.title, committed: store.commit(&tmp, &job.id)? }),
        Err(e) => {
            store.discard(&tmp)?;
            Ok(if stop() { Outcome::Abandoned } else { Outcome::Failed(format!("{e:#}")) })
        }
    }
}

/// Runs `batch`.
pub fn run(args: BatchArgs) -> Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let all = read_checked_jobs(&args.jobs)?;
    let total = all.len();
    let store = FolderStore::open(&args.out)?;
    let log = ResultsLog::in_dir(&args.out);
    let language = pipeline_language(&args.pipeline, &all)?;
    let (todo, skipped, failed_before) = pending_jobs(all, &store, &log, args.retry_failed)?;
    eprintln!("[batch] {total} jobs: {skipped} already done, {failed_before} failed before{}, {} to run", if failed_before > 0 { " (skipped; --retry-failed runs them)" } else { "" }, todo.len());
    if todo.is_empty() {
        return Ok(());
    }
    let interrupt = Interrupt::install("stopping: the jobs in flight are abandoned, nothing of them is kept")?;
    let composer = build_composer(&args.pipeline, language)?;
    let t0 = Instant::now();
    let counts = run_all(&todo, &composer, &args, &store, &log, &interrupt)?;
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    eprintln!("[batch] {} done, {} failed, {} abandoned in {:.1} min ({:.2} articles/min); results in {}", counts.done, counts.failed, counts.abandoned, minutes, counts.done as f64 / minutes.max(1e-9), log.path.display());
    if interrupt.is_set() {
        bail!("interrupted: {} jobs not run; run the same command again to continue", todo.len() - counts.done - counts.failed);
    }
    if counts.failed > 0 {
        bail!("{} jobs failed (their errors are in {}; --retry-failed runs them again)", counts.failed, log.path.display());
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    done: usize,
    failed: usize,
    abandoned: usize,
}

/// Runs the jobs on `--workers` threads, each taking the next job, with the progress bar.
fn run_all(todo: &[CheckedJob], composer: &Composer, args: &BatchArgs, store: &dyn ArticleStore, log: &ResultsLog, interrupt: &Interrupt) -> Result<Counts> {
    let bar = ProgressBar::new(todo.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} jobs, {msg}, {per_sec}, ETA {eta}").map_err(|e| anyhow!("{e}"))?);
    bar.set_message("0 failed");
    let next = AtomicUsize::new(0);
    let counts = Mutex::new(Counts::default());
    let worker = format!("batch-{}", std::process::id());
    let stop = || interrupt.is_set();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.workers.min(todo.len()))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while !stop() {
                        let Some((job, job_args)) = todo.get(next.fetch_add(1, Ordering::SeqCst)) else { break };
                        let t = Instant::now();
                        let outcome = run_job(composer, job, job_args, &args.pipeline, store, &worker, &stop)?;
                        let seconds = t.elapsed().as_secs_f64();
                        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                        let result = match outcome {
                            Outcome::Abandoned => {
                                c.abandoned += 1;
                                continue;
                            }
                            Outcome::Stored { title, .. } => {
                                c.done += 1;
                                done_result(store, &job.id, Some(title), seconds, &worker)?
                            }
                            Outcome::Failed(error) => {
                                c.failed += 1;
                                bar.suspend(|| eprintln!("[batch] {} failed: {error}", job.id));
                                JobResult { id: job.id.clone(), status: JobStatus::Failed, paths: vec![], title: None, error: Some(error), seconds, waited_seconds: None, tries: 1, worker: worker.clone(), finished_ms: now_ms() }
                            }
                        };
                        log.append(&result)?;
                        bar.set_message(format!("{} failed", c.failed));
                        bar.inc(1);
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().map_err(|_| anyhow!("a batch thread panicked"))?)
    })?;
    bar.finish();
    Ok(counts.into_inner().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(line: &str) -> Result<ComposeArgs> {
        let spec = xcomposer_jobs::spec::parse_jobs(line, Path::new("jobs.jsonl"))?.remove(0);
        job_args(&spec, Path::new("jobs.jsonl"))
    }

    #[test]
    fn a_job_line_takes_composes_options_with_composes_defaults() {
        let a = job(r#"{"instruction": "-About owls.", "seed": 7, "max_new_tokens": 24, "images": 2, "lang": "zh"}"#).unwrap();
        assert_eq!((a.instruction.as_str(), a.seed, a.max_new_tokens, a.images, a.lang), ("-About owls.", 7, 24, Some(2), Some(Language::Zh)));
        let d = job(r#"{"instruction": "About owls."}"#).unwrap();
        let c = ComposeArgs::augment_args(clap::Command::new("c")).try_get_matches_from(["c", "x"]).unwrap();
        assert_eq!(d.max_new_tokens, *c.get_one::<usize>("max_new_tokens").unwrap());
    }

    #[test]
    fn unknown_or_run_wide_fields_are_refused_naming_line_and_field() {
        let err = |l: &str| job(l).map(|_| ()).unwrap_err().to_string();
        let e = err(r#"{"instruction": "a", "sead": 1}"#);
        assert!(e.starts_with("jobs.jsonl:1: field \"sead\": not a compose option (expected instruction, id, or one of: "), "{e}");
        assert!(e.contains("max_new_tokens") && !e.contains("model"), "{e}");
        assert_eq!(err(r#"{"instruction": "a", "model": "m.gguf"}"#), "jobs.jsonl:1: field \"model\": --model is set for the whole run, not per job (give it on the command line)");
        assert!(err(r#"{"instruction": "a", "out": "x"}"#).contains("--out is set for the whole run"));
        assert!(err(r#"{"instruction": "a", "seed": "many"}"#).starts_with("jobs.jsonl:1: invalid value 'many' for '--seed <SEED>'"));
        assert!(err(r#"{"instruction": "a", "seed": {"n": 1}}"#).starts_with("jobs.jsonl:1: field \"seed\": expected a string, a number"));
        assert_eq!(err(r#"{"seed": 1}"#), "jobs.jsonl:1: no \"instruction\": say what the article should be about");
        assert_eq!(err(r#"{"instruction": " "}"#), "jobs.jsonl:1: field \"instruction\": the instruction is empty: say what the article should be about");
    }
}

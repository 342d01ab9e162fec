//! End-to-end tests of many articles with the default models: `batch` interrupted and resumed,
//! and `worker`s on a real Redis (Debian's redis-server, installed with apt-get when missing,
//! started here on a free loopback port with its append-only file on, stopped at the end).

#[path = "../crates/llm/tests/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The tests each run several model processes: one at a time on a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn xcomposer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xcomposer"));
    c.env_remove("RUST_BACKTRACE").env("XCOMPOSER_THREADS", "1");
    c
}

fn models() {
    common::default_model();
    xcomposer_retrieval::default_library::ensure(&xcomposer_llm::fetch::models_dir(), &mut |m| eprintln!("[fetch] {m}")).expect("fetching the default library");
}

fn temp(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("jobs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The writer of every run here: one shot with the default model, a few tokens per job (the
/// queue and the store are under test, not the writing; the structured writer spends at least
/// 90 tokens on each section).
const WRITER: [&str; 2] = ["--writer", "oneshot"];

/// A jobs file of `n` short articles, ids `{prefix}00`, `{prefix}01`, … (seeds repeat every 10,
/// so that every job is one of 10 articles known to have a paragraph).
fn jobs_file(dir: &Path, prefix: &str, n: usize, images: usize) -> PathBuf {
    let topics = ["owls", "coffee", "trains", "bread", "rivers", "bees", "kites", "tea", "maps", "snow"];
    let lines: Vec<String> = (0..n)
        .map(|i| serde_json::json!({"id": format!("{prefix}{i:02}"), "instruction": format!("Write one paragraph about {}.", topics[i % topics.len()]), "max_new_tokens": 16, "max_paragraphs": 1, "images": images, "seed": i % 10}).to_string())
        .collect();
    let path = dir.join(format!("{prefix}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Whether `OUT/ID/` holds a whole article (its three renderings, the JSON readable).
fn complete(out: &Path, id: &str) -> bool {
    let d = out.join(id);
    ["article.md", "article.html"].iter().all(|f| d.join(f).is_file()) && std::fs::read_to_string(d.join("article.json")).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()).is_some_and(|v| v["title"].is_string())
}

fn partials(out: &Path) -> Vec<String> {
    std::fs::read_dir(out.join(".partial")).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

/// Debian's redis-server on a free loopback port, its data in a temporary folder.
struct Redis {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Redis {
    fn start(tag: &str) -> Self {
        install_redis();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = temp(&format!("redis-{tag}"));
        let child = Self::spawn(port, &dir);
        let r = Redis { port, dir, child };
        r.wait_ready();
        r
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--appendonly", "yes", "--save", "", "--daemonize", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server")
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().expect("running redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while self.cli(&["ping"]) != "PONG" {
            assert!(t.elapsed() < Duration::from_secs(30), "redis-server did not answer on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it the way an operator would (the append-only file is flushed) and starts it again
    /// on the same port and data.
    fn restart(&mut self) {
        self.cli(&["shutdown"]);
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, &self.dir);
        self.wait_ready();
    }

    fn status(&self) -> serde_json::Value {
        let out = xcomposer().args(["queue", "status", "--json", "--redis", &self.url()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn submit(&self, jobs: &Path) {
        let out = xcomposer().args(["queue", "submit", "--redis", &self.url()]).arg(jobs).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// apt-get install redis-server when it is not on the PATH (root, or sudo without a password).
fn install_redis() {
    if Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return;
    }
    let sudo = if Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0")) { "" } else { "sudo -n " };
    let script = format!("{sudo}apt-get update -q && DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -q redis-server");
    let ok = Command::new("sh").args(["-c", &script]).status().is_ok_and(|s| s.success());
    assert!(ok, "redis-server is missing and `{script}` failed: install Debian's redis-server");
}

/// A running worker whose stderr is collected.
struct Worker {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Worker {
    /// A worker storing into the folder `out` (given as `--out`).
    fn start(redis: &Redis, out: &Path, name: &str, extra: &[&str]) -> Self {
        Self::start_storing(redis, &["--out".as_ref(), out.as_os_str()], name, extra)
    }

    /// A worker given its store as `store` (`--out DIR` or `--store URL`).
    fn start_storing(redis: &Redis, store: &[&std::ffi::OsStr], name: &str, extra: &[&str]) -> Self {
        let mut child = xcomposer()
            .args(["worker", "--redis", &redis.url(), "--name", name, "--visibility-timeout", "3", "--max-tries", "2"])
            .args(WRITER)
            .args(store)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (l, err) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Worker { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until its log has a line containing `text`.
    fn wait_for(&self, text: &str) {
        let t = Instant::now();
        while !self.log().contains(text) {
            assert!(t.elapsed() < Duration::from_secs(600), "no {text:?} in:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(mut self) -> String {
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(status.success(), "worker failed:\n{}", self.log());
        self.log()
    }
}

/// The ids each worker's log says it stored.
fn stored(logs: &[String]) -> Vec<String> {
    logs.iter().flat_map(|l| l.lines().filter_map(|line| line.split(" stored ").nth(1)).map(|rest| rest.split(' ').next().unwrap_or_default().to_string())).collect()
}

#[test]
fn three_workers_compose_thirty_jobs_each_exactly_once() {
    let _one = serial();
    models();
    let redis = Redis::start("thirty");
    let dir = temp("thirty");
    let (jobs, out) = (jobs_file(&dir, "t", 30, 0), dir.join("out"));
    redis.submit(&jobs);
    assert_eq!(redis.status()["pending"], 30);
    // The third worker names the same folder as a file:// URL.
    let url = format!("file://{}", out.display());
    let mut workers: Vec<Worker> = (0..2).map(|i| Worker::start(&redis, &out, &format!("w{i}"), &["--until-empty"])).collect();
    workers.push(Worker::start_storing(&redis, &["--store".as_ref(), url.as_ref()], "w2", &["--until-empty"]));
    let logs: Vec<String> = workers.into_iter().map(Worker::finish).collect();
    let mut ids = stored(&logs);
    assert_eq!(ids.len(), 30, "{logs:#?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30, "a job was composed twice: {logs:#?}");
    assert!((0..30).all(|i| complete(&out, &format!("t{i:02}"))));
    assert!(partials(&out).is_empty());
    let s = redis.status();
    assert_eq!((s["pending"].as_u64(), s["in_flight"].as_u64(), s["done"].as_u64(), s["dead"].as_u64()), (Some(0), Some(0), Some(30), Some(0)));
    // Submitting the same file again adds nothing: every id is finished.
    redis.submit(&jobs);
    assert_eq!(redis.status()["pending"], 0);
    let lines = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 30);
}

#[test]
fn a_store_url_of_another_scheme_is_refused_naming_the_flag_and_what_is_supported() {
    // Refused before any connection: no Redis listens on port 1.
    let out = xcomposer().args(["worker", "--redis", "redis://127.0.0.1:1", "--store", "s3://bucket/articles"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--store s3://bucket/articles: the s3:// scheme is not supported; use file:///path or a folder path"), "{err}");
    let out = xcomposer().args(["worker", "--redis", "redis://127.0.0.1:1", "--store", "file:///x", "--out", "y"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot be used with"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_killed_workers_job_is_taken_over_and_a_poisoned_job_ends_dead() {
    let _one = serial();
    models();
    let redis = Redis::start("kill");
    let dir = temp("kill");
    let out = dir.join("out");
    let jobs = dir.join("jobs.jsonl");
    // A longer job first (the killed worker takes it), then one that fails on every try.
    let long = serde_json::json!({"id": "long", "instruction": "Write one paragraph about lighthouses.", "max_new_tokens": 64, "images": 1, "seed": 3});
    let poison = serde_json::json!({"id": "poison", "instruction": "Write one paragraph about owls.", "max_new_tokens": 8, "candidates": 0});
    std::fs::write(&jobs, format!("{long}\n{poison}\n")).unwrap();
    redis.submit(&jobs);
    let mut a = Worker::start(&redis, &out, "doomed", &[]);
    a.wait_for("composing long");
    std::thread::sleep(Duration::from_millis(300));
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(!out.join("long").exists());
    let b = Worker::start(&redis, &out, "survivor", &["--until-empty"]);
    let log = b.finish();
    assert!(log.contains("composing long (try 2, taken over)"), "{log}");
    assert_eq!(stored(std::slice::from_ref(&log)), vec!["long".to_string()], "{log}");
    assert!(complete(&out, "long"));
    assert!(partials(&out).is_empty(), "{:?}", partials(&out));
    let s = redis.status();
    assert_eq!((s["pending"].as_u64(), s["in_flight"].as_u64(), s["done"].as_u64(), s["dead"].as_u64()), (Some(0), Some(0), Some(1), Some(1)));
    let dead = &s["dead_jobs"][0];
    assert_eq!((dead["id"].as_str(), dead["tries"].as_u64()), (Some("poison"), Some(2)));
    assert_eq!(dead["error"], "candidates per slot must be at least 1");
    assert!(!out.join("poison").exists());
}

#[test]
fn redis_restarted_during_a_run_loses_no_job() {
    let _one = serial();
    models();
    let mut redis = Redis::start("restart");
    let dir = temp("restart");
    let (jobs, out) = (jobs_file(&dir, "r", 8, 0), dir.join("out"));
    redis.submit(&jobs);
    let workers: Vec<Worker> = (0..2).map(|i| Worker::start(&redis, &out, &format!("w{i}"), &["--until-empty"])).collect();
    workers[0].wait_for(" stored ");
    redis.restart();
    let logs: Vec<String> = workers.into_iter().map(Worker::finish).collect();
    let mut ids = stored(&logs);
    ids.sort();
    let expected: Vec<String> = (0..8).map(|i| format!("r{i:02}")).collect();
    assert_eq!(ids, expected, "{logs:#?}");
    assert!(expected.iter().all(|id| complete(&out, id)));
    assert_eq!(redis.status()["done"], 8);
}

/// Each id's article as Markdown and as JSON without its timings (which differ run to run).
fn articles(out: &Path, ids: &[String]) -> BTreeMap<String, (String, serde_json::Value)> {
    ids.iter()
        .map(|id| {
            let md = std::fs::read_to_string(out.join(id).join("article.md")).unwrap();
            let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(id).join("article.json")).unwrap()).unwrap();
            json.as_object_mut().unwrap().remove("timings");
            (id.clone(), (md, json))
        })
        .collect()
}

#[test]
fn batch_interrupted_and_resumed_gives_the_uninterrupted_runs_articles() {
    let _one = serial();
    models();
    let dir = temp("batch");
    let jobs = jobs_file(&dir, "b", 6, 1);
    let ids: Vec<String> = (0..6).map(|i| format!("b{i:02}")).collect();
    let batch = |out: &Path| {
        let mut c = xcomposer();
        c.args(["batch", "--workers", "2"]).args(WRITER).arg("--out").arg(out).arg(&jobs);
        c
    };
    let whole = dir.join("whole");
    let o = batch(&whole).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let resumed = dir.join("resumed");
    let child = batch(&resumed).stderr(Stdio::piped()).spawn().unwrap();
    let results = resumed.join("results.jsonl");
    let t = Instant::now();
    while std::fs::read_to_string(&results).map_or(0, |r| r.lines().count()) < 2 {
        assert!(t.elapsed() < Duration::from_secs(600), "no results from the batch");
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("interrupted:"), "{err}");
    let done_first = std::fs::read_to_string(&results).unwrap().lines().count();
    assert!(done_first < 6, "the batch finished before the interrupt: {err}");
    // Nothing partial: every folder there is a whole article.
    assert!(partials(&resumed).is_empty());
    let folders: Vec<String> = ids.iter().filter(|id| resumed.join(id).exists()).cloned().collect();
    assert_eq!(folders.len(), done_first);
    assert!(folders.iter().all(|id| complete(&resumed, id)));

    let o = batch(&resumed).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains(&format!("{done_first} already done")), "{err}");
    assert_eq!(articles(&resumed, &ids), articles(&whole, &ids));
    let o = batch(&resumed).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("6 already done, 0 failed before, 0 to run"));
}

//! A benchmark run: the questions read, each pass asked of an [`Answerer`] (skipping passes
//! already in the predictions file), and the scores computed from the predictions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::answerer::{Answerer, ImageRef};
use crate::error::{BadRows, EvalError, Skipped};
use crate::mmbench::{self, CircularScores, McBench, McQuestion};
use crate::mme::{self, MmeQuestion, MmeScores};
use crate::predictions::{PredictionLog, Record};
use crate::seed::{self, SeedQuestion, SeedScores};
use xcomposer_llm::readers::path_io::AtPath;

/// Which benchmark (MMBench-CN is MMBench's reader and scorer with its own published number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bench {
    /// MME (yes/no, 14 tasks).
    Mme,
    /// MMBench (English).
    Mmbench,
    /// MMBench-CN (Chinese questions, the same English prompt template).
    MmbenchCn,
    /// CCBench (Chinese culture; no l2-category).
    Ccbench,
    /// SEED-Bench, image questions.
    Seed,
}

impl Bench {
    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Bench::Mme => "mme",
            Bench::Mmbench => "mmbench",
            Bench::MmbenchCn => "mmbench-cn",
            Bench::Ccbench => "ccbench",
            Bench::Seed => "seed",
        }
    }

    /// InternLM-XComposer-VL-7B's published headline (MME: perception + cognition; the others:
    /// accuracy in %; MMBench's on its test split).
    pub fn published(self) -> f64 {
        match self {
            Bench::Mme => 1919.5,
            Bench::Mmbench => 74.4,
            Bench::MmbenchCn => 72.4,
            Bench::Ccbench => 47.6,
            Bench::Seed => 66.9,
        }
    }
}

/// Where a benchmark's files are.
#[derive(Debug, Clone)]
pub struct DataPaths {
    /// MME: the images root (task folders); MMBench/CCBench: the TSV; SEED: the image folder.
    pub data: PathBuf,
    /// MME: the task files' folder (`eval_tool/Your_Results`); SEED: `SEED-Bench.json`.
    pub questions: Option<PathBuf>,
}

/// A benchmark's questions, read.
#[derive(Debug, Clone)]
pub enum Dataset {
    /// MME questions with their task file's line numbers.
    Mme(Vec<(usize, MmeQuestion)>),
    /// MMBench/CCBench rows, grouped with their circular copies.
    Mc {
        /// The TSV.
        file: PathBuf,
        /// The rows.
        bench: McBench,
    },
    /// SEED-Bench image questions.
    Seed(Vec<SeedQuestion>),
}

/// One pass to ask: a prompt with its image.
pub struct Pass<'a> {
    /// The id its prediction is stored under.
    pub id: String,
    /// The prompt, with one `<ImageHere>`.
    pub prompt: String,
    /// The same for every pass over one image (encoded once).
    pub image_key: String,
    /// The question it belongs to (a question's circular copies share it).
    pub question: String,
    /// Whether it is ranked by likelihood (SEED) rather than generated.
    pub rank: bool,
    image: ImageSource<'a>,
}

enum ImageSource<'a> {
    File(&'a Path),
    Base64(&'a McQuestion, &'a Path),
}

impl Pass<'_> {
    /// The image, decoded from base64 when the file embeds it.
    pub fn image(&self) -> Result<ImageRef, EvalError> {
        match &self.image {
            ImageSource::File(p) => Ok(ImageRef::File(p.to_path_buf())),
            ImageSource::Base64(q, file) => Ok(ImageRef::Bytes { bytes: q.image(file)?, name: PathBuf::from(format!("{}#{}", file.display(), q.index)) }),
        }
    }
}

/// Scores of any benchmark.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Scores {
    /// MME.
    Mme(MmeScores),
    /// MMBench/CCBench.
    Circular(CircularScores),
    /// SEED-Bench.
    Seed(SeedScores),
}

impl Scores {
    /// The headline number, comparable with [`Bench::published`].
    pub fn headline(&self) -> f64 {
        match self {
            Scores::Mme(s) => s.perception + s.cognition,
            Scores::Circular(s) => s.overall.accuracy * 100.0,
            Scores::Seed(s) => s.overall.accuracy * 100.0,
        }
    }
}

impl Dataset {
    /// Reads `bench`'s files; bad rows are errors, or skipped and returned under `skip_bad`.
    pub fn load(bench: Bench, paths: &DataPaths, skip_bad: bool) -> Result<(Dataset, Vec<Skipped>), EvalError> {
        let mut bad = BadRows { skip_bad, skipped: vec![] };
        let need = |what: &str| paths.questions.clone().ok_or_else(|| EvalError::Unsupported(format!("{} needs {what}", bench.name())));
        let ds = match bench {
            Bench::Mme => {
                let q = paths.questions.clone().unwrap_or_else(|| paths.data.join("eval_tool").join("Your_Results"));
                Dataset::Mme(mme::read(&q, &paths.data, &mut bad)?)
            }
            Bench::Mmbench | Bench::MmbenchCn | Bench::Ccbench => Dataset::Mc { file: paths.data.clone(), bench: mmbench::read(&paths.data, &mut bad)? },
            Bench::Seed => Dataset::Seed(seed::read(&need("--questions SEED-Bench.json")?, &paths.data, &mut bad)?),
        };
        Ok((ds, bad.skipped))
    }

    /// Keeps the first `n` questions, rounded up to whole images (MME) or whole circular groups.
    pub fn limit(&mut self, n: usize) {
        match self {
            Dataset::Mme(qs) => qs.truncate(n.div_ceil(2) * 2),
            Dataset::Mc { bench, .. } => {
                let mut groups = 0;
                let mut last = None;
                bench.rows.retain(|q| {
                    if last != Some(q.group()) {
                        last = Some(q.group());
                        groups += 1;
                    }
                    groups <= n
                });
            }
            Dataset::Seed(qs) => qs.truncate(n),
        }
    }

    /// The passes in run order.
    pub fn passes(&self) -> Vec<Pass<'_>> {
        match self {
            Dataset::Mme(qs) => qs.iter().map(|(line, q)| Pass { id: q.id(*line), prompt: q.prompt(), image_key: format!("{}/{}", q.task, q.image_name), question: q.id(*line), rank: false, image: ImageSource::File(&q.image) }).collect(),
            Dataset::Mc { file, bench } => bench.rows.iter().map(|q| Pass { id: q.index.to_string(), prompt: q.prompt(), image_key: q.group().to_string(), question: q.group().to_string(), rank: false, image: ImageSource::Base64(q, file) }).collect(),
            Dataset::Seed(qs) => qs.iter().map(|q| Pass { id: q.id.clone(), prompt: q.prompt(), image_key: q.image.display().to_string(), question: q.id.clone(), rank: true, image: ImageSource::File(&q.image) }).collect(),
        }
    }

    /// Scores the predictions (by pass id).
    pub fn score(&self, predictions: &BTreeMap<String, String>) -> Scores {
        match self {
            Dataset::Mme(qs) => {
                let items: Vec<(&MmeQuestion, &str)> = qs.iter().map(|(line, q)| (q, predictions.get(&q.id(*line)).map_or("", String::as_str))).collect();
                Scores::Mme(mme::score(&items))
            }
            Dataset::Mc { bench, .. } => {
                let by_index = predictions.iter().filter_map(|(k, v)| k.parse::<i64>().ok().map(|i| (i, v.clone()))).collect();
                Scores::Circular(mmbench::score(&bench.rows, &by_index))
            }
            Dataset::Seed(qs) => Scores::Seed(seed::score(qs, predictions)),
        }
    }

    /// Writes the predictions in the official tools' formats under `dir`; returns the files.
    pub fn write_official(&self, predictions: &BTreeMap<String, String>, dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
        let get = |id: &str| predictions.get(id).map_or("", String::as_str);
        let mut files: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        match self {
            Dataset::Mme(qs) => {
                for (line, q) in qs {
                    files.entry(dir.join("mme").join(format!("{}.txt", q.task))).or_default().push(mme::official_line(q, get(&q.id(*line))));
                }
            }
            Dataset::Mc { bench, .. } => {
                let rows = bench.rows.iter().map(|q| mmbench::official_row(q, get(&q.index.to_string())));
                files.insert(dir.join("mmbench_predictions.tsv"), std::iter::once(mmbench::OFFICIAL_HEADER.to_string()).chain(rows).collect());
            }
            Dataset::Seed(qs) => {
                files.insert(dir.join("seed_predictions.jsonl"), qs.iter().filter(|q| predictions.contains_key(&q.id)).map(|q| seed::official_line(q, get(&q.id))).collect());
            }
        }
        for (path, lines) in &files {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).at(parent)?;
            }
            std::fs::write(path, lines.join("\n") + "\n").at(path)?;
        }
        Ok(files.into_keys().collect())
    }
}

/// How a run went.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct RunStats {
    /// Passes answered in this run.
    pub answered: usize,
    /// Passes found in the predictions file (`--resume`).
    pub resumed: usize,
    /// Seconds spent answering.
    pub seconds: f64,
    /// Passes answered per second.
    pub passes_per_second: f64,
    /// Questions with a pass answered in this run (a question's rotations count once).
    pub questions: usize,
    /// Those questions per second.
    pub questions_per_second: f64,
}

/// Asks every pass not yet in `log`, appending each answer as it comes; `progress` sees
/// `(done, total)` after each.
pub fn run(dataset: &Dataset, answerer: &mut dyn Answerer, log: &mut PredictionLog, progress: &mut dyn FnMut(usize, usize)) -> Result<RunStats, EvalError> {
    let passes = dataset.passes();
    let resumed = passes.iter().filter(|p| log.records.contains_key(&p.id)).count();
    let start = Instant::now();
    let mut answered = 0;
    let mut questions = std::collections::BTreeSet::new();
    for pass in &passes {
        if log.records.contains_key(&pass.id) {
            continue;
        }
        let t = Instant::now();
        let image = || pass.image();
        let record = if pass.rank {
            let losses = answerer.rank(&pass.prompt, &pass.image_key, &image, &seed::CANDIDATES)?;
            let letter = seed::CANDIDATES[seed::argmin(&losses)][..1].to_string();
            Record { id: pass.id.clone(), prediction: letter, sequence: vec![], losses, seconds: 0.0 }
        } else {
            let g = answerer.generate(&pass.prompt, &pass.image_key, &image)?;
            Record { id: pass.id.clone(), prediction: g.text, sequence: g.sequence, losses: vec![], seconds: 0.0 }
        };
        log.append(Record { seconds: t.elapsed().as_secs_f64(), ..record })?;
        answered += 1;
        questions.insert(pass.question.as_str());
        progress(resumed + answered, passes.len());
    }
    let seconds = start.elapsed().as_secs_f64();
    let rate = |n: usize| if seconds > 0.0 { n as f64 / seconds } else { 0.0 };
    Ok(RunStats { answered, resumed, seconds, passes_per_second: rate(answered), questions: questions.len(), questions_per_second: rate(questions.len()) })
}

/// Whether every pass already has a prediction (then no model is needed).
pub fn all_answered(dataset: &Dataset, log: &PredictionLog) -> bool {
    dataset.passes().iter().all(|p| log.records.contains_key(&p.id))
}

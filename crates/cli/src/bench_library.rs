//! `xcomposer bench library`: indexing throughput on the default library (decode, tagger and
//! embedder apart and together) and search latency over large synthetic indexes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::backend::Flex;
use rand::{Rng, SeedableRng};
use xcomposer_llm::fetch;
use xcomposer_retrieval::library::{ImageLibrary, IndexedImage, Indexer, TOP_TAGS};
use xcomposer_retrieval::scorer::{METADATA_FEATURE, TAG_FEATURE};
use xcomposer_retrieval::{EmbeddingScorer, default_library};
use xcomposer_vision::ImageInput;

use crate::bench::median;

/// Arguments of `xcomposer bench library`.
#[derive(clap::Args)]
pub struct LibraryBenchArgs {
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Synthetic index sizes for the search measurement.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sizes: Vec<usize>,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// Runs the benchmark and prints its table.
pub fn run(args: LibraryBenchArgs) -> Result<()> {
    if args.runs == 0 || args.threads.contains(&0) || args.threads.is_empty() {
        bail!("--runs and --threads must be positive");
    }
    let models = fetch::models_dir();
    let dir = default_library::ensure(&models, &mut |m| eprintln!("[models] {m}"))?;
    let device = Default::default();
    let indexer = Indexer::<Flex>::load_default(&models, &device, &mut |m| eprintln!("[models] {m}")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let files: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x != "json")).collect();
    let n = files.len();
    let mut rows: Vec<(String, Vec<String>)> = vec![];
    let mut cols = vec![];
    for &t in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
        let m = pool.install(|| measure_index(&indexer, &dir, &files, args.runs))?;
        cols.push(m);
    }
    let row = |name: &str, f: &dyn Fn(&IndexTimes) -> String| (name.to_string(), cols.iter().map(f).collect());
    rows.push(row("index from scratch (decode + tag + embed + save), images/s", &|m| format!("{:.1}", n as f64 / m.full)));
    rows.push(row("  decode + preprocess, ms/image", &|m| format!("{:.1}", m.decode * 1e3 / n as f64)));
    rows.push(row("  EfficientNet-Lite0 (batch 8), ms/image", &|m| format!("{:.1}", m.tag * 1e3 / n as f64)));
    rows.push(row("  MiniLM (label and metadata texts), ms/image", &|m| format!("{:.1}", m.embed * 1e3 / n as f64)));
    rows.push(row("re-index, nothing changed, ms", &|m| format!("{:.0}", m.reindex * 1e3)));
    let emb = indexer.embedder.clone();
    for &size in &args.sizes {
        let lib = synthetic(size, emb.dim());
        let scorer = EmbeddingScorer::hybrid(Arc::clone(&emb));
        let mut cells = vec![];
        for &t in &args.threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
            let times: Vec<f64> = (0..args.runs.max(3))
                .map(|i| {
                    let q = format!("a cup of espresso on a table {i}");
                    let t0 = Instant::now();
                    pool.install(|| lib.search(&scorer, &[q.as_str()], 4)).expect("search");
                    t0.elapsed().as_secs_f64()
                })
                .collect();
            cells.push(format!("{:.1}", median(times) * 1e3));
        }
        rows.push((format!("search {size} images (embed query + hybrid score + top 4), ms"), cells));
    }
    println!("default library: {n} photos in {}; median of {} runs", dir.display(), args.runs);
    println!();
    let head: Vec<String> = args.threads.iter().map(|t| format!("{t} thread{}", if *t == 1 { "" } else { "s" })).collect();
    println!("| measure | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(head.len()));
    for (name, cells) in rows {
        println!("| {name} | {} |", cells.join(" | "));
    }
    if let Some(p) = crate::backend::peak_rss_mib() {
        println!();
        println!("peak resident memory: {p:.0} MiB");
    }
    Ok(())
}

struct IndexTimes {
    full: f64,
    decode: f64,
    tag: f64,
    embed: f64,
    reindex: f64,
}

fn measure_index(indexer: &Indexer<Flex>, dir: &Path, files: &[std::path::PathBuf], runs: usize) -> Result<IndexTimes> {
    use rayon::prelude::*;
    let tmp = std::env::temp_dir().join(format!("xcomposer-bench-index-{}", std::process::id()));
    let mut full = vec![];
    let mut reindex = vec![];
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(&tmp);
        let t0 = Instant::now();
        ImageLibrary::index(dir, Some(&tmp), indexer, &mut |_| {})?;
        full.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        ImageLibrary::index(dir, Some(&tmp), indexer, &mut |_| {})?;
        reindex.push(t0.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&tmp);
    // The stages apart.
    let t0 = Instant::now();
    let pixels: Vec<Vec<f32>> = files
        .par_iter()
        .map(|p| {
            let d = ImageInput::default().open(p).expect("library photo");
            indexer.tagger.preprocess().apply(&d.rgb)
        })
        .collect();
    let decode = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut tags = vec![];
    for chunk in pixels.chunks(8) {
        tags.extend(indexer.tagger.tag_preprocessed(chunk, TOP_TAGS));
    }
    let tag = t0.elapsed().as_secs_f64();
    let texts: Vec<String> = tags.iter().flat_map(|t| t.tags.iter().map(|g| g.label.clone())).chain(files.iter().map(|f| format!("A photo named {}", f.display()))).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    indexer.embedder.embed(&refs)?;
    let embed = t0.elapsed().as_secs_f64();
    Ok(IndexTimes { full: median(full), decode, tag, embed, reindex: median(reindex) })
}

/// A library of `n` entries with random unit feature rows (speed does not depend on values).
fn synthetic(n: usize, dim: usize) -> ImageLibrary {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut rows = |count: usize| {
        let mut v: Vec<f32> = (0..count * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        for r in v.chunks_mut(dim) {
            xcomposer_retrieval::embedder::normalize(r);
        }
        v
    };
    let tags = rows(n);
    let meta = rows(n);
    let images = (0..n)
        .map(|i| IndexedImage {
            path: format!("synthetic/{i:06}.jpg"),
            sha256: String::new(),
            bytes: 0,
            width: 1,
            height: 1,
            tags: vec![],
            exif_description: None,
            metadata_text: None,
            metadata_sources: vec![],
            rows: BTreeMap::from([(TAG_FEATURE.to_string(), i as u32), (METADATA_FEATURE.to_string(), i as u32)]),
        })
        .collect();
    ImageLibrary::from_parts(Path::new("synthetic"), images, BTreeMap::from([(TAG_FEATURE.to_string(), (dim, tags)), (METADATA_FEATURE.to_string(), (dim, meta))]))
}

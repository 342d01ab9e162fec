//! The default library with the real models: EfficientNet-Lite0 against the reference's golden
//! top-5, retrieval quality over written queries, and incremental re-indexing.

#[path = "../../llm/tests/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use burn::backend::Flex;
use xcomposer_retrieval::library::{ImageLibrary, Indexer};
use xcomposer_retrieval::{EmbeddingScorer, Scorer, default_library};
use xcomposer_vision::ImageInput;

fn models() -> PathBuf {
    xcomposer_llm::fetch::models_dir()
}

fn library_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| default_library::ensure(&models(), &mut |m| eprintln!("[fetch] {m}")).expect("fetching the default library"))
}

fn indexer() -> &'static Indexer<Flex> {
    static IX: OnceLock<Indexer<Flex>> = OnceLock::new();
    IX.get_or_init(|| Indexer::load_default(&models(), &Default::default(), &mut |m| eprintln!("[fetch] {m}")).expect("loading the default models"))
}

fn indexed_library() -> &'static ImageLibrary {
    static LIB: OnceLock<ImageLibrary> = OnceLock::new();
    LIB.get_or_init(|| {
        // A private index folder, so that parallel tests never race on the shared one.
        let index = std::env::temp_dir().join(format!("xcomposer-default-index-{}", std::process::id()));
        let (lib, report) = ImageLibrary::index(library_dir(), Some(&index), indexer(), &mut |_| {}).unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        lib
    })
}

/// Every golden class has our probability within 0.01, and any class of our top 5 that the golden
/// top 5 lacks is a near-tie (its probability within 0.01 of the golden 5th). Our JPEG decoder
/// (zune-jpeg) differs from Pillow's libjpeg-turbo by ≈0.1 level on average, which can swap two
/// classes tied at 0.006 in 5th place; the count of identical top-5 lists is reported.
#[test]
fn efficientnet_matches_the_golden_top5() {
    let golden = std::fs::read_to_string(common::fixture("../reference/efficientnet").join("golden_top5.txt")).unwrap();
    let tagger = &indexer().tagger;
    let (mut worst, mut n, mut identical) = (0f32, 0, 0);
    for line in golden.lines().filter(|l| !l.trim().is_empty()) {
        let (file, rest) = line.split_once(' ').unwrap();
        let img = ImageInput::pil_compatible().open(&library_dir().join(file)).unwrap();
        let t = &tagger.tag(&[&img.rgb], 5)[0];
        let want: Vec<(usize, &str, f32)> = rest
            .split(" | ")
            .map(|w| {
                let (idx, tail) = w.split_once(':').unwrap();
                let (name, p) = tail.rsplit_once(' ').unwrap();
                (idx.parse().unwrap(), name, p.parse().unwrap())
            })
            .collect();
        for &(idx, name, p) in &want {
            assert_eq!(tagger.labels().name(idx), name, "label {idx}");
            let err = (t.probabilities[idx] - p).abs();
            worst = worst.max(err);
            assert!(err <= 0.01, "{file}: {name} probability {} vs {p}", t.probabilities[idx]);
        }
        let fifth = want[4].2;
        for g in &t.tags {
            if !want.iter().any(|w| w.0 == g.index) {
                assert!(g.probability <= fifth + 0.01, "{file}: {} ({}) is not in the golden top 5", g.label, g.probability);
                eprintln!("{file}: {} {:.4} in our top 5 instead of a near-tied golden class", g.label, g.probability);
            }
        }
        identical += usize::from(t.tags.iter().map(|g| g.index).eq(want.iter().map(|w| w.0)));
        n += 1;
    }
    assert_eq!(n, 13);
    eprintln!("{n} photos: {identical} top-5 lists identical in order, probabilities max-abs {worst:.4}");
}

/// (query, the photo it describes in other words)
const QUERIES: [(&str, &str); 24] = [
    ("a kitten", "chelsea.png"),
    ("espresso", "coffee.png"),
    ("space launch", "rocket.jpg"),
    ("a woman in a spacesuit", "astronaut.png"),
    ("a flower in bloom", "flower.jpg"),
    ("a motorbike", "motorcycle_left.png"),
    ("galaxies in deep space", "hubble_deep_field.jpg"),
    ("a photographer with a tripod", "camera.png"),
    ("ancient money", "coins.png"),
    ("craters on the lunar surface", "moon.png"),
    ("a wall of bricks", "brick.png"),
    ("a lawn", "grass.png"),
    ("small pebbles", "gravel.png"),
    ("a Chinese temple", "china.jpg"),
    ("a computer pioneer in naval uniform", "grace_hopper.jpg"),
    ("a puppy next to a bike", "dog.jpg"),
    ("a bird of prey", "eagle.jpg"),
    ("a giraffe on the savanna", "giraffe.jpg"),
    ("horses grazing in a meadow", "horses.jpg"),
    ("kites flying at the seaside", "kite.jpg"),
    ("a woman with her animals on a farm", "person.jpg"),
    ("an expressionist painting of anguish", "scream.jpg"),
    ("a hot drink in a cup", "coffee.png"),
    ("a pet cat", "chelsea.png"),
];

fn ranks(lib: &ImageLibrary, scorer: &dyn Scorer) -> Vec<usize> {
    let captions: Vec<&str> = QUERIES.iter().map(|q| q.0).collect();
    let hits = lib.search(scorer, &captions, lib.len()).unwrap();
    QUERIES.iter().zip(hits).map(|((_, want), h)| h.iter().position(|h| h.path == *want).map_or(usize::MAX, |p| p + 1)).collect()
}

#[test]
fn queries_in_other_words_find_their_photo() {
    let lib = indexed_library();
    assert_eq!(lib.len(), 23);
    let emb = indexer().embedder.clone();
    let mut table = String::from("| scorer | top-1 | top-3 |\n|---|---|---|\n");
    let mut hybrid_ranks = vec![];
    for (name, tags, meta) in [("tags (ConSE)", 1.0, 0.0), ("metadata", 0.0, 1.0), ("hybrid 0.5/0.5", 0.5, 0.5)] {
        let scorer = EmbeddingScorer::weighted(Arc::clone(&emb), tags, meta);
        let r = ranks(lib, &scorer);
        let top1 = r.iter().filter(|&&x| x == 1).count();
        let top3 = r.iter().filter(|&&x| x <= 3).count();
        table += &format!("| {name} | {top1}/{n} | {top3}/{n} |\n", n = r.len());
        for ((q, want), rank) in QUERIES.iter().zip(&r) {
            if *rank > 1 {
                eprintln!("{name}: {q:?} → {want} at rank {rank}");
            }
        }
        if meta > 0.0 && tags > 0.0 {
            hybrid_ranks = r;
        }
    }
    eprintln!("{table}");
    // The five queries the issue names rank their photo first with the default scorer.
    for i in 0..5 {
        assert_eq!(hybrid_ranks[i], 1, "{:?} should find {}", QUERIES[i].0, QUERIES[i].1);
    }
    let top3 = hybrid_ranks.iter().filter(|&&x| x <= 3).count();
    assert!(top3 >= 20, "hybrid top-3 {top3}/{}", QUERIES.len());
}

fn copy(name: &str, to: &Path) {
    std::fs::copy(library_dir().join(name), to).unwrap();
}

#[test]
fn reindexing_processes_only_changed_files() {
    let root = std::env::temp_dir().join(format!("xcomposer-incremental-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("sub")).unwrap();
    copy("coffee.png", &root.join("coffee.png"));
    copy("chelsea.png", &root.join("sub/cat.png"));
    copy("rocket.jpg", &root.join("launch.jpg"));
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    let (lib, r) = ImageLibrary::index(&root, None, indexer(), &mut |_| {}).unwrap();
    assert_eq!((lib.len(), r.processed.len(), r.unchanged), (3, 3, 0));
    assert_eq!(lib.images()[1].path, "launch.jpg");
    assert_eq!(lib.images()[0].tags[0].label, "espresso");

    // Add one, change one, delete one, add a corrupt one; also move one (same content).
    copy("flower.jpg", &root.join("sub/flower.jpg"));
    copy("eagle.jpg", &root.join("launch.jpg"));
    std::fs::remove_file(root.join("coffee.png")).unwrap();
    std::fs::write(root.join("broken.jpg"), b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
    std::fs::rename(root.join("sub/cat.png"), root.join("chelsea.png")).unwrap();
    let (lib, r) = ImageLibrary::index(&root, None, indexer(), &mut |_| {}).unwrap();
    let mut processed = r.processed.clone();
    processed.sort();
    assert_eq!(processed, ["launch.jpg", "sub/flower.jpg"]);
    assert_eq!(r.unchanged, 1, "the moved cat is reused by content hash");
    assert_eq!(r.removed, ["coffee.png", "sub/cat.png"]);
    assert_eq!(r.skipped.len(), 1);
    assert!(r.skipped[0].0 == "broken.jpg" && r.skipped[0].1.contains("broken.jpg"), "{:?}", r.skipped);
    let paths: Vec<&str> = lib.images().iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["chelsea.png", "launch.jpg", "sub/flower.jpg"]);
    assert_eq!(lib.images()[1].tags[0].label, "kite", "launch.jpg now holds the eagle");

    // Nothing changed: nothing processed; the saved index reopens with the same entries.
    let (_, r) = ImageLibrary::index(&root, None, indexer(), &mut |_| {}).unwrap();
    assert_eq!((r.processed.len(), r.unchanged), (0, 3));
    let reopened = ImageLibrary::open(&root, None).unwrap();
    assert_eq!(reopened.images(), lib.images());

    // An index built with other models is refused with a re-index message.
    let idx = root.join(".xcomposer/index.json");
    let original = std::fs::read_to_string(&idx).unwrap();
    std::fs::write(&idx, original.replace("efficientnet-lite0@", "efficientnet-lite0@older-")).unwrap();
    let e = ImageLibrary::open_for(&root, None, &xcomposer_retrieval::library::ModelIds::default_models()).unwrap_err().to_string();
    assert!(e.contains("built with efficientnet-lite0@older-") && e.contains("re-index with `xcomposer index"), "{e}");
    std::fs::write(&idx, original).unwrap();

    // An index from another format version is refused with a re-index message.
    let text = std::fs::read_to_string(&idx).unwrap().replace("\"version\": 1", "\"version\": 99");
    std::fs::write(&idx, text).unwrap();
    let e = ImageLibrary::open(&root, None).unwrap_err().to_string();
    assert!(e.contains("version 99") && e.contains("re-index with `xcomposer index"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

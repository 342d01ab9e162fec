//! Prints one Markdown table row per saved article: paragraphs, images, spotter fallbacks,
//! meta-talk sentences and repeated sentences left (by `cleanup`'s rules), writer seconds.
//!
//! `cargo run -p xcomposer-composer --example article_quality -- DIR/article.json …`

use xcomposer_composer::Source;
use xcomposer_composer::cleanup::{count_meta_talk, count_repeated_sentences};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("| article | paragraphs | images | spotter fallback | meta-talk left | repeated sentences | writer s | total s |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|");
    for path in std::env::args().skip(1) {
        let a = xcomposer_composer::Article::load(path.as_ref())?;
        let fallback = if a.spotting.by == Source::Fallback { "yes" } else { "no" };
        let writer = a.timings.iter().find(|t| t.stage == "writer").map_or(0.0, |t| t.seconds);
        let total: f64 = a.timings.iter().map(|t| t.seconds).sum();
        println!(
            "| {} | {} | {} | {fallback} | {} | {} | {writer:.1} | {total:.1} |",
            a.title,
            a.paragraphs.len(),
            a.images.len(),
            count_meta_talk(&a.paragraphs),
            count_repeated_sentences(&a.paragraphs)
        );
    }
    Ok(())
}

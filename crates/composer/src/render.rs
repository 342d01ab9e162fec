//! Renderers: the article as CommonMark ([`markdown`]), as a standalone HTML page ([`html`],
//! through pulldown-cmark) and as JSON, and [`write`], which puts them and copies of the images
//! into an output folder and checks that every image link resolves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, Parser, Tag};
use xcomposer_llm::fetch::write_atomic;

use crate::article::Article;
use crate::error::ComposeError;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// `article.md`.
    Markdown,
    /// `article.html`.
    Html,
    /// `article.json` (needed by `edit`).
    Json,
}

impl Format {
    /// The file the format is written to.
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Markdown => "article.md",
            Format::Html => "article.html",
            Format::Json => "article.json",
        }
    }

    /// Parses a comma-separated list such as `md,html,json`.
    pub fn parse_list(s: &str) -> Result<Vec<Format>, String> {
        let mut out: Vec<Format> = s.split(',').map(str::trim).filter(|f| !f.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(format!("{s:?}: expected a list of md, html, json"));
        }
        Ok(out)
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "md" | "markdown" => Ok(Format::Markdown),
            "html" => Ok(Format::Html),
            "json" => Ok(Format::Json),
            other => Err(format!("format {other:?}: expected md, html or json")),
        }
    }
}

/// Backslash-escapes the characters that would change the meaning of `s` in Markdown text.
fn escape_md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '!' | '|' | '~') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The article as CommonMark: `# title`, the paragraphs, and after a paragraph with an image
/// `![caption](assets/NAME "caption")` with the caption in italics under it.
pub fn markdown(article: &Article) -> String {
    let mut out = format!("# {}\n\n", escape_md(&article.title));
    for (i, p) in article.paragraphs.iter().enumerate() {
        out.push_str(p);
        out.push_str("\n\n");
        if let Some(slot) = article.slot_after(i).map(|s| &article.images[s])
            && let Some(c) = slot.image()
        {
            let link = slot.asset.clone().unwrap_or_else(|| c.path.display().to_string());
            let title = slot.caption.replace('\\', "\\\\").replace('"', "\\\"");
            let safe = link.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
            let dest = if safe { link } else { format!("<{}>", link.replace('<', "%3C").replace('>', "%3E")) };
            out.push_str(&format!("![{}]({dest} \"{title}\")\n*{}*\n\n", escape_md(&slot.caption), escape_md(&slot.caption)));
        }
    }
    out
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The article as a standalone HTML page (raw HTML in the text is shown as text, not run).
pub fn html(article: &Article) -> String {
    let md = markdown(article);
    let events = Parser::new(&md).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        e => e,
    });
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events);
    format!(
        "<!DOCTYPE html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<meta name=\"generator\" content=\"xcomposer\">\n<title>{}</title>\n<style>\nbody {{ max-width: 46rem; margin: 2rem auto; padding: 0 1rem; font: 1.05rem/1.6 Georgia, serif; color: #222; }}\nimg {{ display: block; max-width: 100%; max-height: 32rem; margin: 1.5rem auto 0.3rem; }}\nimg + br + em, p > em:only-child {{ display: block; text-align: center; color: #555; font-size: 0.95rem; }}\n</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        article.language.code(),
        escape_html(&article.title)
    )
}

/// The image links (destinations) of a Markdown text.
pub fn image_links(markdown: &str) -> Vec<String> {
    Parser::new(markdown)
        .filter_map(|e| match e {
            Event::Start(Tag::Image { dest_url, .. }) => Some(dest_url.to_string()),
            _ => None,
        })
        .collect()
}

/// A safe file name for slot `index`'s copy of `source`: `01-name.ext`, lower-case ASCII.
pub fn asset_name(index: usize, source: &Path) -> String {
    let stem = source.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let mut slug = String::new();
    for c in stem.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_end_matches('-').chars().take(40).collect();
    let slug = if slug.is_empty() { "image".to_string() } else { slug };
    let ext = source.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).filter(|e| e.chars().all(|c| c.is_ascii_alphanumeric()) && !e.is_empty()).unwrap_or_else(|| "img".into());
    format!("{:02}-{slug}.{ext}", index + 1)
}

/// The files [`write`] produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// The output folder.
    pub dir: PathBuf,
    /// The article files, in the order of the formats.
    pub files: Vec<PathBuf>,
    /// The copied images.
    pub assets: Vec<PathBuf>,
}

/// The folder images are copied into, inside the output folder.
pub const ASSETS_DIR: &str = "assets";

/// Writes the article into `dir`: the images copied into `dir/assets/` (each slot's `asset`
/// set), then each format's file. An existing non-empty folder is refused unless `replace`;
/// with `replace`, the article files and the images a previous `article.json` there had copied
/// are replaced, and nothing else in the folder is touched. Every image link is checked to
/// resolve to a file inside `dir` before returning.
pub fn write(article: &mut Article, dir: &Path, formats: &[Format], replace: bool) -> Result<Written, ComposeError> {
    if formats.is_empty() {
        return Err(ComposeError::BadRequest("no output format chosen".into()));
    }
    if dir.exists() {
        if !dir.is_dir() {
            return Err(ComposeError::io(dir, "exists and is not a folder"));
        }
        let non_empty = std::fs::read_dir(dir).map_err(|e| ComposeError::io(dir, e))?.next().is_some();
        if non_empty && !replace {
            return Err(ComposeError::OutputExists(dir.into()));
        }
    }
    let assets_dir = dir.join(ASSETS_DIR);
    std::fs::create_dir_all(&assets_dir).map_err(|e| ComposeError::io(&assets_dir, e))?;
    // Images a previous render here copied (removed below if no longer used).
    let previous: BTreeSet<String> = Article::load(&dir.join(Format::Json.file_name()))
        .map(|a| a.images.into_iter().filter_map(|s| s.asset).collect())
        .unwrap_or_default();

    let mut assets = Vec::new();
    for (i, slot) in article.images.iter_mut().enumerate() {
        let Some(source) = slot.image().map(|c| c.path.clone()) else { continue };
        let name = asset_name(i, &source);
        let target = assets_dir.join(&name);
        let tmp = assets_dir.join(format!(".{name}.tmp"));
        std::fs::copy(&source, &tmp).map_err(|e| ComposeError::io(&source, format!("copying the image for slot {i}: {e}")))?;
        std::fs::rename(&tmp, &target).map_err(|e| ComposeError::io(&target, e))?;
        slot.asset = Some(format!("{ASSETS_DIR}/{name}"));
        assets.push(target);
    }
    let md = markdown(article);
    let md_path = dir.join(Format::Markdown.file_name());
    for link in image_links(&md) {
        let resolves = !link.contains("://") && !Path::new(&link).is_absolute() && !link.split('/').any(|c| c == "..") && dir.join(&link).is_file();
        if !resolves {
            return Err(ComposeError::BrokenLink { output: md_path, link });
        }
    }
    let mut files = Vec::new();
    for f in formats {
        let path = dir.join(f.file_name());
        let text = match f {
            Format::Markdown => md.clone(),
            Format::Html => html(article),
            Format::Json => article.to_json(),
        };
        write_atomic(&path, text.as_bytes()).map_err(|e| ComposeError::io(&path, e))?;
        files.push(path);
    }
    let current: BTreeSet<String> = article.images.iter().filter_map(|s| s.asset.clone()).collect();
    for stale in previous.difference(&current) {
        if stale.starts_with(&format!("{ASSETS_DIR}/")) && !stale.contains("..") {
            let _ = std::fs::remove_file(dir.join(stale));
        }
    }
    Ok(Written { dir: dir.into(), files, assets })
}

//! Renderers: the article as CommonMark ([`markdown`]), as a standalone HTML page ([`html`],
//! through pulldown-cmark) and as JSON, and [`write`], which puts them and copies of the images
//! into an output folder and checks that every image link resolves.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, Parser, Tag};

use xcomposer_llm::fetch::replace_file;
use xcomposer_llm::readers::path_io::AtPath;

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

/// Whether a link may stand in the HTML page: http, https, mailto or relative. The scheme is
/// read as a browser does, ignoring leading spaces and control characters and any tab or
/// newline, case-insensitively, so `javascript:`, `data:`, `vbscript:` and the like are refused.
fn safe_url(url: &str) -> bool {
    let url: String = url.trim_start_matches(|c: char| c <= ' ').chars().filter(|c| !matches!(c, '\t' | '\n' | '\r')).collect();
    match url.find([':', '/', '?', '#']) {
        Some(at) if url[at..].starts_with(':') => ["http", "https", "mailto"].iter().any(|s| url[..at].eq_ignore_ascii_case(s)),
        _ => true,
    }
}

/// The article as a standalone HTML page (raw HTML in the text is shown as text, not run;
/// links other than http, https, mailto and relative ones lead nowhere, and an image shows only
/// when its source is one of the article's own copies, `assets/NAME` of a slot).
pub fn html(article: &Article) -> String {
    let md = markdown(article);
    let assets: BTreeSet<&str> = article.images.iter().filter_map(|s| s.asset.as_deref()).filter(|a| asset_file(a).is_some()).collect();
    let events = Parser::new(&md).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) if !safe_url(&dest_url) => Event::Start(Tag::Link { link_type, dest_url: "#".into(), title, id }),
        Event::Start(Tag::Image { link_type, dest_url, title, id }) if !assets.contains(&*dest_url) => Event::Start(Tag::Image { link_type, dest_url: "".into(), title, id }),
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
    /// Names the previous `article.json` gave as copies that are not files inside `assets/`:
    /// left alone, not deleted.
    pub left_alone: Vec<String>,
}

/// The folder images are copied into, inside the output folder.
pub const ASSETS_DIR: &str = "assets";

/// Writes the article into `dir`: the images copied into `dir/assets/` (each slot's `asset`
/// set), then each format's file. An existing non-empty folder is refused unless `replace`;
/// with `replace`, the article files and the images a previous `article.json` there had copied
/// are replaced, and nothing else in the folder is touched. Every image link is checked to
/// resolve to a file inside `dir` before returning.
///
/// The article may have been read from a file someone else wrote, so the chosen image of each
/// slot is copied only if it is a regular file (after following links) inside `dir` or inside
/// one of `image_roots`, the libraries this run searched (the CLI passes the library it opened;
/// a library caller passes [`Composer::image_roots`](crate::Composer::image_roots) or its own
/// folders); otherwise nothing is written and the error names the article's field and the path.
/// Files are written under an unpredictable temporary name created exclusively, then renamed
/// into place, so a symlink at either name is replaced, never written through. Copies the
/// previous `article.json` named and that are no longer used are deleted only if they are files
/// directly inside `dir/assets/`; other names are left alone and listed in
/// [`Written::left_alone`].
pub fn write(article: &mut Article, dir: &Path, formats: &[Format], replace: bool, image_roots: &[PathBuf]) -> Result<Written, ComposeError> {
    if formats.is_empty() {
        return Err(ComposeError::BadRequest("no output format chosen".into()));
    }
    check_output_dir(dir, replace)?;
    let sources = image_sources(article, dir, image_roots)?;
    let assets_dir = assets_folder(dir)?;
    // Images a previous render here copied (removed below if no longer used).
    let previous: BTreeSet<String> = Article::load(&dir.join(Format::Json.file_name()))
        .map(|a| a.images.into_iter().filter_map(|s| s.asset).collect())
        .unwrap_or_default();

    let mut assets = Vec::new();
    for (i, source) in sources {
        let name = asset_name(i, &article.images[i].image().expect("checked").path);
        let target = assets_dir.join(&name);
        copy_image(&source, &target).map_err(|e| ComposeError::io(&source, format!("copying the image for slot {i} to {}: {e}", target.display())))?;
        article.images[i].asset = Some(format!("{ASSETS_DIR}/{name}"));
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
        replace_file(&path, |file| file.write_all(text.as_bytes())).at(&path)?;
        files.push(path);
    }
    let current: BTreeSet<String> = article.images.iter().filter_map(|s| s.asset.clone()).collect();
    let left_alone = remove_stale(&assets_dir, previous.difference(&current));
    Ok(Written { dir: dir.into(), files, assets, left_alone })
}

/// Refuses a `dir` that is not a folder, or is a non-empty one without `replace`.
fn check_output_dir(dir: &Path, replace: bool) -> Result<(), ComposeError> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(ComposeError::io(dir, "exists and is not a folder"));
        }
        let non_empty = std::fs::read_dir(dir).at(dir)?.next().is_some();
        if non_empty && !replace {
            return Err(ComposeError::OutputExists(dir.into()));
        }
    }
    Ok(())
}

/// Creates `dir/assets`, refusing one that is a symlink (copies would land elsewhere).
fn assets_folder(dir: &Path) -> Result<PathBuf, ComposeError> {
    let assets_dir = dir.join(ASSETS_DIR);
    std::fs::create_dir_all(&assets_dir).at(&assets_dir)?;
    let meta = std::fs::symlink_metadata(&assets_dir).at(&assets_dir)?;
    if !meta.is_dir() {
        return Err(ComposeError::io(&assets_dir, "is a symlink or not a folder; expected the article's own assets folder"));
    }
    Ok(assets_dir)
}

/// The real path of each slot's chosen image, checked by [`image_source`]; errors name the field.
fn image_sources(article: &Article, dir: &Path, roots: &[PathBuf]) -> Result<Vec<(usize, PathBuf)>, ComposeError> {
    let allowed: Vec<PathBuf> = std::iter::once(dir).chain(roots.iter().map(PathBuf::as_path)).filter_map(|r| r.canonicalize().ok()).collect();
    let mut out = Vec::new();
    for (i, slot) in article.images.iter().enumerate() {
        let Some(c) = slot.image() else { continue };
        let real = image_source(&c.path, &allowed).map_err(|reason| ComposeError::UnsafeImage {
            article: dir.join(Format::Json.file_name()),
            field: format!("images[{i}].candidates[{}].path", slot.chosen),
            path: c.path.clone(),
            reason,
        })?;
        out.push((i, real));
    }
    Ok(out)
}

/// `path` with its links followed, if that is a regular file inside one of `allowed` (real paths).
fn image_source(path: &Path, allowed: &[PathBuf]) -> Result<PathBuf, String> {
    let real = path.canonicalize().map_err(|e| format!("which cannot be read ({e})"))?;
    if !allowed.iter().any(|r| real.starts_with(r)) {
        let roots: Vec<String> = allowed.iter().map(|r| r.display().to_string()).collect();
        return Err(format!("which is outside the article's folder and the image library ({}); only images from there are copied", roots.join(", ")));
    }
    match std::fs::metadata(&real) {
        Ok(m) if m.is_file() => Ok(real),
        Ok(_) => Err("which is not a regular file (a folder, FIFO or device); expected an image file".into()),
        Err(e) => Err(format!("which cannot be read ({e})")),
    }
}

/// Copies the regular file `source` to `target` through [`replace_file`].
fn copy_image(source: &Path, target: &Path) -> std::io::Result<()> {
    let mut from = std::fs::File::open(source)?;
    if !from.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    replace_file(target, |to| std::io::copy(&mut from, to).map(drop))
}

/// Deletes each `assets/NAME` in `stale` that is a file directly inside `assets_dir`; returns
/// the names that are not (absolute, `..`, deeper paths, other folders), which are left alone.
fn remove_stale<'a>(assets_dir: &Path, stale: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut left_alone = Vec::new();
    for name in stale {
        match stale_asset(assets_dir, name) {
            Some(Some(path)) => {
                let _ = std::fs::remove_file(path);
            }
            Some(None) => {}
            None => left_alone.push(name.clone()),
        }
    }
    left_alone
}

/// `FILE` of a name `assets/FILE` (exactly two plain components, no backslash); `None` otherwise.
fn asset_file(name: &str) -> Option<&std::ffi::OsStr> {
    use std::path::Component::Normal;
    let mut parts = Path::new(name).components();
    let (Some(Normal(folder)), Some(Normal(file)), None) = (parts.next(), parts.next(), parts.next()) else { return None };
    (folder == ASSETS_DIR && !name.contains('\\')).then_some(file)
}

/// For `assets/FILE`: the file to delete, or `Some(None)` when it is already gone; `None` for
/// any other name or for something there that is not a file or a link.
fn stale_asset(assets_dir: &Path, name: &str) -> Option<Option<PathBuf>> {
    let path = assets_dir.join(asset_file(name)?);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() || m.is_symlink() => Some(Some(path)),
        Ok(_) => None,
        Err(_) => Some(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn article(paragraphs: &[&str]) -> Article {
        let json = serde_json::json!({
            "format": "xcomposer-article", "version": 1, "instruction": "x", "language": "en", "title": "T",
            "title_source": {"by": "user", "detail": ""}, "paragraphs": paragraphs,
            "text_source": {"by": "user", "detail": ""}, "spotting": {"by": "user", "detail": ""}, "images": [],
            "settings": {"seed": 0, "max_new_tokens": 1, "max_paragraphs": 1, "images": null, "candidates": 1},
            "models": {}, "timings": []
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn html_drops_script_urls_and_keeps_web_links() {
        let bad = [
            "[a](javascript:alert(1))",
            "[a](JaVaScRiPt:alert(1))",
            "[a](<\u{1}javascript:alert(1)>)",
            "[a](<  javascript:alert(1)>)",
            "[a](java&#09;script:alert(1))",
            "[a](&#106;avascript:alert(1))",
            "<javascript:alert(1)>",
            "[a][r]\n\n[r]: vbscript:msgbox",
            "![i](data:text/html;base64,PHNjcmlwdD4=)",
            "[a](file:///etc/passwd)",
        ];
        for p in bad {
            let h = html(&article(&[p])).to_ascii_lowercase();
            let body = &h[h.find("<body>").unwrap()..];
            for s in ["javascript", "vbscript", "data:", "file:"] {
                assert!(!body.contains(&format!("href=\"{s}")) && !body.contains(&format!("src=\"{s}")), "{p:?} → {body}");
            }
            assert!(!body.contains("script:") || !body.contains("href=\"java"), "{p:?} → {body}");
        }
        let good = ["[a](https://example.org/x)", "[a](http://e.org)", "[a](mailto:me@e.org)", "[a](other.html#top)", "[a](#s)"];
        for p in good {
            let h = html(&article(&[p]));
            let dest = p.rsplit('(').next().unwrap().trim_end_matches(')');
            assert!(h.contains(&format!("=\"{dest}\"")), "{p:?} → {h}");
        }
    }

    #[test]
    fn images_show_only_from_the_articles_own_assets() {
        let mut a = article(&["First.", "![x](https://tracker.example/p.png) ![y](../../secret.png) ![z](/etc/hostname) ![w](assets/02-other.png)"]);
        let slot = serde_json::json!({
            "after_paragraph": 0, "caption": "a cup", "caption_source": {"by": "user", "detail": ""},
            "candidates": [{"path": "/lib/cup.png", "score": 1.0}], "chosen": 0,
            "selection": {"by": "user", "detail": ""}, "asset": "assets/01-cup.png"
        });
        a.images.push(serde_json::from_value(slot).unwrap());
        let h = html(&a);
        let sources: Vec<&str> = h.split("src=\"").skip(1).map(|r| &r[..r.find('"').unwrap()]).collect();
        assert_eq!(sources, ["assets/01-cup.png", "", "", "", ""], "{h}");
        // An asset name that is not `assets/NAME` is no source either.
        a.images[0].asset = Some("../x/01-cup.png".into());
        let h = html(&a);
        assert!(!h.contains("src=\"../x") && !h.contains("src=\"assets"), "{h}");
    }
}

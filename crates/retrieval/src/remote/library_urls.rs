//! Images a library folder lists by URL: the lines of `urls.txt` (blank lines and `#` comments
//! skipped) and the `library.json` entries with a `url` (`{"images": {"NAME": {"url": …,
//! "title": …, "description": …, "licence": …}}}`). They are fetched through the [`Fetcher`]
//! into the library's `remote/` folder (its cache), with the entry's text in each image's
//! sidecar, so the library's index then takes them in like any other image. A URL fetched
//! before is not fetched again.

use std::path::{Path, PathBuf};

use serde::Serialize;
use xcomposer_llm::capped::read_within;

use super::cache::ImageMeta;
use super::fetcher::{FetchOptions, Fetcher};
use crate::library::metadata::{LIBRARY_META_CAP, METADATA_FILE};
use crate::library::{LibraryError, io_reason};

/// The file of image URLs in a library folder.
pub const URLS_FILE: &str = "urls.txt";
/// The folder inside a library that keeps the images fetched from its URLs.
pub const REMOTE_DIR: &str = "remote";

/// What fetching a library's URLs did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UrlReport {
    /// URLs listed.
    pub listed: usize,
    /// Where each image fetched or found in the cache is, by URL.
    pub stored: Vec<(String, PathBuf)>,
    /// URLs refused or failed, with the one-line reason.
    pub failed: Vec<(String, String)>,
}

/// The URLs `root` lists, with the text its `library.json` gives them; errors name the file.
pub fn listed_urls(root: &Path) -> Result<Vec<(String, ImageMeta)>, LibraryError> {
    let mut out = vec![];
    let urls = root.join(URLS_FILE);
    match read_within(&urls, LIBRARY_META_CAP) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| LibraryError::Io { path: urls.clone(), reason: "not UTF-8 text; expected one URL per line".into() })?;
            out.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| (l.to_string(), ImageMeta::default())));
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(LibraryError::Io { path: urls, reason: io_reason(e) }),
    }
    let meta = root.join(METADATA_FILE);
    match read_within(&meta, LIBRARY_META_CAP) {
        Ok(bytes) => {
            let bad = |reason: String| LibraryError::Io { path: meta.clone(), reason };
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
            for (name, entry) in v.get("images").and_then(|i| i.as_object()).into_iter().flatten() {
                let Some(url) = entry.get("url") else { continue };
                let url = url.as_str().ok_or_else(|| bad(format!("images.{name}.url is not a string; expected the image's URL")))?;
                let m: ImageMeta = serde_json::from_value(entry.clone()).map_err(|e| bad(format!("images.{name}: {e}")))?;
                out.push((url.to_string(), m));
            }
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(LibraryError::Io { path: meta, reason: io_reason(e) }),
    }
    Ok(out)
}

/// Fetches the URLs `root` lists into `root/remote/` under `options`; one URL's failure is
/// reported, not fatal.
pub fn fetch_library_urls(root: &Path, options: FetchOptions) -> Result<UrlReport, LibraryError> {
    let listed = listed_urls(root)?;
    let mut report = UrlReport { listed: listed.len(), ..UrlReport::default() };
    if listed.is_empty() {
        return Ok(report);
    }
    let dir = root.join(REMOTE_DIR);
    let fetcher = Fetcher::new(options, &dir).map_err(|e| LibraryError::Io { path: dir.clone(), reason: e.to_string() })?;
    for (url, meta) in listed {
        match fetcher.fetch_image(&url, meta) {
            Ok(im) => report.stored.push((url, im.path)),
            Err(e) => report.failed.push((url, e.to_string())),
        }
    }
    Ok(report)
}

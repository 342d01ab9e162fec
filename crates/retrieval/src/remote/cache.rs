//! The content-addressed image cache: `DIR/SHA256.EXT` and its sidecar `DIR/SHA256.EXT.json`
//! ([`CacheRecord`]: URL, final URL, content type, time, size, and the title, description,
//! licence and source the image came with). Both are written through a temporary file in `DIR`
//! and a rename, so a reader never sees a partial file and a failure leaves none; nothing is
//! written outside `DIR`. The sidecar's `title` and `description` are the fields a library's
//! sidecar has, so `DIR` can be indexed as an image library.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xcomposer_llm::fetch::write_atomic;

/// What a source says about an image besides its URL.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// Its title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Its description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its licence, as the source states it.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "license")]
    pub licence: Option<String>,
    /// The page the image is shown on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_page: Option<String>,
    /// The search endpoint that proposed it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The sidecar of a cached image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The URL asked for.
    pub url: String,
    /// The URL the image came from after redirects.
    pub final_url: String,
    /// The checked content type (`image/png`, …).
    pub content_type: String,
    /// When it was fetched, in seconds since the Unix epoch.
    pub fetched_at: u64,
    /// sha256 of the bytes (also the file name).
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Width and height in pixels.
    pub size: (u32, u32),
    /// What the source said about the image.
    #[serde(flatten)]
    pub meta: ImageMeta,
}

/// A cache folder, with an in-memory map from URL to cached file (built from the sidecars when
/// opened).
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    by_url: Mutex<HashMap<String, PathBuf>>,
}

impl Cache {
    /// Opens (creating) the cache folder `dir`, reading the sidecars already there.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut by_url = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(image) = path.to_str().and_then(|p| p.strip_suffix(".json")).map(PathBuf::from) else { continue };
            let record = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<CacheRecord>(&b).ok());
            if let Some(r) = record.filter(|_| image.is_file()) {
                by_url.insert(r.url, image);
            }
        }
        Ok(Self { dir: dir.to_path_buf(), by_url: Mutex::new(by_url) })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached file fetched from `url`, if it is still there.
    pub fn lookup(&self, url: &str) -> Option<(PathBuf, CacheRecord)> {
        let path = self.by_url.lock().expect("cache map").get(url).cloned()?;
        let record = std::fs::read(sidecar(&path)).ok().and_then(|b| serde_json::from_slice(&b).ok())?;
        path.is_file().then_some((path, record))
    }

    /// Stores checked image `bytes` with extension `ext` and its record (whose `sha256` and
    /// `bytes` are set here); returns the file's path.
    pub fn store(&self, bytes: &[u8], ext: &str, record: &mut CacheRecord) -> std::io::Result<PathBuf> {
        record.sha256 = sha256_hex(bytes);
        record.bytes = bytes.len() as u64;
        let path = self.dir.join(format!("{}.{ext}", record.sha256));
        if !path.is_file() {
            write_atomic(&path, bytes)?;
        }
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        write_atomic(&sidecar(&path), &json)?;
        self.by_url.lock().expect("cache map").insert(record.url.clone(), path.clone());
        Ok(path)
    }
}

/// The sidecar of a cached file.
pub fn sidecar(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// sha256 of `bytes`, in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

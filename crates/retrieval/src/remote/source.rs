//! A remote image-search endpoint as a source of candidate images.
//!
//! The contract (the README's "Remote images" section): we POST `{"query": TEXT, "k": N,
//! "language": "en"|"zh"}` as JSON; the endpoint answers `{"images": [{"url": …, "title": …,
//! "description": …, "licence": …, "source_page": …}]}`, best first, every field but `url`
//! optional (`license` is read as `licence`). Only the first `k` are used; each is fetched
//! through the [`Fetcher`], so it is checked, decoded and cached like any other image.

use serde::{Deserialize, Serialize};

use super::cache::ImageMeta;
use super::fetcher::{FetchedImage, Fetcher};
use super::FetchError;

/// The largest search answer read, in bytes.
pub const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// What is sent to the endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct SearchRequest {
    /// The caption to illustrate.
    pub query: String,
    /// How many images are wanted.
    pub k: usize,
    /// The article's language (`en` or `zh`).
    pub language: String,
}

/// What the endpoint answers.
#[derive(Debug, Clone, Deserialize)]
pub struct SearchResponse {
    /// The images, best first.
    pub images: Vec<RemoteImage>,
}

/// One image an endpoint proposes.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteImage {
    /// Where the image is.
    pub url: String,
    /// What the endpoint says about it.
    #[serde(flatten)]
    pub meta: ImageMeta,
}

/// What one source gave for one query: the images fetched and the ones that failed.
#[derive(Debug, Default)]
pub struct SourceResult {
    /// Checked, cached images, in the endpoint's order.
    pub images: Vec<FetchedImage>,
    /// The images that could not be fetched or were refused.
    pub failed: Vec<FetchError>,
}

/// An image-search endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    /// Its URL.
    pub endpoint: String,
}

impl RemoteSource {
    /// The endpoint's proposals for `req` (at most `req.k`).
    pub fn search(&self, fetcher: &Fetcher, req: &SearchRequest) -> Result<Vec<RemoteImage>, FetchError> {
        let body = serde_json::to_value(req).expect("requests serialize");
        let answer = fetcher.post_json(&self.endpoint, &body, MAX_ANSWER_BYTES)?;
        let mut parsed: SearchResponse = serde_json::from_slice(&answer).map_err(|e| FetchError::BadAnswer { url: self.endpoint.clone(), reason: e.to_string() })?;
        parsed.images.truncate(req.k);
        Ok(parsed.images)
    }

    /// Searches, then fetches the proposed images in parallel (the fetcher's per-host limit
    /// applies); a failed search is the error, a failed image is listed in the result.
    pub fn candidates(&self, fetcher: &Fetcher, req: &SearchRequest) -> Result<SourceResult, FetchError> {
        let proposed = self.search(fetcher, req)?;
        let results: Vec<Result<FetchedImage, FetchError>> = std::thread::scope(|s| {
            let handles: Vec<_> = proposed
                .into_iter()
                .map(|im| {
                    let meta = ImageMeta { source: Some(self.endpoint.clone()), ..im.meta };
                    s.spawn(move || fetcher.fetch_image(&im.url, meta))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a fetch thread panicked")).collect()
        });
        let mut out = SourceResult::default();
        for r in results {
            match r {
                Ok(im) => out.images.push(im),
                Err(e) => out.failed.push(e),
            }
        }
        Ok(out)
    }
}

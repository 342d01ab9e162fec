//! The [`Fetcher`]: every outbound request for an image (or an image search) goes through it.
//!
//! A request is refused unless its URL is http or https, its host is on the allowed hosts (when
//! a list is given), and every address the host name resolves to passes the [`AddressPolicy`];
//! the name is resolved once and the connection pinned to those checked addresses, so a DNS
//! answer that changes between the check and the connection (re-binding) is never used. No
//! proxy is used (it would connect elsewhere). Redirects are followed here, not by the HTTP
//! client: each target is checked as the first, at most `max_redirects` of them. The body is
//! read with a byte cap counted while it streams (a declared `Content-Length` over the cap is
//! refused before reading), within one deadline for the whole chain. An image must be of the
//! type its `Content-Type` declares (an absent or `application/octet-stream` type is decided by
//! the bytes) and decode within the image limits before it is kept in the [`Cache`].

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use url::{Host, Url};
use xcomposer_llm::capped::read_capped;
use xcomposer_vision::{ImageInput, ImageLimits};

use super::cache::{Cache, CacheRecord, ImageMeta};
use super::{AddressPolicy, FetchError};

/// The limits and permissions of a [`Fetcher`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest time for a whole fetch, redirects and body included.
    pub timeout: Duration,
    /// Most redirects followed.
    pub max_redirects: usize,
    /// Most requests in flight to one host.
    pub per_host: usize,
    /// Which addresses may be connected to.
    pub addresses: AddressPolicy,
    /// Host names allowed (`name`, or `.name` for it and its subdomains); empty: any host.
    pub hosts: Vec<String>,
    /// The byte cap of a download and the pixel limit of its decode.
    pub limits: ImageLimits,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
            max_redirects: 5,
            per_host: 4,
            addresses: AddressPolicy::default(),
            hosts: vec![],
            limits: ImageLimits::default(),
        }
    }
}

/// A checked image, kept in the cache.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    /// The cached file.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its sidecar.
    pub record: CacheRecord,
}

/// A response body with where it came from.
struct Answer {
    final_url: Url,
    content_type: String,
    body: Vec<u8>,
}

/// Fetches images under [`FetchOptions`] into a [`Cache`]; see the module documentation.
#[derive(Debug)]
pub struct Fetcher {
    options: FetchOptions,
    cache: Cache,
    slots: HostSlots,
}

impl Fetcher {
    /// A fetcher keeping its images in `cache_dir` (created if needed).
    pub fn new(options: FetchOptions, cache_dir: &Path) -> std::io::Result<Self> {
        let slots = HostSlots { max: options.per_host.max(1), busy: Mutex::new(HashMap::new()), freed: Condvar::new() };
        Ok(Self { cache: Cache::open(cache_dir)?, options, slots })
    }

    /// The options.
    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The image at `url`, from the cache when this URL was fetched before (and still passes
    /// this fetcher's URL, host, address and size rules), else fetched, checked and stored with
    /// `meta` in its sidecar.
    pub fn fetch_image(&self, url: &str, meta: ImageMeta) -> Result<FetchedImage, FetchError> {
        let parsed = Url::parse(url).map_err(|e| FetchError::BadUrl { url: url.into(), reason: e.to_string() })?;
        self.check_target(&parsed)?;
        let limits = self.options.limits;
        if let Some((path, record)) = self.cache.lookup(url)
            && u64::from(record.size.0) * u64::from(record.size.1) <= limits.max_pixels
            && let Ok(bytes) = read_capped(&path, limits.max_file_bytes)
        {
            return Ok(FetchedImage { path, bytes, record });
        }
        let answer = self.request(url, None, self.options.limits.max_file_bytes)?;
        let (ext, content_type, size) = check_image(url, &answer, self.options.limits)?;
        let fetched_at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut record = CacheRecord { url: url.into(), final_url: answer.final_url.to_string(), content_type, fetched_at, sha256: String::new(), bytes: 0, size, meta };
        let path = self.cache.store(&answer.body, ext, &mut record).map_err(|e| FetchError::Cache { url: url.into(), dir: self.cache.dir().into(), reason: e.to_string() })?;
        Ok(FetchedImage { path, bytes: answer.body, record })
    }

    /// POSTs `body` as JSON to `url` (no redirects followed) and returns the answer's bytes, at
    /// most `max_bytes`; the same address, time and size rules as images apply.
    pub fn post_json(&self, url: &str, body: &serde_json::Value, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        let bytes = serde_json::to_vec(body).expect("JSON values serialize");
        Ok(self.request(url, Some(&bytes), max_bytes)?.body)
    }

    /// One request under every rule, following GET redirects by hand.
    fn request(&self, url: &str, post: Option<&[u8]>, max_bytes: u64) -> Result<Answer, FetchError> {
        let deadline = Instant::now() + self.options.timeout;
        let mut current = Url::parse(url).map_err(|e| FetchError::BadUrl { url: url.into(), reason: e.to_string() })?;
        let mut redirects = 0;
        loop {
            let (host, addrs) = self.check_target(&current)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.timeout(&current));
            }
            let slot = self.slots.acquire(&host);
            let resp = self.send(&current, &host, &addrs, remaining, post)?;
            let status = resp.status();
            if status.is_redirection() && post.is_none() {
                redirects += 1;
                if redirects > self.options.max_redirects {
                    return Err(FetchError::TooManyRedirects { url: url.into(), max: self.options.max_redirects });
                }
                let location = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()).and_then(|l| current.join(l).ok());
                current = location.ok_or_else(|| FetchError::BadRedirect { url: current.to_string(), status: status.as_u16() })?;
                drop(slot);
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status { url: current.to_string(), status: status.as_u16() });
            }
            if let Some(len) = resp.content_length().filter(|&n| n > max_bytes) {
                return Err(FetchError::TooLarge { url: current.to_string(), what: format!("declared as {len} bytes, over"), limit: max_bytes });
            }
            let content_type = resp.headers().get(CONTENT_TYPE).and_then(|t| t.to_str().ok()).unwrap_or("").to_string();
            let body = self.read_body(resp, &current, max_bytes, deadline)?;
            return Ok(Answer { final_url: current, content_type, body });
        }
    }

    /// Sends one request to `url`, connecting only to `addrs` (the checked addresses of `host`).
    fn send(&self, url: &Url, host: &str, addrs: &[SocketAddr], remaining: Duration, post: Option<&[u8]>) -> Result<Response, FetchError> {
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(self.options.connect_timeout.min(remaining))
            .timeout(remaining)
            .resolve_to_addrs(host, addrs)
            .build()
            .map_err(|e| self.transport(url, &e))?;
        let request = match post {
            Some(body) => client.post(url.clone()).header(CONTENT_TYPE, "application/json").header(ACCEPT, "application/json").body(body.to_vec()),
            None => client.get(url.clone()).header(ACCEPT, "image/png, image/jpeg, image/webp, image/gif"),
        };
        request.send().map_err(|e| if e.is_timeout() { self.timeout(url) } else { self.transport(url, &e) })
    }

    /// Reads the body, refusing it as soon as it passes `max_bytes` or the deadline.
    fn read_body(&self, mut resp: Response, url: &Url, max_bytes: u64, deadline: Instant) -> Result<Vec<u8>, FetchError> {
        let mut body = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if Instant::now() >= deadline {
                return Err(self.timeout(url));
            }
            let n = match resp.read(&mut buf) {
                Ok(n) => n,
                Err(_) if Instant::now() >= deadline => return Err(self.timeout(url)),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(self.timeout(url)),
                Err(e) => return Err(self.transport(url, &e)),
            };
            if n == 0 {
                return Ok(body);
            }
            if (body.len() + n) as u64 > max_bytes {
                return Err(FetchError::TooLarge { url: url.to_string(), what: "over".into(), limit: max_bytes });
            }
            body.extend_from_slice(&buf[..n]);
        }
    }

    /// The host (as the client will ask for it) and its checked addresses: the scheme, the
    /// allowed hosts and the address policy applied; a name is resolved once, here.
    fn check_target(&self, url: &Url) -> Result<(String, Vec<SocketAddr>), FetchError> {
        let text = url.to_string();
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Scheme { url: text, scheme: url.scheme().into() });
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(80);
        let allowed = self.options.hosts.is_empty() || self.options.hosts.iter().any(|h| host_matches(&host, h));
        if !allowed {
            return Err(FetchError::HostNotAllowed { url: text, host, allowed: self.options.hosts.join(", ") });
        }
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(Host::Ipv4(ip)) => vec![SocketAddr::new(ip.into(), port)],
            Some(Host::Ipv6(ip)) => vec![SocketAddr::new(ip.into(), port)],
            Some(Host::Domain(d)) => (d, port).to_socket_addrs().map_err(|e| FetchError::Resolve { url: text.clone(), host: host.clone(), reason: e.to_string() })?.collect(),
            None => return Err(FetchError::BadUrl { url: text, reason: "no host".into() }),
        };
        if addrs.is_empty() {
            return Err(FetchError::Resolve { url: text, host, reason: "no addresses".into() });
        }
        for a in &addrs {
            if let Err(range) = self.options.addresses.check(a.ip()) {
                return Err(FetchError::PrivateAddress { url: text, host, address: a.ip(), range });
            }
        }
        Ok((host, addrs))
    }

    fn timeout(&self, url: &Url) -> FetchError {
        FetchError::Timeout { url: url.to_string(), seconds: self.options.timeout.as_secs_f64() }
    }

    fn transport(&self, url: &Url, e: &dyn std::error::Error) -> FetchError {
        let mut reason = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        FetchError::Transport { url: url.to_string(), reason: reason.replace('\n', " ") }
    }
}

/// Whether `host` is `pattern`, or under it when the pattern starts with a dot.
fn host_matches(host: &str, pattern: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix('.') {
        Some(domain) => host == domain || host.ends_with(&pattern),
        None => host == pattern,
    }
}

/// Checks that `answer` is an image of its declared type that decodes within `limits`; returns
/// its file extension, MIME type and size.
fn check_image(url: &str, answer: &Answer, limits: ImageLimits) -> Result<(&'static str, String, (u32, u32)), FetchError> {
    let declared = answer.content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let found = image::guess_format(&answer.body).ok();
    let (ext, mime) = match found {
        Some(image::ImageFormat::Png) => ("png", "image/png"),
        Some(image::ImageFormat::Jpeg) => ("jpg", "image/jpeg"),
        Some(image::ImageFormat::WebP) => ("webp", "image/webp"),
        Some(image::ImageFormat::Gif) => ("gif", "image/gif"),
        other => {
            let found = other.map_or("not a PNG, JPEG, WebP or GIF image".into(), |f| format!("{f:?}, not one of PNG, JPEG, WebP or GIF"));
            return Err(FetchError::ContentType { url: url.into(), declared, found });
        }
    };
    let same = declared == mime || (mime == "image/jpeg" && matches!(declared.as_str(), "image/jpg" | "image/pjpeg"));
    if !(same || declared.is_empty() || declared == "application/octet-stream") {
        return Err(FetchError::ContentType { url: url.into(), declared, found: format!("a {} image", &mime[6..]) });
    }
    let decoded = ImageInput::default().with_limits(limits).decode(&answer.body, Path::new(url)).map_err(|e| {
        let text = e.to_string();
        FetchError::Image { url: url.into(), reason: text.strip_prefix(&format!("{url}: ")).unwrap_or(&text).to_string() }
    })?;
    Ok((ext, mime.into(), decoded.rgb.dimensions()))
}

/// A counting semaphore per host name.
#[derive(Debug)]
struct HostSlots {
    max: usize,
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

/// One request's slot on a host, given back when dropped.
struct Slot<'a> {
    slots: &'a HostSlots,
    host: String,
}

impl HostSlots {
    /// Waits until `host` has fewer than `max` requests in flight, then takes a slot.
    fn acquire(&self, host: &str) -> Slot<'_> {
        let mut busy = self.busy.lock().expect("host slots");
        while busy.get(host).copied().unwrap_or(0) >= self.max {
            busy = self.freed.wait(busy).expect("host slots");
        }
        *busy.entry(host.to_string()).or_insert(0) += 1;
        Slot { slots: self, host: host.to_string() }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.slots.busy.lock().expect("host slots");
        if let Some(n) = busy.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.host);
            }
        }
        self.slots.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_the_name_or_its_subdomains() {
        assert!(host_matches("images.example.org", ".example.org"));
        assert!(host_matches("example.org", ".example.org"));
        assert!(!host_matches("badexample.org", ".example.org"));
        assert!(host_matches("example.org", "EXAMPLE.org"));
        assert!(!host_matches("a.example.org", "example.org"));
    }
}

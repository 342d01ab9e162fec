//! Images over HTTP: one guarded way out for every image the program fetches.
//!
//! - [`address`]: which addresses a fetch may connect to (public unicast only, unless an
//!   explicit allow-list names a range);
//! - [`fetcher`]: the [`Fetcher`] — http/https only, connect and total timeouts, a byte cap
//!   enforced while the body streams, redirects followed by hand (each re-checked, at most N),
//!   each host name resolved once and the connection pinned to the checked address (so DNS
//!   re-binding cannot slip past), a per-host concurrency limit, and the bytes checked to be
//!   the image type the server declared and decoded under the image limits before anything is
//!   kept;
//! - [`cache`]: the content-addressed disk cache the fetcher keeps images in (`SHA256.EXT`
//!   with a sidecar `SHA256.EXT.json`: URL, final URL, type, time, and any title the image came
//!   with, which the library indexer reads as the image's text), written atomically;
//! - [`source`]: a remote image-search endpoint as a candidate source (the JSON contract is in
//!   the README's "Remote images" section);
//! - [`library_urls`]: the URLs a library folder lists (`urls.txt`, `library.json` entries
//!   with a `url`), fetched into the library before it is indexed.
//!
//! Every refusal is a [`FetchError`] whose message is one line naming the URL and the rule.

pub mod address;
pub mod cache;
pub mod fetcher;
pub mod library_urls;
pub mod source;

pub use address::AddressPolicy;
pub use cache::{Cache, CacheRecord, ImageMeta};
pub use fetcher::{FetchOptions, FetchedImage, Fetcher};
pub use source::{RemoteImage, RemoteSource, SearchRequest, SearchResponse};

/// Why a fetch was refused or failed; every message is one line that starts with the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The text is not an absolute URL.
    #[error("{url}: not a valid URL ({reason})")]
    BadUrl {
        /// The text given.
        url: String,
        /// The parser's message.
        reason: String,
    },
    /// Only http and https are fetched.
    #[error("{url}: scheme {scheme:?} refused; only http and https URLs are fetched")]
    Scheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The host is not on the allow-list of host names.
    #[error("{url}: host {host:?} is not on the allowed hosts ({allowed})")]
    HostNotAllowed {
        /// The URL.
        url: String,
        /// Its host.
        host: String,
        /// The allowed host names, comma-separated.
        allowed: String,
    },
    /// The host name did not resolve.
    #[error("{url}: host {host:?} does not resolve ({reason})")]
    Resolve {
        /// The URL.
        url: String,
        /// Its host.
        host: String,
        /// The resolver's message.
        reason: String,
    },
    /// The host resolves to an address of a range that is refused.
    #[error("{url}: {host} resolves to {address}, a {range} address; refused (only public addresses are fetched unless allowed with --allow-address)")]
    PrivateAddress {
        /// The URL.
        url: String,
        /// Its host.
        host: String,
        /// The refused address.
        address: std::net::IpAddr,
        /// The range's name (loopback, private, link-local, …).
        range: &'static str,
    },
    /// No answer within the time allowed.
    #[error("{url}: no complete answer within {seconds} s (the fetch's time limit)")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        seconds: f64,
    },
    /// The connection or the transfer failed.
    #[error("{url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// What went wrong, on one line.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url}: the server answered HTTP {status}, expected 200")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// A redirect chain longer than allowed (a loop ends here too).
    #[error("{url}: more than {max} redirects (a redirect loop?); refused")]
    TooManyRedirects {
        /// The URL first asked for.
        url: String,
        /// The limit.
        max: usize,
    },
    /// A redirect without a usable `Location`.
    #[error("{url}: redirect (HTTP {status}) without a valid Location header")]
    BadRedirect {
        /// The URL that redirected.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The body is larger than the byte cap (declared or counted while streaming).
    #[error("{url}: the body is {what} {limit} bytes, the cap for one download (raise it with --max-image-bytes)")]
    TooLarge {
        /// The URL.
        url: String,
        /// "declared as N bytes, over" or "over".
        what: String,
        /// The cap.
        limit: u64,
    },
    /// The declared type is not an image, or not the type of the bytes.
    #[error("{url}: the server says Content-Type {declared:?} but the bytes are {found}; refused (an image's declared type must match its bytes)")]
    ContentType {
        /// The URL.
        url: String,
        /// The `Content-Type` header (empty when absent).
        declared: String,
        /// What the bytes are.
        found: String,
    },
    /// The bytes do not decode as an image within the image limits.
    #[error("{url}: {reason}")]
    Image {
        /// The URL.
        url: String,
        /// The decoder's or the limit's message.
        reason: String,
    },
    /// The answer of a search endpoint is not the documented JSON.
    #[error("{url}: the answer is not a search result ({reason}); expected {{\"images\": [{{\"url\": …}}]}}")]
    BadAnswer {
        /// The endpoint.
        url: String,
        /// The parser's message.
        reason: String,
    },
    /// Writing to the cache failed (nothing partial is left).
    #[error("{url}: could not store the image in the cache {dir}: {reason}")]
    Cache {
        /// The URL.
        url: String,
        /// The cache folder.
        dir: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl FetchError {
    /// The rule that refused the fetch, as a short stable word (for tests and API error codes).
    pub fn rule(&self) -> &'static str {
        match self {
            FetchError::BadUrl { .. } => "bad_url",
            FetchError::Scheme { .. } => "scheme",
            FetchError::HostNotAllowed { .. } => "host_not_allowed",
            FetchError::Resolve { .. } => "resolve",
            FetchError::PrivateAddress { .. } => "private_address",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Transport { .. } => "transport",
            FetchError::Status { .. } => "status",
            FetchError::TooManyRedirects { .. } => "too_many_redirects",
            FetchError::BadRedirect { .. } => "bad_redirect",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::ContentType { .. } => "content_type",
            FetchError::Image { .. } => "image",
            FetchError::BadAnswer { .. } => "bad_answer",
            FetchError::Cache { .. } => "cache",
        }
    }
}

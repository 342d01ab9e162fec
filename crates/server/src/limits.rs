//! Request limits, each refused with an error naming the field it applies to.

/// What one request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body in bytes (`body`).
    pub max_body_bytes: usize,
    /// Largest decoded image in bytes (`…image_url.url`).
    pub max_image_bytes: usize,
    /// Most pixels in one image (width × height).
    pub max_image_pixels: u64,
    /// Most images in one request.
    pub max_images: usize,
    /// Most prompt tokens after the chat template (`messages`).
    pub max_prompt_tokens: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_cap: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Requests that may wait for the model behind the running one (more get 429).
    pub queue_capacity: usize,
    /// Fetches `image_url` parts given as http(s) URLs (under its own address and host
    /// allow-lists and limits); `None`: such URLs are refused (`serve --fetch-images` sets it).
    pub image_fetcher: Option<std::sync::Arc<xcomposer_retrieval::remote::Fetcher>>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 20 << 20,
            max_image_bytes: 10 << 20,
            max_image_pixels: 40_000_000,
            max_images: 8,
            max_prompt_tokens: 4096,
            max_tokens_cap: 2048,
            default_max_tokens: 256,
            queue_capacity: 32,
            image_fetcher: None,
        }
    }
}

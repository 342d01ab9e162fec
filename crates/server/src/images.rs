//! Images sent inside requests: `data:` URIs, decoded and checked against the byte and pixel
//! limits before anything else reads them, and — when the server was started with
//! `--fetch-images` — http(s) URLs, fetched through the safe fetcher (its address rules, time
//! and size limits, type check and full decode) and then checked the same way.

use base64::Engine;

use crate::error::ApiError;
use crate::limits::Limits;

/// A checked image from a request: its bytes and size.
#[derive(Debug, Clone)]
pub struct RequestImage {
    /// The encoded file (PNG, JPEG, WebP or GIF).
    pub bytes: Vec<u8>,
    /// Width and height in pixels.
    pub size: (u32, u32),
}

/// Decodes a `data:image/…;base64,…` URI named `param` in the request, or fetches an http(s)
/// URL through `limits.image_fetcher` (refused when there is none), and checks the image against
/// `limits`.
pub fn from_data_uri(url: &str, param: &str, limits: &Limits) -> Result<RequestImage, ApiError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        let Some(fetcher) = &limits.image_fetcher else {
            return Err(ApiError::invalid(param, "http(s) image URLs are not fetched by this server (start it with --fetch-images to allow it); send the image inline as a data: URI (data:image/png;base64,…)").code("remote_image_unsupported"));
        };
        // The fetcher's HTTP client blocks; it runs on a thread of its own, outside the runtime.
        let fetched = std::thread::scope(|s| s.spawn(|| fetcher.fetch_image(url, Default::default())).join().expect("the fetch thread panicked"));
        let fetched = fetched.map_err(|e| ApiError::invalid(param, e.to_string()).code("image_fetch_refused"))?;
        return checked(fetched.bytes, param, limits);
    }
    let rest = url.strip_prefix("data:").ok_or_else(|| ApiError::invalid(param, "an image URL must be a data: URI (data:image/png;base64,…)").code("invalid_image_url"))?;
    let (meta, payload) = rest.split_once(',').ok_or_else(|| ApiError::invalid(param, "the data: URI has no comma before its data").code("invalid_image_url"))?;
    if !meta.starts_with("image/") || !meta.ends_with(";base64") {
        return Err(ApiError::invalid(param, format!("the data: URI says {meta:?}; expected image/<type>;base64")).code("invalid_image_url"));
    }
    let estimated = payload.len() / 4 * 3;
    if estimated > limits.max_image_bytes + 3 {
        return Err(too_large(param, estimated, limits));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim_end())
        .map_err(|e| ApiError::invalid(param, format!("the image's base64 does not decode: {e}")).code("invalid_image_url"))?;
    checked(bytes, param, limits)
}

/// Checks an image's bytes against the byte and pixel limits.
fn checked(bytes: Vec<u8>, param: &str, limits: &Limits) -> Result<RequestImage, ApiError> {
    if bytes.len() > limits.max_image_bytes {
        return Err(too_large(param, bytes.len(), limits));
    }
    let size = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::invalid(param, format!("not an image: {e}")).code("invalid_image"))?
        .into_dimensions()
        .map_err(|e| ApiError::invalid(param, format!("not a readable PNG, JPEG, WebP or GIF image: {e}")).code("invalid_image"))?;
    let pixels = u64::from(size.0) * u64::from(size.1);
    if pixels > limits.max_image_pixels {
        return Err(ApiError::invalid(param, format!("the image is {}x{} = {pixels} pixels, over the limit of {}", size.0, size.1, limits.max_image_pixels)).code("image_too_large"));
    }
    Ok(RequestImage { bytes, size })
}

fn too_large(param: &str, bytes: usize, limits: &Limits) -> ApiError {
    ApiError::invalid(param, format!("the image is about {bytes} bytes, over the limit of {} bytes", limits.max_image_bytes)).code("image_too_large")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> String {
        let mut out = vec![];
        image::RgbImage::new(w, h).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(out))
    }

    #[test]
    fn data_uris_are_decoded_and_checked_against_the_limits() {
        let limits = Limits { max_image_pixels: 100, ..Limits::default() };
        assert_eq!(from_data_uri(&png(10, 10), "p", &limits).unwrap().size, (10, 10));
        let e = from_data_uri(&png(11, 10), "messages[0].content[1].image_url.url", &limits).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[1].image_url.url"));
        assert!(e.message.contains("110 pixels"), "{}", e.message);
        let small = Limits { max_image_bytes: 10, ..Limits::default() };
        assert_eq!(from_data_uri(&png(10, 10), "p", &small).unwrap_err().code, Some("image_too_large"));
        let e = from_data_uri("https://example.com/a.png", "p", &limits).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, Some("remote_image_unsupported")));
        assert!(e.message.contains("not fetched by this server") && e.message.contains("--fetch-images") && e.message.contains("data: URI"), "{}", e.message);
        for bad in ["https://example.com/a.png", "file:///etc/passwd", "data:text/plain;base64,aGk=", "data:image/png;base64,!!!", "data:image/png;base64,aGVsbG8="] {
            let e = from_data_uri(bad, "p", &Limits::default()).unwrap_err();
            assert_eq!(e.status, 400, "{bad}: {}", e.message);
        }
    }

    /// Serves `body` as `content_type` to every connection; returns the base URL.
    fn serve_once(content_type: &'static str, body: Vec<u8>) -> String {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = conn.write_all(&body);
            }
        });
        base
    }

    #[test]
    fn http_image_urls_are_fetched_through_the_fetcher_when_the_server_allows_it() {
        use xcomposer_retrieval::remote::{AddressPolicy, FetchOptions, Fetcher};
        let mut bytes = vec![];
        image::RgbImage::new(12, 7).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
        let good = serve_once("image/png", bytes);
        let html = serve_once("image/png", b"<html>not an image</html>".to_vec());
        let cache = std::env::temp_dir().join(format!("xcomposer-server-fetch-{}", std::process::id()));
        let loopback = FetchOptions { addresses: AddressPolicy::allowing(&["127.0.0.0/8".into()]).unwrap(), ..FetchOptions::default() };
        let limits = Limits { image_fetcher: Some(std::sync::Arc::new(Fetcher::new(loopback, &cache).unwrap())), ..Limits::default() };
        assert_eq!(from_data_uri(&format!("{good}/a.png"), "p", &limits).unwrap().size, (12, 7));
        let e = from_data_uri(&format!("{html}/a.png"), "p", &limits).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, Some("image_fetch_refused")));
        assert!(e.message.contains("Content-Type \"image/png\" but the bytes are not"), "{}", e.message);
        let strict = Limits { image_fetcher: Some(std::sync::Arc::new(Fetcher::new(FetchOptions::default(), &cache).unwrap())), ..Limits::default() };
        let e = from_data_uri(&format!("{good}/a.png"), "p", &strict).unwrap_err();
        assert!(e.message.contains("a loopback address; refused"), "{}", e.message);
        let _ = std::fs::remove_dir_all(&cache);
    }
}

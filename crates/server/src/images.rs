//! Images sent inside requests: `data:` URIs, decoded and checked against the byte and pixel
//! limits before anything else reads them.

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

/// Decodes a `data:image/…;base64,…` URI named `param` in the request and checks it against
/// `limits`; http(s) URLs are refused (remote fetching is not built).
pub fn from_data_uri(url: &str, param: &str, limits: &Limits) -> Result<RequestImage, ApiError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(ApiError::invalid(param, "http(s) image URLs are not fetched yet (remote fetching is a later feature); send the image inline as a data: URI (data:image/png;base64,…)").code("remote_image_unsupported"));
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
        assert!(e.message.contains("not fetched yet") && e.message.contains("data: URI"), "{}", e.message);
        for bad in ["https://example.com/a.png", "file:///etc/passwd", "data:text/plain;base64,aGk=", "data:image/png;base64,!!!", "data:image/png;base64,aGVsbG8="] {
            let e = from_data_uri(bad, "p", &Limits::default()).unwrap_err();
            assert_eq!(e.status, 400, "{bad}: {}", e.message);
        }
    }
}

//! `ImageInput`: decoding image files as they come from the real world into 8-bit RGB.
//!
//! JPEG, PNG, WebP and GIF (first frame) are read; the EXIF orientation is applied; grey, grey +
//! alpha, RGBA and 16-bit images become 8-bit RGB (alpha composited on white by default, or
//! dropped as PIL's `convert("RGB")` does, which the reference preprocessors use); images above a
//! pixel limit are refused before their pixels are decoded. Every error names the file.

use std::io::{BufRead, Cursor, Seek};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The bytes are not an image of a supported format.
    #[error("{path}: not a supported image (JPEG, PNG, WebP or GIF expected)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The decoder rejected the data.
    #[error("{path}: corrupt or truncated image: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// The image is larger than the pixel limit.
    #[error("{path}: {width}×{height} is {pixels} pixels, more than the limit of {limit} (raise it with ImageInput::max_pixels)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// width × height.
        pixels: u64,
        /// The limit.
        limit: u64,
    },
}

/// What to do with transparency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alpha {
    /// Composite on a white background (what a reader sees in a browser).
    #[default]
    OverWhite,
    /// Drop the alpha channel, keeping the stored colour (PIL's `convert("RGB")`).
    Drop,
}

/// A decoded image with what we read from its metadata.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// The pixels, upright, 8-bit RGB.
    pub rgb: RgbImage,
    /// EXIF `ImageDescription`, when present and not blank.
    pub description: Option<String>,
}

/// Settings for reading images.
#[derive(Debug, Clone, Copy)]
pub struct ImageInput {
    /// The largest width × height accepted (decompression-bomb guard).
    pub max_pixels: u64,
    /// What to do with transparency.
    pub alpha: Alpha,
    /// Whether to apply the EXIF orientation.
    pub apply_orientation: bool,
}

impl Default for ImageInput {
    fn default() -> Self {
        Self { max_pixels: 64 * 1024 * 1024, alpha: Alpha::OverWhite, apply_orientation: true }
    }
}

impl ImageInput {
    /// PIL-compatible reading, as the reference preprocessors do it: alpha dropped, EXIF
    /// orientation ignored.
    pub fn pil_compatible() -> Self {
        Self { alpha: Alpha::Drop, apply_orientation: false, ..Self::default() }
    }

    /// Reads and decodes a file.
    pub fn open(&self, path: &Path) -> Result<DecodedImage, ImageError> {
        let bytes = std::fs::read(path).map_err(|e| ImageError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
        self.decode(&bytes, path)
    }

    /// Decodes bytes; `path` is only used in messages.
    pub fn decode(&self, bytes: &[u8], path: &Path) -> Result<DecodedImage, ImageError> {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ImageError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
        if reader.format().is_none() {
            return Err(ImageError::UnknownFormat { path: path.to_path_buf() });
        }
        self.decode_reader(reader, path)
    }

    fn decode_reader<R: BufRead + Seek>(&self, reader: ImageReader<R>, path: &Path) -> Result<DecodedImage, ImageError> {
        let corrupt = |e: image::ImageError| match e {
            image::ImageError::Unsupported(_) => ImageError::UnknownFormat { path: path.to_path_buf() },
            e => ImageError::Corrupt { path: path.to_path_buf(), reason: e.to_string() },
        };
        let mut decoder = reader.into_decoder().map_err(corrupt)?;
        let (width, height) = decoder.dimensions();
        let pixels = width as u64 * height as u64;
        if pixels > self.max_pixels {
            return Err(ImageError::TooLarge { path: path.to_path_buf(), width, height, pixels, limit: self.max_pixels });
        }
        let exif = decoder.exif_metadata().ok().flatten();
        let orientation = if self.apply_orientation { decoder.orientation().ok() } else { None };
        let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
        if let Some(o) = orientation {
            img.apply_orientation(o);
        }
        let description = exif.as_deref().and_then(|e| exif_ascii(e, EXIF_IMAGE_DESCRIPTION)).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(DecodedImage { rgb: to_rgb8(img, self.alpha), description })
    }
}

/// Converts any colour type to 8-bit RGB under an alpha policy.
fn to_rgb8(img: DynamicImage, alpha: Alpha) -> RgbImage {
    if !img.color().has_alpha() || alpha == Alpha::Drop {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            // Exact integer blend with white, rounded: (c·a + 255·(255−a)) / 255.
            o[c] = ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// EXIF tag 0x010E.
const EXIF_IMAGE_DESCRIPTION: u16 = 0x010e;

/// Reads an ASCII tag from IFD0 of a raw EXIF block (a TIFF structure, optionally behind the
/// `Exif\0\0` header). Returns `None` on anything malformed.
pub fn exif_ascii(exif: &[u8], tag: u16) -> Option<String> {
    let t = exif.strip_prefix(b"Exif\0\0").unwrap_or(exif);
    let le = match t.get(..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = t.get(o..o + 2)?.try_into().ok()?;
        Some(if le { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = t.get(o..o + 4)?.try_into().ok()?;
        Some(if le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    };
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    for i in 0..n.min(512) {
        let e = ifd + 2 + 12 * i;
        if u16_at(e)? != tag || u16_at(e + 2)? != 2 {
            continue;
        }
        let count = u32_at(e + 4)? as usize;
        let data = if count <= 4 { t.get(e + 8..e + 8 + count)? } else { t.get(u32_at(e + 8)? as usize..)?.get(..count)? };
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        return Some(String::from_utf8_lossy(&data[..end]).into_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgba};

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = vec![];
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    }

    /// A TIFF block (little-endian) with ImageDescription and Orientation in IFD0.
    fn exif_block(description: &str, orientation: u16) -> Vec<u8> {
        let mut t = b"II*\0".to_vec();
        t.extend(8u32.to_le_bytes());
        t.extend(2u16.to_le_bytes());
        let desc = format!("{description}\0");
        let data_at = 8 + 2 + 2 * 12 + 4;
        t.extend(0x010eu16.to_le_bytes());
        t.extend(2u16.to_le_bytes());
        t.extend((desc.len() as u32).to_le_bytes());
        t.extend((data_at as u32).to_le_bytes());
        t.extend(0x0112u16.to_le_bytes());
        t.extend(3u16.to_le_bytes());
        t.extend(1u32.to_le_bytes());
        t.extend((orientation as u32).to_le_bytes());
        t.extend(0u32.to_le_bytes());
        t.extend(desc.as_bytes());
        t
    }

    /// A JPEG whose APP1 segment carries `exif`.
    fn jpeg_with_exif(img: &RgbImage, exif: &[u8]) -> Vec<u8> {
        let mut j = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut j, 95).write_image(img, img.width(), img.height(), image::ExtendedColorType::Rgb8).unwrap();
        let mut seg = b"Exif\0\0".to_vec();
        seg.extend(exif);
        let mut out = j[..2].to_vec();
        out.extend([0xff, 0xe1]);
        out.extend(((seg.len() + 2) as u16).to_be_bytes());
        out.extend(seg);
        out.extend(&j[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied_and_the_description_read() {
        // 4 wide, 2 high: left half red, right half blue.
        let img = RgbImage::from_fn(4, 2, |x, _| if x < 2 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        let bytes = jpeg_with_exif(&img, &exif_block("Espresso on a saucer", 6));
        let d = ImageInput::default().decode(&bytes, Path::new("rotated.jpg")).unwrap();
        // Orientation 6 = rotate 90° clockwise: now 2 wide, 4 high, red on top.
        assert_eq!(d.rgb.dimensions(), (2, 4));
        assert!(d.rgb.get_pixel(0, 0)[0] > 200 && d.rgb.get_pixel(0, 3)[2] > 200);
        assert_eq!(d.description.as_deref(), Some("Espresso on a saucer"));
        let raw = ImageInput::pil_compatible().decode(&bytes, Path::new("rotated.jpg")).unwrap();
        assert_eq!(raw.rgb.dimensions(), (4, 2));
    }

    #[test]
    fn grey_rgba_and_16_bit_become_rgb() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(3, 2, image::Luma([77])));
        let d = ImageInput::default().decode(&png(&grey), Path::new("g.png")).unwrap();
        assert_eq!(d.rgb.get_pixel(2, 1).0, [77, 77, 77]);

        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(1, 1, Rgba([200, 0, 100, 128])));
        let over = ImageInput::default().decode(&png(&rgba), Path::new("a.png")).unwrap();
        // 200·128/255 + 255·127/255 = 100.4 + 127 = 227.4; 0 → 127; 100 → 177.2
        assert_eq!(over.rgb.get_pixel(0, 0).0, [227, 127, 177]);
        let dropped = ImageInput::pil_compatible().decode(&png(&rgba), Path::new("a.png")).unwrap();
        assert_eq!(dropped.rgb.get_pixel(0, 0).0, [200, 0, 100]);

        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(1, 1, image::Rgb([65535u16, 32896, 0])));
        let d = ImageInput::default().decode(&png(&deep), Path::new("d.png")).unwrap();
        assert_eq!(d.rgb.get_pixel(0, 0).0, [255, 128, 0]);
    }

    #[test]
    fn gif_webp_corrupt_unknown_and_oversized_inputs() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(5, 4, image::Rgb([10, 200, 30])));
        for fmt in [image::ImageFormat::Gif, image::ImageFormat::WebP] {
            let mut b = vec![];
            img.to_rgba8().write_to(&mut Cursor::new(&mut b), fmt).unwrap();
            let d = ImageInput::default().decode(&b, Path::new("x")).unwrap();
            assert_eq!(d.rgb.dimensions(), (5, 4), "{fmt:?}");
        }
        let good = png(&img);
        let e = ImageInput::default().decode(&good[..good.len() / 2], Path::new("half.png")).unwrap_err().to_string();
        assert!(e.starts_with("half.png: corrupt or truncated image"), "{e}");
        let e = ImageInput::default().decode(b"hello, world", Path::new("notes.txt")).unwrap_err().to_string();
        assert_eq!(e, "notes.txt: not a supported image (JPEG, PNG, WebP or GIF expected)");
        let small = ImageInput { max_pixels: 19, ..ImageInput::default() };
        let e = small.decode(&good, Path::new("big.png")).unwrap_err().to_string();
        assert!(e.starts_with("big.png: 5×4 is 20 pixels, more than the limit of 19"), "{e}");
        let e = ImageInput::default().open(Path::new("/nonexistent/cat.jpg")).unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/cat.jpg: "), "{e}");
    }
}

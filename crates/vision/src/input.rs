//! `ImageInput`: decoding image files as they come from the real world into 8-bit RGB.
//!
//! JPEG, PNG, WebP and GIF (first frame) are read; the EXIF orientation is applied; grey, grey +
//! alpha, RGBA and 16-bit images become 8-bit RGB (alpha composited on white by default, or
//! dropped as PIL's `convert("RGB")` does, which the reference preprocessors use); images above a
//! pixel limit are refused before their pixels are decoded, and so are images whose resize for a
//! model ([`ImageInput::open_for`]) would be above it (an extreme aspect ratio); files are read
//! with a size cap, and a JPEG that ends before its end marker is refused as truncated. Every
//! error names the file.

use std::io::{BufRead, Cursor, Seek};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use xcomposer_llm::capped::read_capped;
use xcomposer_llm::readers::WeightError;

use crate::Preprocess;

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
    /// The file is larger than the file-size cap.
    #[error("{path}: larger than the limit of {limit} bytes for an image file (raise it with --max-image-bytes or ImageInput::max_file_bytes)")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The cap in bytes.
        limit: u64,
    },
    /// Resizing the image for a model would make more pixels than the limit.
    #[error("{path}: {width}×{height} would be resized to {resized_width}×{resized_height}, more than the limit of {limit} pixels (an extreme aspect ratio; raise the limit with --max-image-pixels or ImageInput::max_pixels)")]
    ResizeTooLarge {
        /// The file.
        path: PathBuf,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Width after the resize.
        resized_width: u64,
        /// Height after the resize.
        resized_height: u64,
        /// The limit.
        limit: u64,
    },
    /// The image is larger than the pixel limit.
    #[error("{path}: {width}×{height} is {pixels} pixels, more than the limit of {limit} (raise it with --max-image-pixels or ImageInput::max_pixels)")]
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
    /// The largest width × height accepted, before and after a resize (decompression-bomb guard).
    pub max_pixels: u64,
    /// The largest file read, in bytes.
    pub max_file_bytes: u64,
    /// What to do with transparency.
    pub alpha: Alpha,
    /// Whether to apply the EXIF orientation.
    pub apply_orientation: bool,
}

/// The size limits of one image, which a user can raise (the CLI's `--max-image-pixels` and
/// `--max-image-bytes`); the defaults are 64 Mi pixels and 256 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// The largest width × height accepted, before and after a resize.
    pub max_pixels: u64,
    /// The largest file read, in bytes.
    pub max_file_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self { max_pixels: 64 * 1024 * 1024, max_file_bytes: 256 << 20 }
    }
}

impl Default for ImageInput {
    fn default() -> Self {
        let ImageLimits { max_pixels, max_file_bytes } = ImageLimits::default();
        Self { max_pixels, max_file_bytes, alpha: Alpha::OverWhite, apply_orientation: true }
    }
}

impl ImageInput {
    /// The same settings with these size limits.
    pub fn with_limits(self, limits: ImageLimits) -> Self {
        Self { max_pixels: limits.max_pixels, max_file_bytes: limits.max_file_bytes, ..self }
    }

    /// PIL-compatible reading, as the reference preprocessors do it: alpha dropped, EXIF
    /// orientation ignored.
    pub fn pil_compatible() -> Self {
        Self { alpha: Alpha::Drop, apply_orientation: false, ..Self::default() }
    }

    /// Reads and decodes a file.
    pub fn open(&self, path: &Path) -> Result<DecodedImage, ImageError> {
        self.decode_with(&self.read(path)?, path, None)
    }

    /// Reads and decodes a file that `preprocess` will resize, refusing it before decoding when
    /// the resized image would be above the pixel limit.
    pub fn open_for(&self, path: &Path, preprocess: &Preprocess) -> Result<DecodedImage, ImageError> {
        self.decode_with(&self.read(path)?, path, Some(preprocess))
    }

    /// The bytes of a regular file of at most `max_file_bytes`.
    fn read(&self, path: &Path) -> Result<Vec<u8>, ImageError> {
        let io = |reason: String| ImageError::Io { path: path.to_path_buf(), reason };
        read_capped(path, self.max_file_bytes).map_err(|e| match e {
            WeightError::TooLarge { .. } => ImageError::FileTooLarge { path: path.to_path_buf(), limit: self.max_file_bytes },
            WeightError::NotRegular { .. } => io("not a regular file (a folder, FIFO or device); expected an image file".into()),
            other => io(other.reason()),
        })
    }

    /// Decodes bytes; `path` is only used in messages.
    pub fn decode(&self, bytes: &[u8], path: &Path) -> Result<DecodedImage, ImageError> {
        self.decode_with(bytes, path, None)
    }

    /// Decodes bytes, checking the size after `preprocess`'s resize too when given.
    pub fn decode_for(&self, bytes: &[u8], path: &Path, preprocess: &Preprocess) -> Result<DecodedImage, ImageError> {
        self.decode_with(bytes, path, Some(preprocess))
    }

    fn decode_with(&self, bytes: &[u8], path: &Path, preprocess: Option<&Preprocess>) -> Result<DecodedImage, ImageError> {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ImageError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
        match reader.format() {
            None => return Err(ImageError::UnknownFormat { path: path.to_path_buf() }),
            Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
                return Err(ImageError::Corrupt { path: path.to_path_buf(), reason: "truncated JPEG: the data ends before the image's end marker".into() });
            }
            Some(_) => {}
        }
        self.decode_reader(reader, path, preprocess)
    }

    /// Refuses `width × height` above the pixel limit, before and after `preprocess`'s resize.
    fn check_size(&self, (width, height): (u32, u32), path: &Path, preprocess: Option<&Preprocess>) -> Result<(), ImageError> {
        let pixels = width as u64 * height as u64;
        if pixels > self.max_pixels {
            return Err(ImageError::TooLarge { path: path.to_path_buf(), width, height, pixels, limit: self.max_pixels });
        }
        let Some((resized_width, resized_height)) = preprocess.map(|p| p.resized_size_u64((width, height))) else { return Ok(()) };
        if resized_width.saturating_mul(resized_height) > self.max_pixels {
            return Err(ImageError::ResizeTooLarge { path: path.to_path_buf(), width, height, resized_width, resized_height, limit: self.max_pixels });
        }
        Ok(())
    }

    fn decode_reader<R: BufRead + Seek>(&self, reader: ImageReader<R>, path: &Path, preprocess: Option<&Preprocess>) -> Result<DecodedImage, ImageError> {
        let corrupt = |e: image::ImageError| match e {
            image::ImageError::Unsupported(_) => ImageError::UnknownFormat { path: path.to_path_buf() },
            e => ImageError::Corrupt { path: path.to_path_buf(), reason: e.to_string() },
        };
        let mut decoder = reader.into_decoder().map_err(corrupt)?;
        self.check_size(decoder.dimensions(), path, preprocess)?;
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

/// Whether a JPEG's data reaches its end marker: an EOI (`FF D9`) after the last start of scan
/// (`FF DA`). Entropy-coded data never holds `FF D9` (0xFF bytes are stuffed), so a file cut
/// anywhere in or after its last scan header lacks it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let marker = |m: u8| move |w: &[u8]| w == [0xff, m];
    let last_scan = bytes.windows(2).rposition(marker(0xda)).unwrap_or(0);
    bytes[last_scan..].windows(2).any(marker(0xd9))
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

    #[test]
    fn extreme_aspect_ratios_are_refused_before_the_resize_allocates() {
        let pre = Preprocess::efficientnet_lite0();
        // 8 × 8 000 000 (64 M pixels, under the input limit) would be resized to 256 × 256 000 000.
        let tall = ImageInput::default().check_size((8, 8_000_000), Path::new("tall.png"), Some(&pre)).unwrap_err().to_string();
        assert_eq!(tall, "tall.png: 8×8000000 would be resized to 256×256000000, more than the limit of 67108864 pixels (an extreme aspect ratio; raise the limit with --max-image-pixels or ImageInput::max_pixels)");
        // 1 × 60 000 000: the long side, 15 360 000 000, does not even fit in 32 bits.
        let clip = Preprocess::clip(256);
        let thin = ImageInput::default().check_size((1, 60_000_000), Path::new("thin.png"), Some(&clip)).unwrap_err().to_string();
        assert!(thin.starts_with("thin.png: 1×60000000 would be resized to 256×15360000000,"), "{thin}");
        // A real file: 1 × 300 000 with a pixel limit of 1 M is refused by name, not decoded.
        let line = DynamicImage::ImageLuma8(image::GrayImage::new(1, 300_000));
        let small = ImageInput { max_pixels: 1_000_000, ..ImageInput::default() };
        let e = small.decode_for(&png(&line), Path::new("line.png"), &pre).unwrap_err().to_string();
        assert!(e.starts_with("line.png: 1×300000 would be resized to 256×76800000,"), "{e}");
        let ok = RgbImage::from_pixel(400, 300, image::Rgb([1, 2, 3]));
        assert!(ImageInput::default().decode_for(&png(&DynamicImage::ImageRgb8(ok)), Path::new("ok.png"), &pre).is_ok());
    }

    #[test]
    fn files_are_read_with_a_size_cap_and_only_when_regular() {
        let dir = std::env::temp_dir().join(format!("xcomposer-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.png");
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 0])));
        let bytes = png(&img);
        std::fs::write(&path, &bytes).unwrap();
        let capped = ImageInput { max_file_bytes: bytes.len() as u64 - 1, ..ImageInput::default() };
        let e = capped.open(&path).unwrap_err().to_string();
        assert_eq!(e, format!("{}: larger than the limit of {} bytes for an image file (raise it with --max-image-bytes or ImageInput::max_file_bytes)", path.display(), bytes.len() - 1));
        assert!(ImageInput { max_file_bytes: bytes.len() as u64, ..ImageInput::default() }.open(&path).is_ok());
        let e = ImageInput::default().open(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(e, "/dev/zero: not a regular file (a folder, FIFO or device); expected an image file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_jpeg_is_an_error_naming_the_file() {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8]));
        let mut j = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut j, 90).write_image(&img, 64, 48, image::ExtendedColorType::Rgb8).unwrap();
        assert!(ImageInput::default().decode(&j, Path::new("whole.jpg")).is_ok());
        for keep in [j.len() - 2, j.len() * 3 / 4, j.len() / 2 + 40] {
            let e = ImageInput::default().decode(&j[..keep], Path::new("cut.jpg")).unwrap_err().to_string();
            assert!(e.starts_with("cut.jpg: corrupt or truncated image"), "{keep} of {}: {e}", j.len());
        }
    }
}

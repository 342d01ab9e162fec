//! `Preprocess`: the resize → centre crop → normalise chain every encoder uses, with the exact
//! arithmetic of each reference preprocessor (see the constructors).

use image::RgbImage;

use crate::resize::resize_bicubic;

/// How the long side is rounded when the short side is scaled to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideRounding {
    /// Python's `round(long · (target / short))`, ties to even (the EfficientNet reference).
    Round,
    /// `int(target · long / short)` (Hugging Face image processors).
    Truncate,
}

/// The resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Scale so that the shorter side is `size`, keeping the aspect ratio.
    ShortestSide {
        /// Target of the shorter side.
        size: u32,
        /// Rounding of the longer side.
        rounding: SideRounding,
    },
    /// Squash to exactly this size.
    Exact {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
}

/// How 8-bit values become model inputs: `(rescale(v) − mean[c]) / std[c]`, in f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// The rescale step.
    pub rescale: Rescale,
    /// Per-channel mean (after rescaling).
    pub mean: [f32; 3],
    /// Per-channel standard deviation (after rescaling).
    pub std: [f32; 3],
}

/// The rescale step of [`Normalize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rescale {
    /// `v as f32` (no rescaling).
    None,
    /// `(v as f64 · factor) as f32` (Hugging Face `rescale_factor`).
    MulF64(f64),
    /// `v as f32 / divisor` in f32 (torchvision `ToTensor`).
    DivF32(f32),
}

/// A `preprocessor_config.json` this implementation cannot follow; names the field.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PreprocessConfigError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// The CLIP / EVA-CLIP channel means (after scaling to 0..1).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// The CLIP / EVA-CLIP channel standard deviations.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// A full preprocessing chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// Resize step.
    pub resize: Resize,
    /// Centre crop to `(width, height)` after resizing, if any.
    pub crop: Option<(u32, u32)>,
    /// Normalisation.
    pub normalize: Normalize,
}

impl Preprocess {
    /// EfficientNet-Lite0: shorter side → 256 (rounded), centre crop 224, `(v − 127) / 128`.
    pub fn efficientnet_lite0() -> Self {
        Self {
            resize: Resize::ShortestSide { size: 256, rounding: SideRounding::Round },
            crop: Some((224, 224)),
            normalize: Normalize { rescale: Rescale::None, mean: [127.0; 3], std: [128.0; 3] },
        }
    }

    /// Hugging Face `CLIPImageProcessor` defaults at `size`: shortest edge → size (truncated),
    /// centre crop, `v · (1/255)` in f64, CLIP mean/std.
    pub fn clip(size: u32) -> Self {
        Self {
            resize: Resize::ShortestSide { size, rounding: SideRounding::Truncate },
            crop: Some((size, size)),
            normalize: Normalize { rescale: Rescale::MulF64(1.0 / 255.0), mean: CLIP_MEAN, std: CLIP_STD },
        }
    }

    /// Reads a Hugging Face `CLIPImageProcessor` `preprocessor_config.json`: `size`
    /// (`{"shortest_edge": n}` or a number), `crop_size` (`{"height", "width"}` or a number),
    /// `do_resize`, `do_center_crop`, `do_rescale`, `rescale_factor`, `do_normalize`,
    /// `image_mean`, `image_std`, `resample` (3, bicubic, is the only one supported); absent
    /// fields take the processor's defaults.
    pub fn from_hf_config(path: &std::path::Path) -> Result<Self, PreprocessConfigError> {
        use serde_json::Value;
        let err = |reason: String| PreprocessConfigError { path: path.into(), reason };
        let v = xcomposer_llm::readers::fields::read_json(path).map_err(err)?;
        let fields = xcomposer_llm::readers::fields::Fields::new(&v, "");
        let flag = |k: &str| fields.bool(k, true).map_err(|e| err(e.to_string()));
        let side = |k: &str, keys: &[&str]| -> Result<Option<(u32, u32)>, PreprocessConfigError> {
            let positive = |x: &Value| x.as_u64().filter(|n| *n > 0 && *n <= 8192).map(|n| n as u32);
            match fields.get(k) {
                None => Ok(None),
                Some(x) if positive(x).is_some() => Ok(positive(x).map(|n| (n, n))),
                Some(Value::Object(o)) => {
                    let get = |f: &str| o.get(f).and_then(positive);
                    match keys {
                        [one] => get(one).map(|n| Some((n, n))).ok_or_else(|| err(format!("{k}.{one} is missing or not a positive integer"))),
                        [h, w] => match (get(h), get(w)) {
                            (Some(h), Some(w)) => Ok(Some((w, h))),
                            _ => Err(err(format!("{k} needs positive integers {h} and {w}"))),
                        },
                        _ => unreachable!("one or two keys"),
                    }
                }
                Some(x) => Err(err(format!("{k} is {x}; expected a number or an object"))),
            }
        };
        let triple = |k: &str, default: [f32; 3]| -> Result<[f32; 3], PreprocessConfigError> {
            match fields.get(k) {
                None => Ok(default),
                Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => Ok([0, 1, 2].map(|i| a[i].as_f64().unwrap_or(0.0) as f32)),
                Some(x) => Err(err(format!("{k} is {x}; expected three numbers"))),
            }
        };
        match fields.get("resample") {
            None => {}
            Some(x) if x.as_u64() == Some(3) => {}
            Some(x) => return Err(err(format!("resample is {x}; only 3 (bicubic) is supported"))),
        }
        let size = side("size", &["shortest_edge"])?.map_or(224, |s| s.0);
        let resize = if flag("do_resize")? { Resize::ShortestSide { size, rounding: SideRounding::Truncate } } else { Resize::Exact { width: 0, height: 0 } };
        if matches!(resize, Resize::Exact { .. }) {
            return Err(err("do_resize false is not supported (images of any size would reach the model)".into()));
        }
        let crop = if flag("do_center_crop")? { Some(side("crop_size", &["height", "width"])?.unwrap_or((224, 224))) } else { None };
        let rescale = if flag("do_rescale")? {
            Rescale::MulF64(fields.positive_f64("rescale_factor", 1.0 / 255.0).map_err(|e| err(e.to_string()))?)
        } else {
            Rescale::None
        };
        let (mean, std) = if flag("do_normalize")? { (triple("image_mean", CLIP_MEAN)?, triple("image_std", CLIP_STD)?) } else { ([0.0; 3], [1.0; 3]) };
        if std.iter().any(|s| *s <= 0.0) {
            return Err(err(format!("image_std {std:?} must be positive")));
        }
        Ok(Self { resize, crop, normalize: Normalize { rescale, mean, std } })
    }

    /// The InternLM-XComposer visual encoder: squash to `size`², `v / 255` in f32, CLIP mean/std.
    pub fn xcomposer(size: u32) -> Self {
        Self {
            resize: Resize::Exact { width: size, height: size },
            crop: None,
            normalize: Normalize { rescale: Rescale::DivF32(255.0), mean: CLIP_MEAN, std: CLIP_STD },
        }
    }

    /// The output `(width, height)`.
    pub fn output_size(&self, input: (u32, u32)) -> (u32, u32) {
        self.crop.unwrap_or_else(|| resized_size(self.resize, input))
    }

    /// The size after the resize step, before the crop, in 64 bits: what resizing `input`
    /// allocates ([`ImageInput::open_for`](crate::ImageInput::open_for) checks it).
    pub fn resized_size_u64(&self, input: (u32, u32)) -> (u64, u64) {
        resized_size_u64(self.resize, input)
    }

    /// Resizes and crops, returning 8-bit pixels (what the references call `crop_u8`). The
    /// resize allocates its full output: open files with
    /// [`ImageInput::open_for`](crate::ImageInput::open_for), which refuses an image whose
    /// resize would be above the pixel limit.
    pub fn resize_and_crop(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = resized_size(self.resize, img.dimensions());
        let resized = resize_bicubic(img, w, h);
        match self.crop {
            Some((cw, ch)) => center_crop(&resized, cw, ch),
            None => resized,
        }
    }

    /// The model input, channel-major (`[3, H, W]` flattened).
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        to_chw(&self.resize_and_crop(img), &self.normalize)
    }
}

/// The size after a resize step (each side at most `u32::MAX`; see [`resized_size_u64`]).
pub fn resized_size(resize: Resize, input: (u32, u32)) -> (u32, u32) {
    let (w, h) = resized_size_u64(resize, input);
    (u32::try_from(w).unwrap_or(u32::MAX), u32::try_from(h).unwrap_or(u32::MAX))
}

/// The size after a resize step, in 64 bits (an extreme aspect ratio can pass 32).
pub fn resized_size_u64(resize: Resize, (w, h): (u32, u32)) -> (u64, u64) {
    match resize {
        Resize::Exact { width, height } => (width as u64, height as u64),
        Resize::ShortestSide { size, rounding } => {
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            let long = match rounding {
                SideRounding::Round => (long as f64 * (size as f64 / short.max(1) as f64)).round_ties_even() as u64,
                SideRounding::Truncate => size as u64 * long as u64 / short.max(1) as u64,
            };
            if w <= h { (size as u64, long) } else { (long, size as u64) }
        }
    }
}

/// Centre crop with `top = (h − ch) / 2`, `left = (w − cw) / 2` (floors); pads with black
/// where the image is smaller than the crop, as PIL's `crop` does.
pub fn center_crop(img: &RgbImage, cw: u32, ch: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let left = (w as i64 - cw as i64).div_euclid(2);
    let top = (h as i64 - ch as i64).div_euclid(2);
    RgbImage::from_fn(cw, ch, |x, y| {
        let (sx, sy) = (x as i64 + left, y as i64 + top);
        if sx >= 0 && sy >= 0 && sx < w as i64 && sy < h as i64 { *img.get_pixel(sx as u32, sy as u32) } else { image::Rgb([0, 0, 0]) }
    })
}

/// Normalises 8-bit RGB into a channel-major f32 buffer.
pub fn to_chw(img: &RgbImage, n: &Normalize) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            let v = match n.rescale {
                Rescale::None => p[c] as f32,
                Rescale::MulF64(f) => (p[c] as f64 * f) as f32,
                Rescale::DivF32(d) => p[c] as f32 / d,
            };
            out[c * plane + i] = (v - n.mean[c]) / n.std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_side_sizes_follow_each_reference() {
        let hf = Resize::ShortestSide { size: 224, rounding: SideRounding::Truncate };
        // The clip-tiny fixture records these sizes.
        assert_eq!(resized_size(hf, (451, 300)), (336, 224));
        assert_eq!(resized_size(hf, (550, 660)), (224, 268));
        assert_eq!(resized_size(hf, (500, 500)), (224, 224));
        let eff = Resize::ShortestSide { size: 256, rounding: SideRounding::Round };
        // 451·256/300 = 384.85 → 385 (truncation would give 384).
        assert_eq!(resized_size(eff, (451, 300)), (385, 256));
        // 773·(256/512) = 386.5 → 386: Python rounds ties to even.
        assert_eq!(resized_size(eff, (773, 512)), (386, 256));
    }

    #[test]
    fn crop_is_centred_with_floors() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let c = center_crop(&img, 2, 2);
        assert_eq!(c.get_pixel(0, 0).0, [1, 1, 0]);
        let n = Normalize { rescale: Rescale::None, mean: [127.0; 3], std: [128.0; 3] };
        let v = to_chw(&c, &n);
        assert_eq!(v[0], (1.0 - 127.0) / 128.0);
        assert_eq!(v[4 + 2], (2.0 - 127.0) / 128.0); // G plane, (0, 1)
    }
}

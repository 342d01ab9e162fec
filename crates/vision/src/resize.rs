//! Pillow's BICUBIC resampling, replicated bit for bit for 8-bit RGB.
//!
//! Every reference preprocessor (torchvision, HF image processors, the EfficientNet reference)
//! resizes with Pillow, so matching it exactly removes a source of drift from every parity test.
//! The algorithm (Pillow ≥ 7, `libImaging/Resample.c`): a Keys cubic with a = −0.5 whose support
//! is widened by the scale factor when downscaling; separable passes, horizontal first over just
//! the rows the vertical pass reads; weights normalised in f64, then turned into 22-bit fixed
//! point; each pass rounds and clamps to u8.

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point weights of one pass: for each output index, the first input index, the number
/// of taps, and `ksize` weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero; negative starts clamp to 0.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..ksize {
            let v = if x < xmax && ww != 0.0 { k[x] / ww } else { 0.0 };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if v < 0.0 { (f - 0.5) as i32 } else { (f + 0.5) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { ksize, bounds, weights }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes to `width × height` exactly as `PIL.Image.resize(size, Image.BICUBIC)` does for an
/// RGB image.
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (in_w, in_h) == (out_w, out_h) || out_w == 0 || out_h == 0 {
        return if out_w == 0 || out_h == 0 { RgbImage::new(width, height) } else { src.clone() };
    }
    let v = coeffs(in_h, out_h);
    // Horizontal pass over only the rows the vertical pass will read.
    let (first, last) = if in_h == out_h { (0, in_h) } else { (v.bounds[0].0, v.bounds[out_h - 1].0 + v.bounds[out_h - 1].1) };
    let src = src.as_raw();
    let mut tmp: Vec<u8>;
    let (tmp_rows, row_offset) = if in_w != out_w {
        let h = coeffs(in_w, out_w);
        tmp = vec![0u8; (last - first) * out_w * 3];
        for (ty, y) in (first..last).enumerate() {
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for xx in 0..out_w {
                let (xmin, n) = h.bounds[xx];
                let k = &h.weights[xx * h.ksize..xx * h.ksize + n];
                let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = &row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for c in 0..3 {
                        ss[c] += p[c] as i32 * kx;
                    }
                }
                let o = (ty * out_w + xx) * 3;
                for c in 0..3 {
                    tmp[o + c] = clip8(ss[c]);
                }
            }
        }
        (&tmp[..], first)
    } else {
        (&src[..], 0)
    };
    if in_h == out_h {
        return RgbImage::from_raw(width, height, tmp_rows[..out_w * out_h * 3].to_vec()).expect("buffer size");
    }
    let mut out = vec![0u8; out_w * out_h * 3];
    for yy in 0..out_h {
        let (ymin, n) = v.bounds[yy];
        let k = &v.weights[yy * v.ksize..yy * v.ksize + n];
        let o = yy * out_w * 3;
        for i in 0..out_w * 3 {
            let mut ss = 1i32 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                ss += tmp_rows[(ymin - row_offset + y) * out_w * 3 + i] as i32 * ky;
            }
            out[o + i] = clip8(ss);
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_flat_images_stay_flat() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 9]));
        assert_eq!(resize_bicubic(&img, 7, 5), img);
        let flat = RgbImage::from_pixel(13, 9, image::Rgb([200, 17, 0]));
        for (w, h) in [(5, 4), (26, 18), (13, 3), (2, 9)] {
            let r = resize_bicubic(&flat, w, h);
            assert!(r.pixels().all(|p| p.0 == [200, 17, 0]), "{w}×{h}");
        }
    }

    #[test]
    fn the_weights_of_each_output_sum_to_one_in_fixed_point() {
        for (i, o) in [(451, 224), (300, 224), (100, 300), (660, 268)] {
            let c = coeffs(i, o);
            for xx in 0..o {
                let s: i32 = c.weights[xx * c.ksize..(xx + 1) * c.ksize].iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= c.ksize as i32, "{i}->{o} at {xx}: {s}");
            }
        }
    }
}

//! Our image reading and preprocessing against the reference implementations' own outputs:
//! Hugging Face `CLIPImageProcessor` (clip-tiny) and torchvision `Resize` (xcomposer-tiny), both
//! on Pillow.

#[path = "../../llm/tests/common.rs"]
mod common;

use common::fixture;
use safetensors::SafeTensors;
use xcomposer_vision::preprocess::{Preprocess, to_chw};
use xcomposer_vision::ImageInput;

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn f32s(t: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn clip_preprocessing_matches_pillow_bit_for_bit() {
    let dir = fixture("clip-tiny");
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let crops = st.tensor("crop_u8").unwrap();
    let pixels = f32s(&st.tensor("pixel_values").unwrap());
    let pre = Preprocess::clip(224);
    let plane = 224 * 224 * 3;
    for (i, name) in ["chelsea", "cell", "logo"].iter().enumerate() {
        // Grey (cell) and RGBA (logo) as PIL's convert("RGB") sees them.
        let img = ImageInput::pil_compatible().open(&fixture("images").join(format!("{name}.png"))).unwrap();
        let ours = pre.resize_and_crop(&img.rgb);
        let expected = &crops.data()[i * plane..(i + 1) * plane];
        let diff = ours.as_raw().iter().zip(expected).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{name}: {diff} of {plane} bytes differ from Pillow");
        let err = max_abs(&pre.apply(&img.rgb), &pixels[i * plane..(i + 1) * plane]);
        assert!(err <= 1e-6, "{name}: pixel_values max-abs {err}");
        eprintln!("{name}: crop_u8 identical, pixel_values max-abs {err:e}");
    }
}

#[test]
fn xcomposer_preprocessing_matches_torchvision_bit_for_bit() {
    let dir = fixture("xcomposer-tiny");
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let pre = Preprocess::xcomposer(224);
    for name in ["chelsea", "coffee"] {
        let img = ImageInput::pil_compatible().open(&fixture("images").join(format!("{name}.png"))).unwrap();
        let ours = pre.resize_and_crop(&img.rgb);
        let expected = st.tensor(&format!("{name}.resized_u8")).unwrap();
        let diff = ours.as_raw().iter().zip(expected.data()).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{name}: {diff} bytes differ from Pillow");
        let err = max_abs(&to_chw(&ours, &pre.normalize), &f32s(&st.tensor(&format!("{name}.pixel_values")).unwrap()));
        assert!(err <= 1e-6, "{name}: pixel_values max-abs {err}");
    }
}

//! XComposer's image encoder on the CUDA encoder runtime against the original code's outputs on
//! ../shared/fixtures/xcomposer-tiny (`image_embeds` from the reference `pixel_values`), in f32
//! (true f32 products, no TF32) and f16, both images in one batch and each alone.
//! Needs a GPU: built only with `--features cuda`, run on the GPU machine by `scripts/gpu-engine.sh`
//! (`XCOMPOSER_SHARED` names the folder holding `fixtures/`).
#![cfg(feature = "cuda")]

#[path = "../../llm/tests/common.rs"]
mod common;

use safetensors::SafeTensors;
use xcomposer_llm::cuda::EngineDtype;
use xcomposer_llm::torch::TorchWeights;
use xcomposer_vision::VisualConfig;
use xcomposer_vision::xcomposer::visual_cuda::CudaVisual;

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|x| x.is_finite()), "non-finite encoder output");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn image_embeds_match_the_original_code_in_f32_and_f16() {
    let dir = common::fixture("xcomposer-tiny");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let c = VisualConfig::from_json(&cfg, "config.json").unwrap();
    let src = TorchWeights::open_dir(&dir).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let get = |k: &str| -> Vec<f32> { st.tensor(k).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect() };
    let cases = ["coffee", "chelsea"];
    let pixels: Vec<f32> = cases.iter().flat_map(|k| get(&format!("{k}.pixel_values"))).collect();
    let want: Vec<f32> = cases.iter().flat_map(|k| get(&format!("{k}.image_embeds"))).collect();
    // f32: the same computation as the reference up to summation order; f16: products in half
    // precision (the reference model's own type), within what that rounding gives.
    for (dtype, tol) in [(EngineDtype::F32, 1e-3), (EngineDtype::F16, 3e-2)] {
        let mut v = CudaVisual::load(&src, &c, dtype).unwrap();
        let batch = v.forward(&pixels, 2).unwrap();
        let err = max_abs(&batch, &want);
        eprintln!("{dtype:?}: image_embeds max-abs {err:.2e} (both images in one batch)");
        assert!(err <= tol, "{dtype:?}: image_embeds max-abs {err} > {tol}");
        let per = pixels.len() / 2;
        let alone: Vec<f32> = (0..2).flat_map(|i| v.forward(&pixels[i * per..(i + 1) * per], 1).unwrap()).collect();
        let drift = max_abs(&alone, &batch);
        eprintln!("{dtype:?}: one at a time vs batched max-abs {drift:.2e}");
        assert!(drift <= tol / 2.0, "{dtype:?}: batching changed the embeddings by {drift}");
        let e = v.forward(&pixels[..per - 1], 1).unwrap_err().to_string();
        assert!(e.contains("pixel values"), "{e}");
    }
}

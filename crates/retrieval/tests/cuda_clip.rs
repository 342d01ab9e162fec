//! CLIP's vision tower on the CUDA encoder runtime against transformers' `CLIPModel` on
//! ../shared/fixtures/clip-tiny: the unnormalised image features of the reference pixel values,
//! in f32 (true f32 products, no TF32) and f16.
//! Needs a GPU: built only with `--features cuda`, run on the GPU machine by `scripts/gpu-engine.sh`
//! (`XCOMPOSER_SHARED` names the folder holding `fixtures/`).
#![cfg(feature = "cuda")]

#[path = "../../llm/tests/common.rs"]
mod common;

use safetensors::SafeTensors;
use xcomposer_llm::cuda::EngineDtype;
use xcomposer_retrieval::clip_cuda::CudaClipVision;

#[test]
fn image_features_match_the_reference_in_f32_and_f16() {
    let dir = common::fixture("clip-tiny");
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let get = |k: &str| -> (Vec<f32>, Vec<usize>) {
        let t = st.tensor(k).unwrap();
        (t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(), t.shape().to_vec())
    };
    let (pixels, shape) = get("pixel_values");
    let (want, _) = get("image_features_unnormalized");
    for (dtype, tol) in [(EngineDtype::F32, 1e-3f32), (EngineDtype::F16, 3e-2)] {
        let mut clip = CudaClipVision::load(&dir, dtype).unwrap();
        let got = clip.image_features(&pixels, shape[0]).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got.iter().all(|x| x.is_finite()), "non-finite features");
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{dtype:?}: image features max-abs {err:.2e} over {} images", shape[0]);
        assert!(err <= tol, "{dtype:?}: image features max-abs {err} > {tol}");
    }
}

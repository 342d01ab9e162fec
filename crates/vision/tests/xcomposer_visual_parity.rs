//! InternLM-XComposer's image encoder against the original code on
//! ../shared/fixtures/xcomposer-tiny: from the reference `pixel_values`, the ViT embedding and
//! blocks, `ln_vision`, every Q-Former layer, the projection and the image embeddings (flags
//! included) within 1e-4, loaded from the original sharded PyTorch checkpoint with mixed dtypes.

#[path = "../../llm/tests/common.rs"]
mod common;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use safetensors::SafeTensors;
use xcomposer_llm::torch::TorchWeights;
use xcomposer_vision::{VisualConfig, XComposerVisual};

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

#[test]
fn image_path_matches_the_original_code() {
    let dir = common::fixture("xcomposer-tiny");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let c = VisualConfig::from_json(&cfg, "config.json").unwrap();
    assert_eq!((c.vit_mlp, c.tokens_per_image()), (209, 10));
    let src = TorchWeights::open_dir(&dir).unwrap();
    let dev = Default::default();
    let visual = XComposerVisual::<Flex>::load(&src, &c, &dev).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let get = |k: &str| -> Vec<f32> { st.tensor(k).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect() };
    let mut report = vec![];
    for case in ["coffee", "chelsea"] {
        let pixels = Tensor::<Flex, 4>::from_data(TensorData::new(get(&format!("{case}.pixel_values")), [1, 3, 224, 224]), &dev);
        let t = visual.trace(pixels);
        let mut check = |what: &str, got: Vec<f32>| {
            let want = get(&format!("{case}.{what}"));
            assert_eq!(got.len(), want.len(), "{case}.{what}");
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            report.push(format!("{case}.{what} {err:.1e}"));
            assert!(err <= 1e-4, "{case}.{what}: max-abs {err}");
        };
        check("vit_embed", values(t.vit[0].clone()));
        check("vit_blocks", t.vit[1..].iter().flat_map(|x| values(x.clone())).collect());
        check("ln_vision_out", values(t.ln_vision.clone()));
        check("qformer_hidden", t.sampler.iter().flat_map(|x| values(x.clone())).collect());
        check("proj_out", values(t.proj.clone()));
        check("image_embeds", values(t.embeds.clone()));
    }
    eprintln!("{}", report.join(", "));
}

#[test]
fn config_defaults_are_the_real_7b_and_bad_values_are_named() {
    let c = VisualConfig::from_json(&serde_json::json!({}), "config.json").unwrap();
    assert_eq!((c.vit_dim, c.vit_depth, c.vit_heads, c.vit_mlp), (1408, 39, 16, 6144));
    assert_eq!((c.q_dim, c.q_layers, c.num_query, c.llm_dim, c.tokens_per_image()), (768, 12, 64, 4096, 66));
    let e = VisualConfig::from_json(&serde_json::json!({"vit_num_heads": 5, "vit_embed_dim": 48}), "config.json").unwrap_err();
    assert_eq!(e, "config.json: vit_num_heads 5 does not divide the width 48");
    let e = VisualConfig::from_json(&serde_json::json!({"qformer_hidden_act": "relu"}), "config.json").unwrap_err();
    assert!(e.contains("qformer_hidden_act is \"relu\""), "{e}");
}

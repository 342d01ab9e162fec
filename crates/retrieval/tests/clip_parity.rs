//! CLIP against transformers' `CLIPModel` on ../shared/fixtures/clip-tiny: token ids exact,
//! preprocessing, every hidden state, features, embeddings and logits within the fixture's
//! tolerances; and checkpoints with a missing or mis-shaped tensor or an unsupported config value
//! fail with an error naming it.

#[path = "../../llm/tests/common.rs"]
mod common;

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use safetensors::SafeTensors;
use xcomposer_retrieval::clip::l2_normalize;
use xcomposer_retrieval::{Clip, ClipEmbedder, ClipTokenizer};
use xcomposer_vision::{ImageInput, Preprocess};

fn dir() -> PathBuf {
    common::fixture("clip-tiny")
}

struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    fn load() -> Self {
        Expected { bytes: std::fs::read(dir().join("expected.safetensors")).unwrap() }
    }
    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = self.view();
        let t = st.tensor(name).unwrap();
        (t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), t.shape().to_vec())
    }
    fn i64(&self, name: &str) -> (Vec<i64>, Vec<usize>) {
        let st = self.view();
        let t = st.tensor(name).unwrap();
        (t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(), t.shape().to_vec())
    }
    fn u8(&self, name: &str) -> Vec<u8> {
        self.view().tensor(name).unwrap().data().to_vec()
    }
}

fn captions() -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir().join("expected.json")).unwrap()).unwrap();
    v["captions"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

#[test]
fn tokenizer_ids_are_exact() {
    let e = Expected::load();
    let (ids, shape) = e.i64("input_ids");
    let (mask, _) = e.i64("attention_mask");
    let caps = captions();
    assert_eq!(shape, [caps.len(), 77]);
    let tok = ClipTokenizer::from_dir(&dir(), 77).unwrap();
    let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
    let got = tok.encode(&refs);
    for (c, cap) in caps.iter().enumerate() {
        let want: Vec<u32> = ids[c * 77..(c + 1) * 77].iter().map(|&v| v as u32).collect();
        assert_eq!(got.ids[c], want, "ids of {cap:?}");
        let want_mask: Vec<u32> = mask[c * 77..(c + 1) * 77].iter().map(|&v| v as u32).collect();
        assert_eq!(got.mask[c], want_mask, "mask of {cap:?}");
    }
}

#[test]
fn preprocessing_matches_the_image_processor() {
    let e = Expected::load();
    let pp = Preprocess::from_hf_config(&dir().join("preprocessor_config.json")).unwrap();
    assert_eq!(pp, Preprocess::clip(224), "preprocessor_config.json is CLIP's default");
    let (want, _) = e.f32("pixel_values");
    let crops = e.u8("crop_u8");
    let input = ImageInput::pil_compatible();
    let mut worst = 0f32;
    for (i, name) in ["chelsea.png", "cell.png", "logo.png"].iter().enumerate() {
        let img = input.open(&dir().join("../images").join(name)).unwrap();
        let crop = pp.resize_and_crop(&img.rgb);
        assert_eq!(crop.as_raw().as_slice(), &crops[i * 224 * 224 * 3..(i + 1) * 224 * 224 * 3], "{name}: crop_u8");
        let got = pp.apply(&img.rgb);
        let err = max_abs(&got, &want[i * 3 * 224 * 224..(i + 1) * 3 * 224 * 224]);
        worst = worst.max(err);
        assert!(err <= 0.02, "{name}: pixel_values max-abs {err}");
    }
    eprintln!("pixel_values max-abs {worst:e} (crop_u8 identical)");
}

#[test]
fn towers_features_embeddings_and_logits_match_the_reference() {
    let e = Expected::load();
    let dev = Default::default();
    let clip = Clip::<Flex>::load(&dir(), &dev).unwrap();
    let (pixels, pshape) = e.f32("pixel_values");
    let n = pshape[0];
    let pix = || Tensor::<Flex, 4>::from_data(TensorData::new(pixels.clone(), pshape.clone()), &dev);

    let mut report = vec![];
    let mut check = |what: &str, got: &[f32], want: &[f32], tol: f32| {
        let err = max_abs(got, want);
        report.push(format!("{what} {err:.1e}"));
        assert!(err <= tol, "{what}: max-abs {err} > {tol}");
    };
    let (vh, _) = e.f32("vision_hidden_states");
    let got: Vec<f32> = clip.vision.hidden_states(pix()).into_iter().flat_map(values).collect();
    check("vision hidden states", &got, &vh, 1e-4);
    check("vision pooled", &values(clip.vision.forward(pix())), &e.f32("vision_pooled").0, 1e-4);
    let img = clip.image_features(pix());
    check("image features", &values(img.clone()), &e.f32("image_features_unnormalized").0, 1e-4);
    let img_e = l2_normalize(img);
    check("image embeds", &values(img_e.clone()), &e.f32("image_embeds").0, 1e-5);

    let (ids, shape) = e.i64("input_ids");
    let (mask, _) = e.i64("attention_mask");
    let m = shape[0];
    let rows = |v: &[i64]| -> Vec<Vec<u32>> { v.chunks(77).map(|r| r.iter().map(|&x| x as u32).collect()).collect() };
    let (ids, mask) = (rows(&ids), rows(&mask));
    let (th, _) = e.f32("text_hidden_states");
    let got: Vec<f32> = clip.text.hidden_states(&ids, &mask).into_iter().flat_map(values).collect();
    check("text hidden states", &got, &th, 1e-4);
    check("text pooled", &values(clip.text.forward(&ids, &mask)), &e.f32("text_pooled").0, 1e-4);
    let txt = clip.text_features(&ids, &mask);
    check("text features", &values(txt.clone()), &e.f32("text_features_unnormalized").0, 1e-4);
    let txt_e = l2_normalize(txt);
    check("text embeds", &values(txt_e.clone()), &e.f32("text_embeds").0, 1e-5);

    let logits = img_e.matmul(txt_e.transpose()) * clip.logit_scale;
    assert_eq!(logits.dims(), [n, m]);
    check("logits_per_image", &values(logits), &e.f32("logits_per_image").0, 1e-3);
    eprintln!("clip-tiny max-abs: {}", report.join(", "));
}

#[test]
fn the_embedder_runs_the_whole_chain_from_files() {
    let e = Expected::load();
    let emb = ClipEmbedder::<Flex>::load(&dir(), &Default::default()).unwrap();
    let input = ImageInput::pil_compatible();
    let images: Vec<_> = ["chelsea.png", "cell.png", "logo.png"].iter().map(|n| input.open(&dir().join("../images").join(n)).unwrap().rgb).collect();
    let got: Vec<f32> = emb.embed_images(&images).concat();
    assert!(max_abs(&got, &e.f32("image_embeds").0) <= 1e-4);
    let caps = captions();
    let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
    let got: Vec<f32> = emb.embed_texts(&refs).concat();
    assert!(max_abs(&got, &e.f32("text_embeds").0) <= 1e-4);
    assert!((emb.model.logit_scale - 54.598_15).abs() < 1e-3);
}

/// A copy of the fixture folder with `config.json` and the weights rewritten.
fn altered(tag: &str, config: impl Fn(&mut serde_json::Value), weights: impl Fn(&str, Vec<usize>) -> Option<Vec<usize>>) -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("clip-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["vocab.json", "merges.txt", "preprocessor_config.json"] {
        std::fs::copy(dir().join(f), out.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir().join("config.json")).unwrap()).unwrap();
    config(&mut cfg);
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    let bytes = std::fs::read(dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for (name, view) in st.tensors() {
        if let Some(shape) = weights(&name, view.shape().to_vec()) {
            let n: usize = shape.iter().product();
            let mut data = view.data().to_vec();
            data.resize(n * 4, 0);
            kept.push((name, shape, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept.iter().map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    out
}

fn load_err(d: &Path) -> String {
    match Clip::<Flex>::load(d, &Default::default()) {
        Ok(_) => panic!("{} loaded", d.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_checkpoints_are_refused_with_the_tensor_or_field_named() {
    let missing = altered("missing", |_| {}, |name, shape| (name != "text_model.encoder.layers.1.mlp.fc2.weight").then_some(shape));
    let e = load_err(&missing);
    assert!(e.ends_with("tensor 'text_model.encoder.layers.1.mlp.fc2.weight' is missing"), "{e}");

    let wrong = altered("shape", |_| {}, |name, shape| Some(if name == "visual_projection.weight" { vec![24, 40] } else { shape }));
    let e = load_err(&wrong);
    assert!(e.ends_with("tensor 'visual_projection.weight' has shape [24, 40], expected [24, 48]"), "{e}");

    let act = altered("act", |c| c["vision_config"]["hidden_act"] = "relu".into(), |_, s| Some(s));
    let e = load_err(&act);
    assert!(e.contains("config.json: vision_config.hidden_act is \"relu\"; expected \"quick_gelu\" or \"gelu\""), "{e}");

    let heads = altered("heads", |c| c["text_config"]["num_attention_heads"] = 5.into(), |_, s| Some(s));
    let e = load_err(&heads);
    assert!(e.contains("text_config.num_attention_heads is 5, which does not divide hidden_size 32"), "{e}");

    let kind = altered("kind", |c| c["model_type"] = "siglip".into(), |_, s| Some(s));
    assert!(load_err(&kind).contains("model_type is \"siglip\"; expected \"clip\""));

    let resample = altered("resample", |_| {}, |_, s| Some(s));
    std::fs::write(resample.join("preprocessor_config.json"), r#"{"resample": 2, "size": {"shortest_edge": 224}}"#).unwrap();
    let e = ClipEmbedder::<Flex>::load(&resample, &Default::default()).err().unwrap().to_string();
    assert!(e.contains("preprocessor_config.json: resample is 2; only 3 (bicubic) is supported"), "{e}");
}

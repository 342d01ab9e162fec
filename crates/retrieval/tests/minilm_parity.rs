//! MiniLM against transformers' `BertModel` (../shared/fixtures/minilm): ids exact, embeddings
//! and the cosine matrix within 1e-4, whether texts are embedded alone or in a padded batch.

#[path = "../../llm/tests/common.rs"]
mod common;

use burn::backend::Flex;
use xcomposer_retrieval::embedder::dot;
use xcomposer_retrieval::TextEmbedder;

#[test]
fn minilm_matches_the_reference() {
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(common::fixture("minilm").join("expected.json")).unwrap()).unwrap();
    let cases = expected["cases"].as_array().unwrap();
    let models = xcomposer_llm::fetch::models_dir();
    let emb = TextEmbedder::<Flex>::load_default(&models, &Default::default(), &mut |m| eprintln!("[fetch] {m}")).unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    for (c, t) in cases.iter().zip(&texts) {
        let ids: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(emb.tokenize(t).unwrap(), ids, "ids of {t:?}");
    }
    let batched = emb.embed(&texts).unwrap();
    let mut worst = 0f32;
    for (i, c) in cases.iter().enumerate() {
        let want: Vec<f32> = c["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let alone = &emb.embed(&[texts[i]]).unwrap()[0];
        for got in [alone, &batched[i]] {
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            worst = worst.max(err);
            assert!(err <= 1e-4, "embedding of {:?}: max-abs {err}", texts[i]);
        }
    }
    let cos = expected["cosine_matrix"].as_array().unwrap();
    let mut worst_cos = 0f32;
    for (i, row) in cos.iter().enumerate() {
        for (j, v) in row.as_array().unwrap().iter().enumerate() {
            let err = (dot(&batched[i], &batched[j]) - v.as_f64().unwrap() as f32).abs();
            worst_cos = worst_cos.max(err);
            assert!(err <= 1e-4, "cosine ({i},{j}): off by {err}");
        }
    }
    eprintln!("{} cases: ids exact, embedding max-abs {worst:e}, cosine max-abs {worst_cos:e}", cases.len());
}

//! InternLM-XComposer's tokenizer against the original slow tokenizer
//! (`../shared/fixtures/internlm-tokenizer`): ids with and without BOS and the three decodes,
//! for all 50 strings.

#[path = "../../llm/tests/common.rs"]
mod common;

use serde::Deserialize;
use xcomposer_vision::xcomposer::language::InternLmTokenizer;

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    ids_with_bos: Vec<u32>,
    ids_no_bos: Vec<u32>,
    decode_no_bos: String,
    decode_with_bos_skip_special: String,
    decode_with_bos_keep_special: String,
}

#[test]
fn every_case_matches_the_original_tokenizer() {
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(common::fixture("internlm-tokenizer").join("cases.json")).unwrap()).unwrap();
    let tok = InternLmTokenizer::load(&common::fixture("xcomposer-tiny").join("tokenizer.model")).unwrap();
    let mut failures = vec![];
    for c in &cases.cases {
        let checks = [
            ("ids_with_bos", format!("{:?}", tok.encode(&c.text, true).unwrap()), format!("{:?}", c.ids_with_bos)),
            ("ids_no_bos", format!("{:?}", tok.encode(&c.text, false).unwrap()), format!("{:?}", c.ids_no_bos)),
            ("decode_no_bos", tok.decode(&c.ids_no_bos, false).unwrap(), c.decode_no_bos.clone()),
            ("decode_with_bos_skip_special", tok.decode(&c.ids_with_bos, true).unwrap(), c.decode_with_bos_skip_special.clone()),
            ("decode_with_bos_keep_special", tok.decode(&c.ids_with_bos, false).unwrap(), c.decode_with_bos_keep_special.clone()),
        ];
        for (what, got, want) in checks {
            if got != want {
                failures.push(format!("{} {what}: got {got:?}, want {want:?}", c.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(cases.cases.len(), 50);
}

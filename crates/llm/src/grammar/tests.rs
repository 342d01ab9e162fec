use std::sync::Arc;

use super::*;

fn g(text: &str) -> Grammar {
    Grammar::parse("test.gbnf", text).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> String {
    Grammar::parse("test.gbnf", text).unwrap_err().to_string()
}

#[test]
fn literals_classes_alternation_and_grouping() {
    let gr = g("root ::= \"a\" [0-9x] (\"b\" | \"cd\")  # comment\n");
    for ok in ["a0b", "a9cd", "axb"] {
        assert!(gr.matches(ok), "{ok}");
    }
    for bad in ["", "a", "a0", "ab", "a0c", "a0bcd", "A0b"] {
        assert!(!gr.matches(bad), "{bad}");
    }
    let neg = g(r#"root ::= [^"\n]+ "\"""#);
    assert!(neg.matches("a cup of tea\"") && neg.matches("长城\""));
    assert!(!neg.matches("a\nb\"") && !neg.matches("\"") && !neg.matches("tea"));
    assert!(g("root ::= . .").matches("é!"));
}

#[test]
fn repetitions_count_as_gbnf_says() {
    let gr = g("root ::= \"x\"? \"y\"* \"z\"+");
    for ok in ["z", "xz", "yyz", "xyyzzz"] {
        assert!(gr.matches(ok), "{ok}");
    }
    for bad in ["", "x", "xxz", "zy"] {
        assert!(!gr.matches(bad), "{bad}");
    }
    let bounded = g("root ::= [a-c]{2,4} \"!\"{1} [0-9]{2,}");
    for ok in ["ab!12", "abca!123"] {
        assert!(bounded.matches(ok), "{ok}");
    }
    for bad in ["a!12", "abcab!12", "ab!1", "ab!!12"] {
        assert!(!bounded.matches(bad), "{bad}");
    }
}

#[test]
fn rules_reference_each_other_and_may_span_lines() {
    let gr = g("root ::= item\n  (\",\" item)*\nitem ::=\n  [0-9]+\n  | \"none\"\n");
    assert!(gr.matches("1,22,none") && gr.matches("none"));
    assert!(!gr.matches("1,") && !gr.matches(",1"));
    // Right recursion is fine.
    let list = g("root ::= \"(\" list \")\"\nlist ::= \"a\" list | \"\"");
    assert!(list.matches("(aaa)") && list.matches("()"));
}

#[test]
fn escapes_decode() {
    let gr = g(r#"root ::= "\x41\u00e9\t\"\\" [\]\-]"#);
    assert!(gr.matches("Aé\t\"\\]") && gr.matches("Aé\t\"\\-"));
}

#[test]
fn errors_name_the_file_line_and_column() {
    assert_eq!(err("root ::= \"a\"\nitem ::= [a-z\n"), "test.gbnf:2:10: unterminated character class (missing `]`)");
    assert_eq!(err("root ::= item"), "test.gbnf:1:10: rule `item` is used but never defined");
    assert_eq!(err("item ::= \"a\""), "test.gbnf:1:13: no `root` rule (parsing starts there)");
    assert!(err("root ::= \"a\"\nroot ::= \"b\"").starts_with("test.gbnf:2:1: rule `root` is defined twice"));
    assert!(err("root ::= \"a\n\"").starts_with("test.gbnf:1:10: unterminated string literal"));
    assert!(err("root ::= [z-a]").starts_with("test.gbnf:1:11: range"));
    assert!(err("root ::= \"\\q\"").starts_with("test.gbnf:1:11: unknown escape"));
    assert!(err("root ::= \"a\"{3,1}").starts_with("test.gbnf:1:13: repetition"));
    assert!(err("root ::= @").starts_with("test.gbnf:1:10: expected a \"literal\""));
    assert!(err("root = \"a\"").starts_with("test.gbnf:1:6: expected `::=`"));
    assert!(err("root ::= (\"a\"").starts_with("test.gbnf:1:14: expected `)`"));
    // Left recursion, direct or through an empty-matching repetition, would loop: refused.
    assert!(err("root ::= root \"a\" | \"b\"").contains("rule `root` can reach itself"), "{}", err("root ::= root \"a\" | \"b\""));
    assert!(err("root ::= (\"a\"?)*").contains("can reach itself"));
}

#[test]
fn a_token_ending_inside_a_character_is_allowed_only_where_the_class_takes_it() {
    let gr = g("root ::= [^a-z]");
    let mut s = gr.start();
    // 长 is E9 95 BF: the first two bytes leave it pending, the third completes it.
    assert!(s.advance_bytes(&gr, &[0xE9, 0x95]));
    assert!(!s.is_accepting());
    assert!(s.advance_bytes(&gr, &[0xBF]) && s.is_complete());
    let ascii = g("root ::= [a-z]");
    assert!(!ascii.start().advance_bytes(&ascii, &[0xE9]));
}

fn vocab(tokens: &[&str]) -> Vocabulary {
    Vocabulary::from_token_bytes(tokens.iter().map(|t| (!t.is_empty()).then(|| t.as_bytes().to_vec())).collect())
}

#[test]
fn the_mask_allows_exactly_the_tokens_that_continue_a_parse() {
    let gr = Arc::new(g(r#"root ::= " <Seg" [0-9]+ ">" ("," " <Seg" [0-9]+ ">")*"#));
    // id 7 is a control token (no bytes), id 8 the stop token.
    let v = Arc::new(vocab(&[" <", " <Seg", "Seg", "1", "12>", ">", ",", "", "", "hello"]));
    let c = Constraint { grammar: gr.clone(), vocabulary: v.clone() };
    let stop = [8];
    let start = gr.start();
    assert_eq!(v.allowed(&gr, &start, 10, &stop), [true, true, false, false, false, false, false, false, false, false]);
    let mut s = start.clone();
    assert!(s.advance_bytes(&gr, b" <Seg1"));
    assert_eq!(v.allowed(&gr, &s, 10, &stop), [false, false, false, true, true, true, false, false, false, false]);
    assert!(s.advance_bytes(&gr, b">"));
    // Complete: a comma may continue, or the stop token end it.
    assert_eq!(v.allowed(&gr, &s, 11, &stop), [false, false, false, false, false, false, true, false, true, false, false]);
    // One-by-one checks agree with the walk, for every token in every state.
    for state in [&start, &s] {
        let all = v.allowed(&gr, state, 10, &stop);
        for id in 0..10u32 {
            assert_eq!(v.allows(&gr, state, id, &stop), all[id as usize], "token {id}");
        }
    }
    // Greedy under the grammar: the best allowed logit, even when refused ones are higher.
    let mut logits = vec![0.0, 0.5, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 8.0];
    assert_eq!(c.argmax(&start, &mut logits, &stop), Some(1));
    let mut logits = vec![1.0; 10];
    assert_eq!(c.mask(&start, &mut logits, &stop), 2);
    assert_eq!(logits.iter().filter(|l| l.is_finite()).count(), 2);
}

#[test]
fn the_top_k_allowed_are_those_of_masking_the_whole_row_first() {
    // 40 tokens: "a" (id 0), "b" (id 1), then 38 the grammar refuses ("x"), scored higher than
    // both, so that the lazy tries run out and the whole row is masked.
    let gr = Arc::new(g(r#"root ::= [ab]+"#));
    let mut pieces = vec!["a", "b"];
    pieces.extend(std::iter::repeat_n("x", 38));
    let c = Constraint { grammar: gr.clone(), vocabulary: Arc::new(vocab(&pieces)) };
    let mut scores: Vec<f32> = (0..40).map(|i| i as f32).collect();
    scores[0] = -1.0;
    let state = gr.start();
    assert_eq!(c.top_k(&state, &scores, 3, &[]), vec![(1.0, 1), (-1.0, 0)]);
    // Allowed tokens among the likeliest: found without masking, ties to the lower id.
    let even = vec![2.0; 40];
    assert_eq!(c.top_k(&state, &even, 1, &[]), vec![(2.0, 0)]);
    // A stop token only once the text is a sentence.
    let mut s = gr.start();
    assert!(s.advance_bytes(&gr, b"a"));
    assert_eq!(c.top_k(&s, &scores, 2, &[39]), vec![(39.0, 39), (1.0, 1)]);
    assert_eq!(c.top_k(&state, &scores, 2, &[39]), vec![(1.0, 1), (-1.0, 0)]);
}

#[test]
fn json_schema_subset_compiles_to_the_values_it_describes() {
    let schema = r#"{
        "title": "answer",
        "type": "object",
        "properties": {
            "label": {"enum": ["cat", "dog"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
            "n": {"type": "integer"},
            "ok": {"type": "boolean"}
        },
        "required": ["label", "tags"]
    }"#;
    let gr = json_schema("s.json", schema).unwrap();
    for ok in [r#"{"label": "cat", "tags": []}"#, r#"{"label":"dog","tags":["a","b\"c"],"n":-12,"ok":true}"#, r#"{"label": "cat", "tags": ["abc"], "ok": false}"#] {
        assert!(gr.matches(ok), "{ok}");
    }
    for bad in [
        r#"{"tags": [], "label": "cat"}"#,
        r#"{"label": "cow", "tags": []}"#,
        r#"{"label": "cat", "tags": ["abcd"]}"#,
        r#"{"label": "cat", "tags": ["a", "b", "c"]}"#,
        r#"{"label": "cat", "tags": [], "n": 1.5}"#,
        r#"{"label": "cat", "tags": [], "extra": 1}"#,
        r#"{"label": "cat"}"#,
    ] {
        assert!(!gr.matches(bad), "{bad}");
    }
    let only_optional = json_schema("o.json", r#"{"properties": {"a": {"type": "null"}, "b": {"const": 1}}}"#).unwrap();
    for ok in ["{}", r#"{"a": null}"#, r#"{"b": 1}"#, r#"{"a": null, "b": 1}"#] {
        assert!(only_optional.matches(ok), "{ok}");
    }
    assert!(!only_optional.matches(r#"{"b": 1, "a": null}"#));
}

#[test]
fn json_schema_errors_name_the_file_and_the_place() {
    let e = |s: &str| json_schema("s.json", s).unwrap_err().to_string();
    assert_eq!(e(r#"{"type": "object", "properties": {"a": {"oneOf": []}}}"#).split(" (").next().unwrap(), "s.json: /properties/a/oneOf: unsupported keyword");
    assert_eq!(e(r#"{"type": "array"}"#), "s.json: : an array needs `items`");
    assert_eq!(e(r#"{"type": "object", "properties": {}, "required": ["x"]}"#), "s.json: /required: \"x\" is not among the properties");
    assert!(e("{\n  \"type\": ").starts_with("s.json:2:"), "{}", e("{\n  \"type\": "));
    assert!(e(r#"{"type": ["string", "null"]}"#).contains("/type: expected one type name"));
}

//! Our GGML Q4_0 and Q8_0 quantizers against llama.cpp's reference quantizer, byte for byte.
//!
//! The fixture (tests/fixtures/ggml-quant/, made by scripts/fixtures/make_ggml_quant_fixtures.py
//! with llama.cpp's gguf-py, checked there against ggml's C quantize_row_q{4,8}_0_ref) is 64 blocks
//! of 32 little-endian f32 values: edge cases (zeros, ties, rounding boundaries, tiny and large
//! values, f16 ties for the scale) and random normal blocks, with the reference blocks for each type.

use std::path::PathBuf;

use xcomposer_llm::quant::{quantize, GgmlType};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ggml-quant").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn input() -> Vec<f32> {
    let bytes = fixture("input.f32");
    assert_eq!(bytes.len() % (32 * 4), 0, "input.f32 is not whole blocks of 32 f32");
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Asserts `ty`'s quantization of the fixture input equals the reference file, naming the first
/// differing block with its input and both encodings.
fn check(ty: GgmlType, reference: &str) {
    let x = input();
    let expected = fixture(reference);
    let got = quantize(ty, &x).expect("quantize");
    let bb = ty.block_bytes();
    assert_eq!(expected.len(), x.len() / 32 * bb, "{reference} has the wrong size for {ty:?}");
    assert_eq!(got.len(), expected.len(), "{ty:?}: quantize gave {} bytes, reference {}", got.len(), expected.len());
    if let Some(i) = got.chunks_exact(bb).zip(expected.chunks_exact(bb)).position(|(g, e)| g != e) {
        panic!(
            "{ty:?} differs from llama.cpp's reference first at block {i} of {}\n input: {:?}\n  ours: {:02x?}\n   ref: {:02x?}",
            got.len() / bb,
            &x[i * 32..(i + 1) * 32],
            &got[i * bb..(i + 1) * bb],
            &expected[i * bb..(i + 1) * bb],
        );
    }
}

#[test]
fn q4_0_matches_llama_cpp_reference() {
    check(GgmlType::Q4_0, "q4_0.bin");
}

#[test]
fn q8_0_matches_llama_cpp_reference() {
    check(GgmlType::Q8_0, "q8_0.bin");
}

#[test]
fn quantize_refuses_partial_blocks() {
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
        for n in [1, 31, 33, 63, 100] {
            assert!(quantize(ty, &vec![0.5; n]).is_err(), "{ty:?} accepted {n} values");
        }
        assert_eq!(quantize(ty, &[]).unwrap(), Vec::<u8>::new());
    }
}

#[test]
fn quantize_refuses_other_types() {
    let x = vec![0.5f32; 256];
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Bf16, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K] {
        assert!(quantize(ty, &x).is_err(), "quantize accepted {ty:?}");
    }
}

//! Fuzz target `tokenizer_text`: see `entries::tokenizer_text`.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    entries::tokenizer_text(data);
});

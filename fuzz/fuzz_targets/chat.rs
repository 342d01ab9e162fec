//! Fuzz target `chat`: see `entries::chat`.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    entries::chat(data);
});

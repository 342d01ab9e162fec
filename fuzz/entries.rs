//! The fuzzed entry points, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and the
//! stable replay test (`tests/fuzz_regressions.rs`), so both run exactly the same code. Each
//! takes arbitrary bytes and must return without panicking, whatever the library answers (it
//! returns whether the main reader accepted the input); each keeps inside the fuzzing bounds
//! (1 GiB, 1 s) through the libraries' own limits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use xcomposer_composer::{Article, captioner, render, spotter, vlm_selector};
use xcomposer_llm::readers::shard_index::ShardIndex;
use xcomposer_llm::weights::{SafetensorsWeights, WeightSource};
use xcomposer_llm::{ChatTemplate, DecoderConfig, Gguf, Message, Tokenizer, torch::TorchWeights};
use xcomposer_retrieval::{ClipTokenizer, ImageLibrary};
use xcomposer_vision::{ImageInput, Preprocess};

/// The names of the targets, as `fuzz/Cargo.toml`, `scripts/fuzz.sh` and
/// `tests/fuzz-regressions/<target>/` spell them.
pub const TARGETS: &[(&str, fn(&[u8]) -> bool)] = &[
    ("gguf", gguf),
    ("torch", torch),
    ("safetensors", safetensors),
    ("shard_index", shard_index),
    ("image", image),
    ("article", article),
    ("index", index),
    ("answers", answers),
    ("chat", chat),
    ("tokenizer", tokenizer),
    ("tokenizer_text", tokenizer_text),
];

/// At most this many ids go through the streaming decoder. Its window is bounded now (at most
/// `MAX_PENDING_IDS` ids wait for text, so a push decodes at most 32), which makes streaming
/// linear in the ids, but streaming every id of a 512-byte text (up to about 770 ids) still cost
/// a quarter more CPU time per input on the `tokenizer_text` corpus, while 64 ids reach all of
/// the decoder's paths (pieces, a flush of 16 pending ids, the restart after it).
const MAX_STREAMED: usize = 64;

/// The `tokenizer` target (a tokenizer built from the input) encodes at most this many
/// characters of its text and streams at most this many ids: long texts are the
/// `tokenizer_text` target's, on tokenizers built once (encoding them was three quarters of the
/// `tokenizer` target's time, building the tokenizer a twentieth).
const MAX_BUILT_TEXT: usize = 64;

/// Tensors larger than this are not dequantized (the data is in the input, so this only keeps
/// a few huge zero-size-type claims from dominating the run).
const MAX_ELEMENTS: usize = 1 << 24;

/// The scratch folder of this process (the file-based readers read their input from it), made
/// once, on a RAM file system when there is one: removing and re-making a folder on the disk's
/// file system for every input took half of the tokenizer target's time.
fn scratch() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("xcomposer-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

/// Writes `data` to `name` in the scratch sub-folder `sub` (made the first time; the file is
/// replaced on every call, so each target writes every file its reader looks for, or removes
/// it) and returns the folder.
fn write_scratch(sub: &str, name: &str, data: &[u8]) -> PathBuf {
    let dir = scratch().join(sub);
    let file = dir.join(name);
    if std::fs::write(&file, data).is_err() {
        std::fs::create_dir_all(file.parent().expect("file in a folder")).expect("scratch sub-folder");
        std::fs::write(&file, data).expect("scratch file");
    }
    dir
}

/// Loads every tensor a weight source lists; whether all loaded.
fn load_all(w: &dyn WeightSource, names: &[String]) -> bool {
    names.iter().map(|n| w.load(n).is_ok()).fold(true, |a, b| a & b)
}

/// GGUF: parse, dequantize every tensor, read the decoder config, tokenizer and chat template.
pub fn gguf(data: &[u8]) -> bool {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else { return false };
    for t in &g.tensors {
        if t.n_elements() <= MAX_ELEMENTS {
            let _ = g.dequantize(&t.name);
        }
    }
    let _ = DecoderConfig::from_gguf(&g);
    if let Ok(tok) = Tokenizer::from_gguf(&g)
        && let Ok(ids) = tok.encode("Hello, world! 你好")
    {
        let _ = tok.decode(&ids, false);
    }
    if let Ok(src) = g.get_str("tokenizer.chat_template")
        && let Ok(t) = ChatTemplate::new(src, "<s>", "</s>")
    {
        let _ = t.render(&[Message::new("user", "hi")], true);
    }
    true
}

/// PyTorch checkpoint (zip or legacy pickle): open, then load every tensor.
pub fn torch(data: &[u8]) -> bool {
    let dir = write_scratch("torch", "model.bin", data);
    let Ok(w) = TorchWeights::open_file(&dir.join("model.bin")) else { return false };
    load_all(&w, w.names())
}

/// Safetensors: open a folder holding `model.safetensors`, then load every tensor.
pub fn safetensors(data: &[u8]) -> bool {
    let dir = write_scratch("safetensors", "model.safetensors", data);
    let Ok(w) = SafetensorsWeights::open(&dir) else { return false };
    let names: Vec<String> = w.names().cloned().collect();
    load_all(&w, &names)
}

/// The shard file that the `shard_index` target writes beside its index.
const SHARD: &str = "model-00001-of-00001.safetensors";

/// A sharded safetensors checkpoint: the bytes up to the first NUL are its
/// `model.safetensors.index.json`, the rest the shard [`SHARD`]. The index is read (every shard
/// it lists must lie in its own folder), then the folder is opened through it and every tensor
/// loaded.
pub fn shard_index(data: &[u8]) -> bool {
    let (index, shard) = split_at_nul(data);
    let dir = write_scratch("shard_index", "model.safetensors.index.json", index);
    std::fs::write(dir.join(SHARD), shard).expect("scratch file");
    let Ok(idx) = ShardIndex::read(&dir.join("model.safetensors.index.json")) else { return false };
    for s in &idx.shards {
        assert_eq!(s.parent(), Some(dir.as_path()), "the index named a shard outside its folder: {}", s.display());
    }
    let Ok(w) = SafetensorsWeights::open(&dir) else { return false };
    let names: Vec<String> = w.names().cloned().collect();
    load_all(&w, &names)
}

/// CLIP's preprocessing in the `image` target at this side, not 224: the same decode, checks,
/// resize, crop and normalisation, on 12× fewer pixels (resizing every input to 224² was most
/// of the target's time).
const FUZZ_CLIP_SIDE: u32 = 64;

/// Image bytes: decode for CLIP's preprocessing at [`FUZZ_CLIP_SIDE`] (pixel limit lowered to
/// 256 Kpx, before and after the resize, to keep each run well under the 1 s bound of the
/// sanitized build: a 69×1 GIF resized to 15456×224 = 3.4 Mpx took longer there), then
/// preprocess.
pub fn image(data: &[u8]) -> bool {
    let input = ImageInput { max_pixels: 1 << 18, ..ImageInput::default() };
    let pre = Preprocess::clip(FUZZ_CLIP_SIDE);
    let Ok(img) = input.decode_for(data, Path::new("fuzz.img"), &pre) else { return false };
    let side = FUZZ_CLIP_SIDE as usize;
    pre.apply(&img.rgb).len() == 3 * side * side
}

/// `article.json`: parse and check, then render Markdown and HTML.
pub fn article(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Ok(a) = Article::from_json(&text, Path::new("article.json")) else { return false };
    let md = render::markdown(&a);
    let _ = render::image_links(&md);
    let _ = render::html(&a);
    true
}

/// A library's `index.json` (up to the first NUL) and its `features-tags.f32` (the rest): open
/// the library they describe.
pub fn index(data: &[u8]) -> bool {
    let (json, features) = data.split_at(data.iter().position(|&b| b == 0).unwrap_or(data.len()));
    let dir = write_scratch("index", ".xcomposer/index.json", json);
    let features_file = dir.join(".xcomposer/features-tags.f32");
    match features.get(1..) {
        Some(features) => std::fs::write(&features_file, features).expect("scratch file"),
        None => std::fs::remove_file(&features_file).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }).expect("scratch file removed"),
    }
    let Ok(lib) = ImageLibrary::open(&dir, None) else { return false };
    for i in 0..lib.len() {
        let _ = lib.path_of(i);
    }
    true
}

/// The spotter's, captioner's and selector's answer parsers; the first byte picks the number of
/// lines or choices.
pub fn answers(data: &[u8]) -> bool {
    let Some((&n, rest)) = data.split_first() else { return false };
    let n = (n % 24) as usize;
    let answer = String::from_utf8_lossy(rest);
    let _ = spotter::parse_spots(&answer, n);
    let paragraphs: Vec<String> = (0..n).map(|i| format!("Paragraph {i}.")).collect();
    let _ = spotter::spots_from_answer(&answer, &paragraphs, if n.is_multiple_of(2) { None } else { Some(n / 2) });
    let _ = captioner::cut_caption(&answer);
    let _ = captioner::cut_caption_as_original(&answer);
    let _ = captioner::caption_from_paragraph(&answer);
    let _ = vlm_selector::parse_choice(&answer, n);
    true
}

/// Chat templates: the text up to the first NUL is the template, the rest NUL-separated
/// messages (user and assistant in turn).
pub fn chat(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let source = parts.next().unwrap_or_default();
    let messages: Vec<Message> =
        parts.enumerate().map(|(i, c)| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, c)).collect();
    let Ok(t) = ChatTemplate::new(source, "<s>", "</s>") else { return false };
    t.render(&messages, messages.len() % 2 == 1).is_ok()
}

/// Tokenizers built from the input: the first byte picks the kind (GGUF-embedded,
/// `tokenizer.json`, SentencePiece `tokenizer.model`, CLIP's `vocab.json` + `merges.txt`), the
/// bytes up to the next NUL are the text, the rest the tokenizer's file (CLIP: vocab, NUL,
/// merges). The tokenizer is built, then [`use_tokenizer`] runs on the text's first
/// [`MAX_BUILT_TEXT`] characters (long texts: [`tokenizer_text`]).
pub fn tokenizer(data: &[u8]) -> bool {
    let Some((&kind, rest)) = data.split_first() else { return false };
    let (text, file) = split_at_nul(rest);
    let text = String::from_utf8_lossy(text);
    let text = text.char_indices().nth(MAX_BUILT_TEXT).map_or(&*text, |(at, _)| &text[..at]);
    match build_tokenizer(kind, file, "tokenizer") {
        Some(Built::Tok(tok)) => use_tokenizer(&tok, text, MAX_BUILT_TEXT),
        Some(Built::Clip(tok)) => use_clip(&tok, text),
        None => false,
    }
}

/// Texts on tokenizers built once, from the `tokenizer` target's seeds (one of each kind): the
/// first byte picks the tokenizer as there, the rest is the text, which [`use_tokenizer`] runs
/// on whole.
pub fn tokenizer_text(data: &[u8]) -> bool {
    static BUILT: std::sync::OnceLock<Vec<Built>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let seeds: [&[u8]; 4] = [
            include_bytes!("../tests/fuzz-regressions/tokenizer/seed-gguf-llama"),
            include_bytes!("../tests/fuzz-regressions/tokenizer/seed-tokenizer-json"),
            include_bytes!("../tests/fuzz-regressions/tokenizer/seed-sentencepiece"),
            include_bytes!("../tests/fuzz-regressions/tokenizer/seed-clip"),
        ];
        seeds
            .iter()
            .map(|seed| {
                let (kind, file) = (seed[0], split_at_nul(&seed[1..]).1);
                build_tokenizer(kind, file, "tokenizer_text").expect("the tokenizer seeds build")
            })
            .collect()
    });
    let Some((&kind, text)) = data.split_first() else { return false };
    let text = String::from_utf8_lossy(text);
    match &built[(kind % 4) as usize] {
        Built::Tok(tok) => use_tokenizer(tok, &text, MAX_STREAMED),
        Built::Clip(tok) => use_clip(tok, &text),
    }
}

/// A tokenizer of either family.
enum Built {
    /// The decoders' tokenizer (GGUF, `tokenizer.json`, SentencePiece).
    Tok(Tokenizer),
    /// CLIP's.
    Clip(ClipTokenizer),
}

/// Builds the tokenizer of `kind` (as [`tokenizer`] numbers them) from `file`, written to the
/// scratch sub-folder `sub` when the reader takes a file; `None` when it is refused.
fn build_tokenizer(kind: u8, file: &[u8], sub: &str) -> Option<Built> {
    let tok = match kind % 4 {
        0 => Gguf::from_bytes(file.to_vec()).ok().and_then(|g| Tokenizer::from_gguf(&g).ok()),
        1 => {
            let dir = write_scratch(sub, "tokenizer.json", file);
            Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), Some(0), Some(1), true).ok()
        }
        2 => {
            let dir = write_scratch(sub, "tokenizer.model", file);
            Tokenizer::from_sentencepiece_model(&dir.join("tokenizer.model")).ok()
        }
        _ => {
            let (vocab, merges) = split_at_nul(file);
            let dir = write_scratch(&format!("{sub}-clip"), "vocab.json", vocab);
            std::fs::write(dir.join("merges.txt"), merges).expect("scratch file");
            return ClipTokenizer::from_dir(&dir, 77).ok().map(Built::Clip);
        }
    };
    tok.map(Built::Tok)
}

/// Encodes `text`; its ids, and ids made of the text's byte pairs (out of range too), are
/// decoded whole and the first `streamed` of them streamed.
fn use_tokenizer(tok: &Tokenizer, text: &str, streamed: usize) -> bool {
    let Ok(mut ids) = tok.encode_prompt(text) else { return false };
    ids.extend(text.as_bytes().chunks(2).map(|c| c.iter().fold(0u32, |a, &b| a << 8 | b as u32)));
    let _ = tok.decode(&ids, true);
    let _ = tok.decode(&ids, false);
    let mut stream = xcomposer_llm::StreamDecoder::new();
    ids.iter().take(streamed).all(|&id| stream.push(tok, id).is_ok())
}

/// CLIP's tokenizer: encodes `text` at CLIP's context of 77.
fn use_clip(tok: &ClipTokenizer, text: &str) -> bool {
    let t = tok.encode(&[text]);
    t.ids[0].len() == 77 && t.mask[0].len() == 77
}

/// The bytes before the first NUL and those after it (empty when there is none).
fn split_at_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

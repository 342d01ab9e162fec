//! Where the CPU path's resident memory goes (issue 15's goal: peak ≤ 1.5 × the GGUF file + the
//! KV cache): loads a GGUF file with `LanguageModel::load`, then prefills a prompt and decodes
//! greedily as `bench llm` does, and prints after each phase the resident memory (VmRSS) and
//! the phase's own peak (VmHWM, reset before each phase through /proc/self/clear_refs), and the
//! bytes live on the heap and their peak (a counting global allocator).
//!
//! `cargo run -p xcomposer-llm --example mem_profile -- FILE.gguf [prompt tokens] [new tokens] [int16|f32|int8]`
//! (one thread; `XC_THREADS=N` for more)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::backend::Flex;
use xcomposer_llm::{LanguageModel, memory};
use xcomposer_llm::matvec::Activations;

/// The system allocator, counting the bytes live on the heap and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Resets VmHWM to the current VmRSS ([`memory::reset_peak_rss`]), and the heap's peak.
fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    if !memory::reset_peak_rss() {
        eprintln!("/proc/self/clear_refs not writable: phase peaks are then peaks since the start");
    }
}

fn report(phase: &str, t: Instant) {
    let (now, peak) = (memory::rss_mib().unwrap_or(f64::NAN), memory::peak_rss_mib().unwrap_or(f64::NAN));
    let mib = |a: &AtomicUsize| a.load(Ordering::Relaxed) as f64 / 1048576.0;
    println!(
        "{phase:<20} resident {now:6.1} MiB (phase peak {peak:6.1}), heap {:6.1} MiB (phase peak {:6.1})  {:.2} s",
        mib(&LIVE),
        mib(&PEAK),
        t.elapsed().as_secs_f64()
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = std::path::PathBuf::from(args.next().expect("usage: mem_profile FILE.gguf [prompt] [new] [mode]"));
    let prompt: usize = args.next().map_or(512, |v| v.parse().expect("prompt tokens: a number"));
    let new: usize = args.next().map_or(128, |v| v.parse().expect("new tokens: a number"));
    let mode = match args.next().as_deref() {
        None | Some("int16") => Activations::Int16,
        Some("f32") => Activations::F32,
        Some("int8") => Activations::Int8,
        Some(m) => panic!("mode {m}: int16, f32 or int8"),
    };
    let file_mib = std::fs::metadata(&path).map_or(f64::NAN, |m| m.len() as f64 / 1048576.0);
    let threads = std::env::var("XC_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let t = Instant::now();
        report("start", t);
        reset_peak();
        let mut model = LanguageModel::<Flex>::load(&path, &Default::default()).expect("a model");
        report("load", t);
        let d = model.decoder.burn_mut().expect("burn's decoder");
        d.set_activations(mode);
        let c = d.config.clone();
        let kv = 2 * c.num_layers * c.num_kv_heads * c.head_dim * (prompt + new) * 4;
        let ids: Vec<u32> = (0..prompt).map(|i| (i * 7919 % c.vocab_size) as u32).collect();
        let d = model.decoder.burn().expect("burn's decoder");
        let mut cache = d.new_cache();
        reset_peak();
        let t = Instant::now();
        let logits = d.forward_ids(&ids, &mut cache, 1);
        let mut next = argmax(logits.into_data().into_vec::<f32>().expect("f32 logits"));
        report(&format!("prefill of {prompt}"), t);
        reset_peak();
        let t = Instant::now();
        for _ in 0..new {
            let logits = d.forward_ids(&[next], &mut cache, 1);
            next = argmax(logits.into_data().into_vec::<f32>().expect("f32 logits"));
        }
        report(&format!("{new} decode steps"), t);
        println!(
            "file {file_mib:.1} MiB, KV cache of {} positions {:.1} MiB: goal 1.5 x file + KV = {:.1} MiB",
            prompt + new,
            kv as f64 / 1048576.0,
            1.5 * file_mib + kv as f64 / 1048576.0
        );
    });
}

fn argmax(v: Vec<f32>) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0 as u32
}

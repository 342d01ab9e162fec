//! Micro-benchmark of the one-token products (issue 15): times `matvec_many` on every 2-D
//! block-encoded tensor of a GGUF file, one thread, per activation mode, and prints the fastest repeat's milliseconds
//! per token (all layers' matrices once, as a decode step multiplies them) and GB/s of weights.
//!
//! `cargo run -p xcomposer-llm --example kernel_bench -- FILE.gguf [repeats]`; with `PREFILL=1`
//! in the environment, the prefill products (`QMatrix::matmul_with`, f32 and 16-bit) of 512
//! positions instead (`PREFILL=int16`: 16-bit only), with wall and thread CPU time.

use std::collections::BTreeMap;
use std::time::Instant;

use xcomposer_llm::Gguf;
use xcomposer_llm::matvec::{ActScratch, Activations, QMatrix, matvec_many};

/// This thread's CPU time in seconds: on a machine shared with other work it counts only the
/// time this thread ran (the pool of one thread runs every product on it), not its waits.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: kernel_bench FILE.gguf [repeats]");
    let repeats: usize = args.next().map_or(20, |r| r.parse().expect("repeats: a number"));
    let g = Gguf::open(&path).expect("a GGUF file");
    let mut mats = Vec::new();
    // The matrices together in huge pages, as a loaded model keeps them.
    let arena = xcomposer_llm::arena::Arena::new();
    for t in &g.tensors {
        let shape = t.shape();
        if shape.len() != 2 || !xcomposer_llm::kernels::supports(t.ggml_type) {
            continue;
        }
        let m = QMatrix::from_rows_in(Some(&arena), t.ggml_type, shape[1], &[(g.tensor_bytes(t), (0..shape[0]).collect())]).expect("rows");
        mats.push((t.name.clone(), m));
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        if std::env::var_os("PREFILL").is_some() {
            // The prefill products: 512 positions through every matrix but the head, once.
            let n = 512;
            // `PREFILL=int16`: the 16-bit products only.
            let modes = if std::env::var("PREFILL").as_deref() == Ok("int16") { vec![Activations::Int16] } else { vec![Activations::F32, Activations::Int16] };
            for act in modes {
                let (mut total, mut cpu) = (0f64, 0f64);
                let mut by_kind: BTreeMap<String, f64> = BTreeMap::new();
                for (name, m) in mats.iter().filter(|(n, _)| n.starts_with("blk.")) {
                    let x: Vec<f32> = (0..n * m.cols).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
                    let mut y = vec![0f32; n * m.rows];
                    let (t, c) = (Instant::now(), thread_cpu_s());
                    m.matmul_with(&x, n, &mut y, act);
                    let s = t.elapsed().as_secs_f64();
                    cpu += thread_cpu_s() - c;
                    total += s;
                    *by_kind.entry(format!("{:?} {}x{} {}", m.ty, m.rows, m.cols, name.split('.').nth(2).unwrap_or(""))).or_default() += s;
                }
                println!("{act:?} prefill products of {n} positions: {total:.3} s ({:.0} positions/s), {cpu:.3} s of CPU time ({:.0} positions/s)", n as f64 / total, n as f64 / cpu);
                for (k, s) in &by_kind {
                    println!("  {k:<40} {:.3} s", s);
                }
            }
            return;
        }
        for act in [Activations::F32, Activations::Int16, Activations::Int8] {
            let mut by_kind: BTreeMap<String, (f64, usize)> = BTreeMap::new();
            let mut scratch = ActScratch::default();
            for (name, m) in &mats {
                let x: Vec<f32> = (0..m.cols).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
                let mut y = vec![0f32; m.rows];
                matvec_many(&x, vec![(m, &mut y[..])], act, &mut scratch);
                // The fastest of the repeats: on a shared machine the others include waits.
                let mut s = f64::INFINITY;
                for _ in 0..repeats {
                    let t = Instant::now();
                    matvec_many(&x, vec![(m, &mut y[..])], act, &mut scratch);
                    s = s.min(t.elapsed().as_secs_f64());
                }
                let kind = format!("{:?} {}x{} {}", m.ty, m.rows, m.cols, name.split('.').filter(|p| p.parse::<usize>().is_err()).collect::<Vec<_>>().join("."));
                let e = by_kind.entry(kind).or_default();
                e.0 += s;
                e.1 += QMatrix::row_bytes(m.ty, m.cols) * m.rows;
            }
            let total: f64 = by_kind.values().map(|v| v.0).sum();
            println!("{act:?}: {:.2} ms a token", total * 1e3);
            for (k, (s, bytes)) in &by_kind {
                println!("  {k:<50} {:7.3} ms  {:5.1} GB/s", s * 1e3, *bytes as f64 / s / 1e9);
            }
        }
    });
}

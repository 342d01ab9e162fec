//! Softmax attention over the host KV cache (`[position][kv head][head_dim]` per layer): a
//! step's query heads over every cached position (a task per query head, or per kv head whose
//! query heads then read each cached value once), and a prompt chunk's rows causally (the query
//! heads sharing a kv head together).

use rayon::prelude::*;

/// Softmax attention of every query head of `q` over the `len` cached positions of its kv head
/// (query head `h` reads kv head `h / (heads / kv_heads)`), into `out`, in tasks across rayon's
/// threads of one query head or of a kv head's (which then read each cached value once); each
/// head's arithmetic is the same, in the same order, either way.
pub(super) fn attend(q: &[f32], kv: &(Vec<f32>, Vec<f32>), len: usize, kv_heads: usize, hd: usize, out: &mut [f32]) {
    let g = q.len() / hd.max(1) / kv_heads.max(1);
    // With several threads and a cache short enough that a kv head's values stay in the cache
    // while each of its query heads reads them, a task per query head, so that the threads share
    // a step's attention evenly (SmolLM2's three kv heads split 2:1 over two threads); else a task
    // per kv head, its query heads reading each value once.
    let heads_per_task = if len <= SHORT_CACHE && rayon::current_num_threads() > 1 { 1 } else { g.max(1) };
    attend_in_tasks(q, kv, len, kv_heads, hd, out, heads_per_task);
}

/// [`attend`] in tasks of `heads_per_task` query heads (a divisor of a kv head's): each head's
/// arithmetic is the same whatever the tasks.
fn attend_in_tasks(q: &[f32], kv: &(Vec<f32>, Vec<f32>), len: usize, kv_heads: usize, hd: usize, out: &mut [f32], heads_per_task: usize) {
    let g = (q.len() / hd.max(1) / kv_heads.max(1)).max(1);
    let (keys, values) = (&kv.0[..], &kv.1[..]);
    let kv = KvView { keys, values, len, kv_heads, hd, scale: 1.0 / (hd as f32).sqrt() };
    // Very short caches are not worth waking other threads for.
    let min_tasks = if len < TINY_CACHE { q.len() / hd.max(1) / heads_per_task } else { 1 };
    out.par_chunks_mut(heads_per_task * hd).with_min_len(min_tasks.max(1)).enumerate().for_each(|(i, o)| {
        attend_heads(&q[i * heads_per_task * hd..(i + 1) * heads_per_task * hd], &kv, i * heads_per_task / g, o)
    });
}

/// The query heads `qs` (all of kv head `kvh`'s, or some) over the cache, into `o`: the AVX2 +
/// FMA kernel for its head size where the CPU has them, else the portable one.
fn attend_heads(qs: &[f32], kv: &KvView, kvh: usize, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::matvec::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time); each head size is the
        // kernel's eight values times its chunks.
        unsafe {
            match kv.hd {
                16 => attend_group_fma::<2>(qs, kv, kvh, o),
                32 => attend_group_fma::<4>(qs, kv, kvh, o),
                64 => attend_group_fma::<8>(qs, kv, kvh, o),
                128 => attend_group_fma::<16>(qs, kv, kvh, o),
                _ => attend_group_avx2(qs, kv, kvh, o),
            }
        }
        return;
    }
    attend_group(qs, kv, kvh, o);
}

/// Cached positions up to which a step's attention runs a task per query head ([`attend`]):
/// SmolLM2's kv head then holds 256 KB of values.
const SHORT_CACHE: usize = 1024;

/// Cached positions below which a step's attention stays on one thread ([`attend`]).
const TINY_CACHE: usize = 32;

/// One layer's cached keys and values, `[position][kv head][head_dim]`.
struct KvView<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    len: usize,
    kv_heads: usize,
    hd: usize,
    /// `1 / √head_dim`.
    scale: f32,
}

/// [`attend_group`] compiled for AVX2: wider vectors, the same arithmetic (nothing is contracted
/// into FMA), so the same results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_group_avx2(qs: &[f32], kv: &KvView, kvh: usize, o: &mut [f32]) {
    attend_group(qs, kv, kvh, o)
}

/// [`attend_group`] in AVX2 + FMA for heads of `CH` × 8 values: the scores of
/// eight positions at a time (eight independent FMA chains, summed across lanes together, where
/// one position at a time waited on each FMA), and each head's output kept in registers over
/// the positions. The same softmax; the sums in another order and fused, so results differ from
/// [`attend_group`]'s by rounding.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `kv.hd` is `8 · CH`; `qs` is whole heads
/// and `o` as long; the cache holds `kv.len` positions of `kv.kv_heads` heads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_group_fma<const CH: usize>(qs: &[f32], kv: &KvView, kvh: usize, o: &mut [f32]) {
    use std::arch::x86_64::*;
    let (len, hd) = (kv.len, kv.hd);
    let g = qs.len() / hd;
    assert!(hd == 8 * CH && o.len() == qs.len(), "attend_group_fma: heads of {hd}");
    assert!(kv.keys.len() >= len * kv.kv_heads * hd && kv.values.len() >= len * kv.kv_heads * hd && kvh < kv.kv_heads, "attend_group_fma: cache");
    let stride = kv.kv_heads * hd;
    let key = |t: usize| kv.keys.as_ptr().wrapping_add(t * stride + kvh * hd);
    let value = |t: usize| kv.values.as_ptr().wrapping_add(t * stride + kvh * hd);
    let mut p = vec![0f32; g * len];
    // SAFETY: every read is inside a head of `qs`, a cached position's head, or `p` / `o`
    // (lengths checked above); the CPU has the features.
    unsafe {
        for (j, qh) in qs.chunks_exact(hd).enumerate() {
            let ps = p.as_mut_ptr().add(j * len);
            let mut t = 0;
            while t + 8 <= len {
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..8 * CH).step_by(8) {
                    let qv = _mm256_loadu_ps(qh.as_ptr().add(c));
                    for (u, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(key(t + u).add(c)), *a);
                    }
                }
                // Lane u = the sum of acc[u]'s lanes.
                let h = |a: __m256, b: __m256| _mm256_hadd_ps(a, b);
                let (u0, u1) = (h(h(acc[0], acc[1]), h(acc[2], acc[3])), h(h(acc[4], acc[5]), h(acc[6], acc[7])));
                let sums = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
                _mm256_storeu_ps(ps.add(t), _mm256_mul_ps(sums, _mm256_set1_ps(kv.scale)));
                t += 8;
            }
            while t < len {
                let mut a = _mm256_setzero_ps();
                for c in (0..8 * CH).step_by(8) {
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(qh.as_ptr().add(c)), _mm256_loadu_ps(key(t).add(c)), a);
                }
                *ps.add(t) = crate::kernels::x86::hsum(a) * kv.scale;
                t += 1;
            }
        }
        let sums = exp_rows_fma(&mut p, len);
        let inv: Vec<f32> = sums.iter().map(|s| s.recip()).collect();
        weighted_values_fma(&p, len, len, &inv, value(0), stride, o);
    }
}

/// Each row of `len` scores in `p` replaced by exp(score − the row's max); the rows' sums of
/// those (the softmax's denominators, left to the caller to divide by).
#[inline]
fn exp_rows(p: &mut [f32], len: usize) -> Vec<f32> {
    p.chunks_exact_mut(len)
        .map(|ps| {
            let max = ps.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in ps.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            sum
        })
        .collect()
}

/// [`exp_rows`] in AVX2 + FMA: each row's maximum and sum in eight lanes, and exp(x) by range
/// reduction to 2ⁿ · e^r with a degree-6 polynomial for e^r (Cephes' expf: relative error about
/// 1e-7) eight scores at a time, where libm's call per score took a fifth of a prompt's
/// attention.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_rows_fma(p: &mut [f32], len: usize) -> Vec<f32> {
    // SAFETY: as this function's.
    p.chunks_exact_mut(len).map(|ps| unsafe { exp_row_fma(ps) }).collect()
}

/// [`exp_rows_fma`] of one row: its sum.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_row_fma(ps: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let len = ps.len();
    let (lanes, tail) = (len / 8 * 8, len % 8);
    let ptr = ps.as_mut_ptr();
    // SAFETY: every load and store is inside `ps` (whole groups of eight below `lanes`).
    unsafe {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for t in (0..lanes).step_by(8) {
            m = _mm256_max_ps(m, _mm256_loadu_ps(ptr.add(t)));
        }
        let mut lane = [0f32; 8];
        _mm256_storeu_ps(lane.as_mut_ptr(), m);
        let max = ps[lanes..].iter().chain(&lane).copied().fold(f32::NEG_INFINITY, f32::max);
        let (mx, mut acc) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        for t in (0..lanes).step_by(8) {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(t)), mx));
            _mm256_storeu_ps(ptr.add(t), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut sum = crate::kernels::x86::hsum(acc);
        for s in ps[len - tail..].iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        sum
    }
}

/// e^x of eight values for x up to 88.37 (past it, e^88.37; below −87.3 about 1e-38, not 0), as
/// Cephes' expf: n = round(x / ln 2), r = x − n ln 2 in two parts, e^r by its degree-6
/// polynomial, times 2ⁿ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp256(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.336_55)), _mm256_set1_ps(88.376_26));
    let n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(0.5)));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
    let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
    _mm256_mul_ps(y, pow2n)
}

/// The query heads `qs` that share kv head `kvh`, over its cached positions, into `o`.
#[inline(always)]
fn attend_group(qs: &[f32], kv: &KvView, kvh: usize, o: &mut [f32]) {
    let (len, hd) = (kv.len, kv.hd);
    let g = qs.len() / hd;
    let at = |t: usize| (t * kv.kv_heads + kvh) * hd..(t * kv.kv_heads + kvh + 1) * hd;
    // Scores, head-major: p[j·len + t] for query head j of the group.
    let mut p = vec![0f32; g * len];
    for t in 0..len {
        let key = &kv.keys[at(t)];
        for (j, qh) in qs.chunks_exact(hd).enumerate() {
            p[j * len + t] = dot(qh, key) * kv.scale;
        }
    }
    let sums = exp_rows(&mut p, len);
    o.fill(0.0);
    for t in 0..len {
        let value = &kv.values[at(t)];
        for (j, oh) in o.chunks_exact_mut(hd).enumerate() {
            let w = p[j * len + t] / sums[j];
            oh.iter_mut().zip(value).for_each(|(o, v)| *o += w * v);
        }
    }
}

/// A dot product in eight lanes (so that it vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (a, b) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f32 = a.chunks_exact(8).remainder().iter().zip(b.chunks_exact(8).remainder()).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}


/// Causal softmax attention of a prompt chunk: query row `i` of `q` (rows of `heads · hd` values,
/// the queries of position `past + i`) over the first `past + i + 1` cached positions (the cache
/// already holds the chunk's keys and values), into `out` (as long as `q`), rows across rayon's
/// threads. With AVX2 + FMA and heads of a multiple of eight values, each kv head's keys are
/// transposed once for the chunk (`[hd][position]`), so that the scores of 24 positions for up
/// to three query heads come from one pass of loads and broadcasts with no horizontal sums, and
/// each cached value meets up to three heads at once; elsewhere a row is a step's [`attend`].
/// `shape` is (query heads, kv heads, head size); `keys_t` is scratch, kept to reuse its memory.
pub(super) fn attend_chunk(q: &[f32], kv: &(Vec<f32>, Vec<f32>), past: usize, shape: (usize, usize, usize), out: &mut [f32], keys_t: &mut Vec<f32>) {
    let (heads, kv_heads, hd) = shape;
    let width = heads * hd;
    #[cfg(target_arch = "x86_64")]
    if crate::matvec::has_avx2_fma() && hd.is_multiple_of(8) && width > 0 {
        let rows = q.len() / width;
        let (len, stride, g) = (past + rows, kv_heads * hd, heads / kv_heads);
        let lp = len.next_multiple_of(8);
        assert!(kv.0.len() >= len * stride && kv.1.len() >= len * stride && out.len() == q.len(), "attend_chunk: {len} positions");
        // Keys of kv head h at kt[h·hd·lp + c·lp + t], zero past `len`.
        keys_t.resize(kv_heads * hd * lp, 0.0);
        let kt = &mut keys_t[..kv_heads * hd * lp];
        kt.par_chunks_mut(hd * lp).enumerate().for_each(|(h, kt)| {
            for t in 0..len {
                for (c, &k) in kv.0[t * stride + h * hd..][..hd].iter().enumerate() {
                    kt[c * lp + t] = k;
                }
            }
            for row in kt.chunks_exact_mut(lp) {
                row[len..].fill(0.0);
            }
        });
        let kt = &*kt;
        let scale = 1.0 / (hd as f32).sqrt();
        out.par_chunks_mut(width).zip(q.par_chunks(width)).enumerate().for_each_init(Vec::new, |p, (i, (o, q))| {
            for h in 0..kv_heads {
                let group = h * g * hd..(h + 1) * g * hd;
                let keys = &kt[h * hd * lp..(h + 1) * hd * lp];
                // SAFETY: the CPU has AVX2 and FMA; `keys` holds `hd` rows of `lp` ≥ `past + i + 1`
                // positions, the cache `len` positions of `kv_heads` heads (checked above).
                unsafe { attend_row_fma(&q[group.clone()], keys, lp, &kv.1[h * hd..], stride, past + i + 1, scale, p, &mut o[group]) };
            }
        });
        return;
    }
    out.par_chunks_mut(width.max(1)).zip(q.par_chunks(width.max(1))).enumerate().for_each(|(i, (o, q))| attend(q, kv, past + i + 1, kv_heads, hd, o));
}

/// The query heads `qs` (of `hd` values, a multiple of eight) of one kv head over its first
/// `n` positions: `keys` transposed (`hd` rows of `lp` ≥ `n` rounded up to eight positions,
/// zero past the cache), `values` from the head's first value with `stride` between
/// positions; `p` is scratch for the scores.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the lengths are as above (`values` holds `n` positions).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_row_fma(qs: &[f32], keys: &[f32], lp: usize, values: &[f32], stride: usize, n: usize, scale: f32, p: &mut Vec<f32>, o: &mut [f32]) {
    let hd = keys.len() / lp;
    let g = qs.len() / hd;
    assert!(n <= lp && lp.is_multiple_of(8) && o.len() == qs.len() && (n == 0 || values.len() >= (n - 1) * stride + hd), "attend_row_fma: {n} of {lp} positions");
    // The scores, then a 1/sum per head.
    p.resize(g * lp + g, 0.0);
    let (p, inv) = p.split_at_mut(g * lp);
    let mut h = 0;
    while h < g {
        let take = (g - h).min(3);
        let (qh, ph) = (&qs[h * hd..(h + take) * hd], &mut p[h * lp..(h + take) * lp]);
        // SAFETY: as this function's.
        unsafe {
            match take {
                3 => scores_fma::<3>(qh, keys, lp, n, scale, ph),
                2 => scores_fma::<2>(qh, keys, lp, n, scale, ph),
                _ => scores_fma::<1>(qh, keys, lp, n, scale, ph),
            }
        }
        h += take;
    }
    for (row, inv) in p.chunks_exact_mut(lp).zip(inv.iter_mut()) {
        // SAFETY: as this function's.
        *inv = unsafe { exp_row_fma(&mut row[..n]) }.recip();
    }
    // SAFETY: as this function's.
    unsafe { weighted_values_fma(p, lp, n, inv, values.as_ptr(), stride, o) };
}

/// Scores `p[h·lp + t]` = `qs[h] · keys[·][t] · scale` of `H` query heads for the positions
/// `t` < `n` rounded up to eight (keys transposed, rows of `lp`), 24 positions at a time.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `qs` holds `H` heads of `keys.len() / lp` values, `p` `H` rows
/// of `lp`, and `n` ≤ `lp`, a multiple of eight.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_fma<const H: usize>(qs: &[f32], keys: &[f32], lp: usize, n: usize, scale: f32, p: &mut [f32]) {
    let end = n.next_multiple_of(8);
    let mut t = 0;
    // SAFETY: as this function's.
    unsafe {
        while t + 24 <= end {
            scores_block_fma::<H, 3>(qs, keys, lp, t, scale, p);
            t += 24;
        }
        while t < end {
            scores_block_fma::<H, 1>(qs, keys, lp, t, scale, p);
            t += 8;
        }
    }
}

/// [`scores_fma`] of positions `t..t + 8V`.
///
/// # Safety
/// As [`scores_fma`], with `t + 8V` ≤ `lp`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_block_fma<const H: usize, const V: usize>(qs: &[f32], keys: &[f32], lp: usize, t: usize, scale: f32, p: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = keys.len() / lp;
    // SAFETY: every load is inside `keys` (rows of `lp`, `t + 8V` ≤ `lp`) or `qs`, every store
    // inside `p`.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); V]; H];
        let (kp, qp) = (keys.as_ptr().add(t), qs.as_ptr());
        for c in 0..hd {
            let mut k = [_mm256_setzero_ps(); V];
            for (v, k) in k.iter_mut().enumerate() {
                *k = _mm256_loadu_ps(kp.add(c * lp + 8 * v));
            }
            for (h, acc) in acc.iter_mut().enumerate() {
                let qb = _mm256_set1_ps(*qp.add(h * hd + c));
                for (a, &k) in acc.iter_mut().zip(&k) {
                    *a = _mm256_fmadd_ps(qb, k, *a);
                }
            }
        }
        let sc = _mm256_set1_ps(scale);
        for (h, acc) in acc.iter().enumerate() {
            for (v, &a) in acc.iter().enumerate() {
                _mm256_storeu_ps(p.as_mut_ptr().add(h * lp + t + 8 * v), _mm256_mul_ps(a, sc));
            }
        }
    }
}

/// `o[h]` = `inv[h]` · Σ_t `p[h·ps + t]` · value `t`, for the `o.len() / hd` heads and `t` < `n`
/// (value `t` at `values + t·stride`, `hd` = `8 · k` values): up to three heads at a time share
/// each load of 24 or 32 of a value's values.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `p` holds the heads' rows of `ps` ≥ `n` scores, `values`
/// `n` positions of `hd` values `stride` apart, `inv` a value per head; `o` whole heads of a
/// multiple of eight values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_values_fma(p: &[f32], ps: usize, n: usize, inv: &[f32], values: *const f32, stride: usize, o: &mut [f32]) {
    let heads = inv.len();
    let hd = o.len() / heads.max(1);
    let mut h = 0;
    while h < heads {
        let take = (heads - h).min(3);
        let mut c = 0;
        while c < hd / 8 {
            // Accumulators, value vectors and a broadcast within AVX2's 16 registers: three
            // heads take three vectors at a time (3 × 4 spilled an accumulator to the stack
            // every position), fewer heads four.
            let w = (hd / 8 - c).min(if take == 3 { 3 } else { 4 });
            // SAFETY: as this function's, for heads h..h + take and the values' vectors c..c + w.
            c += unsafe {
                match (take, w) {
                    (3, 3) => pv_block_fma::<3, 3>(p, ps, n, inv, values, stride, o, h, c),
                    (3, 2) => pv_block_fma::<3, 2>(p, ps, n, inv, values, stride, o, h, c),
                    (3, _) => pv_block_fma::<3, 1>(p, ps, n, inv, values, stride, o, h, c),
                    (2, 4) => pv_block_fma::<2, 4>(p, ps, n, inv, values, stride, o, h, c),
                    (2, _) => pv_block_fma::<2, 1>(p, ps, n, inv, values, stride, o, h, c),
                    (_, 4) => pv_block_fma::<1, 4>(p, ps, n, inv, values, stride, o, h, c),
                    _ => pv_block_fma::<1, 1>(p, ps, n, inv, values, stride, o, h, c),
                }
            };
        }
        h += take;
    }
}

/// [`weighted_values_fma`] of heads `h..h + H` and the value vectors `c..c + W`; returns `W`,
/// the vectors it took.
///
/// # Safety
/// As [`weighted_values_fma`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_block_fma<const H: usize, const W: usize>(p: &[f32], ps: usize, n: usize, inv: &[f32], values: *const f32, stride: usize, o: &mut [f32], h: usize, c: usize) -> usize {
    use std::arch::x86_64::*;
    let hd = o.len() / inv.len();
    // SAFETY: as the caller's.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); W]; H];
        let pp = p.as_ptr().add(h * ps);
        for t in 0..n {
            let vp = values.add(t * stride + 8 * c);
            let mut v = [_mm256_setzero_ps(); W];
            for (w, v) in v.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(vp.add(8 * w));
            }
            for (j, acc) in acc.iter_mut().enumerate() {
                let pb = _mm256_set1_ps(*pp.add(j * ps + t));
                for (a, &v) in acc.iter_mut().zip(&v) {
                    *a = _mm256_fmadd_ps(pb, v, *a);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            let s = _mm256_set1_ps(inv[h + j]);
            for (w, &a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.as_mut_ptr().add((h + j) * hd + 8 * (c + w)), _mm256_mul_ps(a, s));
            }
        }
    }
    W
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Causal attention in f64, written out: row `i`'s head `h` over positions `..= past + i` of
    /// kv head `h / (heads / kv_heads)`.
    fn reference(q: &[f32], kv: &(Vec<f32>, Vec<f32>), past: usize, heads: usize, kv_heads: usize, hd: usize) -> Vec<f32> {
        let (width, stride, g) = (heads * hd, kv_heads * hd, heads / kv_heads);
        let mut out = vec![0f32; q.len()];
        for (i, (qr, or)) in q.chunks_exact(width).zip(out.chunks_exact_mut(width)).enumerate() {
            for (h, (qh, oh)) in qr.chunks_exact(hd).zip(or.chunks_exact_mut(hd)).enumerate() {
                let at = |t: usize| t * stride + h / g * hd..t * stride + h / g * hd + hd;
                let scores: Vec<f64> = (0..=past + i).map(|t| qh.iter().zip(&kv.0[at(t)]).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (hd as f64).sqrt()).collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (c, o) in oh.iter_mut().enumerate() {
                    *o = (e.iter().enumerate().map(|(t, w)| w * kv.1[at(t)][c] as f64).sum::<f64>() / sum) as f32;
                }
            }
        }
        out
    }

    /// Values in −2..2 from a linear congruential generator seeded with `seed`.
    fn uniform(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 * 4.0 - 2.0
        }
    }

    #[test]
    fn a_chunk_attends_causally_as_written_out() {
        let mut random = uniform(7);
        // (heads, kv heads, head size): SmolLM2's groups of three, Qwen2.5's of seven (3 + 3 + 1),
        // groups of three with 32 values (value vectors 3 + 1), one head a group, 24 values
        // (vectors one at a time), and 20 (no vector kernel).
        for (heads, kv_heads, hd) in [(9, 3, 64), (14, 2, 64), (6, 2, 32), (4, 4, 32), (2, 1, 128), (3, 1, 24), (2, 2, 20)] {
            for (past, rows) in [(0, 19), (37, 5), (3, 1)] {
                let stride = kv_heads * hd;
                let kv: (Vec<f32>, Vec<f32>) = ((0..(past + rows) * stride).map(|_| random()).collect(), (0..(past + rows) * stride).map(|_| random()).collect());
                let q: Vec<f32> = (0..rows * heads * hd).map(|_| random()).collect();
                let mut got = vec![f32::NAN; q.len()];
                attend_chunk(&q, &kv, past, (heads, kv_heads, hd), &mut got, &mut Vec::new());
                let want = reference(&q, &kv, past, heads, kv_heads, hd);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() <= 1e-5, "heads {heads}/{kv_heads} of {hd}, past {past}: value {j} {g} against {w}");
                }
            }
        }
    }

    #[test]
    fn a_step_attends_alike_a_task_per_query_head_and_per_kv_head() {
        let mut random = uniform(11);
        // Past the one-thread length, and past the length where `attend` keeps kv heads together.
        for (heads, kv_heads, hd) in [(9, 3, 64), (14, 2, 64), (6, 2, 32), (3, 1, 24)] {
            for len in [TINY_CACHE, 100, SHORT_CACHE + 5] {
                let stride = kv_heads * hd;
                let kv: (Vec<f32>, Vec<f32>) = ((0..len * stride).map(|_| random()).collect(), (0..len * stride).map(|_| random()).collect());
                let q: Vec<f32> = (0..heads * hd).map(|_| random()).collect();
                let mut got = vec![f32::NAN; q.len()];
                attend_in_tasks(&q, &kv, len, kv_heads, hd, &mut got, 1);
                // Each kv head's query heads together, as longer caches run them.
                let view = KvView { keys: &kv.0, values: &kv.1, len, kv_heads, hd, scale: 1.0 / (hd as f32).sqrt() };
                let g = heads / kv_heads;
                let mut grouped = vec![f32::NAN; q.len()];
                for (kvh, (qs, o)) in q.chunks_exact(g * hd).zip(grouped.chunks_exact_mut(g * hd)).enumerate() {
                    attend_heads(qs, &view, kvh, o);
                }
                assert_eq!(got, grouped, "heads {heads}/{kv_heads} of {hd}, {len} positions: split per query head");
                let want = reference(&q, &kv, len - 1, heads, kv_heads, hd);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() <= 1e-5, "heads {heads}/{kv_heads} of {hd}, {len} positions: value {j} {g} against {w}");
                }
            }
        }
    }

    #[test]
    fn vector_exp_rows_match_libm_to_its_rounding() {
        if !crate::matvec::has_avx2_fma() {
            return;
        }
        // Rows of 13 and 40 scores (tails and whole groups), down to past exp's range.
        for len in [13, 40] {
            let scores: Vec<f32> = (0..2 * len).map(|i| ((i * 37 % 23) as f32 - 11.0) * if i % 5 == 0 { 9.0 } else { 0.7 }).collect();
            let (mut want, mut got) = (scores.clone(), scores.clone());
            let want_sums = exp_rows(&mut want, len);
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let got_sums = unsafe { exp_rows_fma(&mut got, len) };
            for (g, w) in got.iter().zip(&want).chain(got_sums.iter().zip(&want_sums)) {
                assert!((g - w).abs() <= 2e-7 * w.abs().max(1e-30), "{g} against libm's {w}");
            }
        }
    }

}

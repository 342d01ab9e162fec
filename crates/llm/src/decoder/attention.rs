//! Softmax attention over the host KV cache (`[position][kv head][head_dim]` per layer): a
//! step's query heads over every cached position, and a prompt chunk's rows causally; the query
//! heads sharing a kv head go together so that each cached key and value is read once for them.

use rayon::prelude::*;

/// Softmax attention of every query head of `q` over the `len` cached positions of its kv head
/// (query head `h` reads kv head `h / (heads / kv_heads)`), into `out`. The query heads sharing a
/// kv head go together, so that each cached key and value is read once a step, not once per
/// query head; each head's arithmetic is the same, in the same order, as one head alone.
pub(super) fn attend(q: &[f32], kv: &(Vec<f32>, Vec<f32>), len: usize, kv_heads: usize, hd: usize, out: &mut [f32]) {
    let g = q.len() / hd / kv_heads;
    let (keys, values) = (&kv.0[..], &kv.1[..]);
    let kv = KvView { keys, values, len, kv_heads, hd, scale: 1.0 / (hd as f32).sqrt() };
    // Short caches are not worth waking other threads for.
    let min_groups = if len < 128 { kv_heads } else { 1 };
    let avx2 = crate::matvec::has_avx2_fma();
    out.par_chunks_mut(g * hd).with_min_len(min_groups).enumerate().for_each(|(kvh, o)| {
        let qs = &q[kvh * g * hd..(kvh + 1) * g * hd];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time); each head size is the
            // kernel's eight values times its chunks.
            unsafe {
                match hd {
                    16 => attend_group_fma::<2>(qs, &kv, kvh, o),
                    32 => attend_group_fma::<4>(qs, &kv, kvh, o),
                    64 => attend_group_fma::<8>(qs, &kv, kvh, o),
                    128 => attend_group_fma::<16>(qs, &kv, kvh, o),
                    _ => attend_group_avx2(qs, &kv, kvh, o),
                }
            }
            return;
        }
        let _ = avx2;
        attend_group(qs, &kv, kvh, o);
    });
}

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
        for (j, oh) in o.chunks_exact_mut(hd).enumerate() {
            let mut acc = [_mm256_setzero_ps(); CH];
            for t in 0..len {
                let w = _mm256_set1_ps(p[j * len + t] / sums[j]);
                let v = value(t);
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(v.add(8 * c)), *a);
                }
            }
            for (c, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(oh.as_mut_ptr().add(8 * c), *a);
            }
        }
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
    use std::arch::x86_64::*;
    let mut sums = Vec::with_capacity(p.len() / len.max(1));
    for ps in p.chunks_exact_mut(len) {
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
            sums.push(sum);
        }
    }
    sums
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


#[cfg(test)]
mod tests {
    use super::*;

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

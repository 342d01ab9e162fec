//! The kernels of [`super::scalar`] in AVX2 and 256-bit VNNI. A block of 32 weight codes (as
//! unsigned bytes, or made unsigned with the sign trick: |w| · sign(x, w)) meets the 32
//! activation codes in one `Dot::dot` (eight i32 lanes, each the sum of four byte products),
//! then one f32 multiply-add by the block's two scales into a lane accumulator. Four rows share
//! each activation load; the rows of a call that are not a multiple of four go one at a time.

use std::arch::x86_64::*;
use std::borrow::Borrow;

use super::packed::PackedQ8Act;
use super::{Code, Isa, Q8Act, Q16Act, QK8};
use crate::quant::{GgmlType, scale_min_k4};

/// The vector registers an instruction set's kernels keep values in, which decides how many
/// products a prefill tile ([`groups_of`]) can hold without spilling its accumulators.
trait Registers {
    /// 16 with AVX2 and AVX-VNNI; 32 with AVX-512, whose VL forms reach ymm16–31.
    const REGISTERS: usize;
}

/// Eight i32 lanes, lane `k` = `Σ u[4k + i] · s[4k + i]` for `i < 4`, `u` unsigned, `s` signed.
trait Dot: Registers {
    /// The product; `u` ≤ 128 where `Σ` of two neighbouring products could pass ±32767.
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;
    /// `acc` plus [`Dot::dot`]: one `vpdpbusd` with VNNI.
    unsafe fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    /// Whether a pair of neighbouring products is summed in 16 bits (saturating past ±32767).
    const SATURATES: bool;
}

/// `maddubs` (u8 × i8 → pairs summed to i16), then `madd` by ones (pairs summed to i32).
struct Avx2;
/// AVX-VNNI's `vpdpbusd`.
struct AvxVnni;
/// AVX-512 VNNI's `vpdpbusd` on 256-bit registers (AVX-512 VL).
struct Avx512Vnni;

impl Registers for Avx2 {
    const REGISTERS: usize = 16;
}

impl Registers for AvxVnni {
    const REGISTERS: usize = 16;
}

impl Registers for Avx512Vnni {
    const REGISTERS: usize = 32;
}

impl Dot for Avx2 {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
    }
    #[inline(always)]
    unsafe fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(acc, Self::dot(u, s)) }
    }
    const SATURATES: bool = true;
}

impl Dot for AvxVnni {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s) }
    }
    #[inline(always)]
    unsafe fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_avx_epi32(acc, u, s) }
    }
    const SATURATES: bool = false;
}

impl Dot for Avx512Vnni {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s) }
    }
    #[inline(always)]
    unsafe fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_epi32(acc, u, s) }
    }
    const SATURATES: bool = false;
}

/// See [`super::dot_rows`].
///
/// # Safety
/// The CPU must have `isa`; `rows` is `y.len()` rows of `rb` bytes, each the blocks of `ty` for
/// `act.len()` values, and `act` has a scale and a sum per block of 32 (the caller checks all this).
pub(super) unsafe fn dot_rows(isa: Isa, ty: GgmlType, rows: &[u8], rb: usize, act: &Q8Act, y: &mut [f32]) {
    unsafe {
        match isa {
            Isa::Avx2 => rows_avx2(ty, rows, rb, act, y),
            Isa::AvxVnni => rows_avxvnni(ty, rows, rb, act, y),
            Isa::Avx512Vnni => rows_avx512vnni(ty, rows, rb, act, y),
            Isa::Scalar => unreachable!("the scalar kernels are not here"),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(ty: GgmlType, rows: &[u8], rb: usize, act: &Q8Act, y: &mut [f32]) {
    unsafe { by_type::<Avx2>(ty, rows, rb, act, y) }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn rows_avxvnni(ty: GgmlType, rows: &[u8], rb: usize, act: &Q8Act, y: &mut [f32]) {
    unsafe { by_type::<AvxVnni>(ty, rows, rb, act, y) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn rows_avx512vnni(ty: GgmlType, rows: &[u8], rb: usize, act: &Q8Act, y: &mut [f32]) {
    unsafe { by_type::<Avx512Vnni>(ty, rows, rb, act, y) }
}

/// Runs `$call` (which names `$p`, the row pointers, and `$r`, their count) on groups of four
/// rows, then on the remaining rows one at a time.
macro_rules! by_groups {
    ($rows:expr, $rb:expr, $y:expr, |$p:ident, $r:ident| $call:expr) => {{
        let (base, rb, y) = ($rows.as_ptr(), $rb, $y);
        let mut i = 0;
        while i + 4 <= y.len() {
            const $r: usize = 4;
            let $p = [0, 1, 2, 3].map(|k| base.wrapping_add((i + k) * rb));
            y[i..i + 4].copy_from_slice(&$call);
            i += 4;
        }
        while i < y.len() {
            const $r: usize = 1;
            let $p = [base.wrapping_add(i * rb)];
            y[i] = $call[0];
            i += 1;
        }
    }};
}

#[inline(always)]
unsafe fn by_type<D: Dot>(ty: GgmlType, rows: &[u8], rb: usize, act: &Q8Act, y: &mut [f32]) {
    let nb = act.qs.len() / QK8;
    unsafe {
        match ty {
            GgmlType::Q4_0 => by_groups!(rows, rb, y, |p, R| q4_5::<D, false, false, R>(p, act, nb)),
            GgmlType::Q4_1 => by_groups!(rows, rb, y, |p, R| q4_5::<D, true, false, R>(p, act, nb)),
            GgmlType::Q5_0 => by_groups!(rows, rb, y, |p, R| q4_5::<D, false, true, R>(p, act, nb)),
            GgmlType::Q5_1 => by_groups!(rows, rb, y, |p, R| q4_5::<D, true, true, R>(p, act, nb)),
            GgmlType::Q8_0 => by_groups!(rows, rb, y, |p, R| q8_0::<D, R>(p, act, nb)),
            GgmlType::Q4K => by_groups!(rows, rb, y, |p, R| q4k::<D, R>(p, act, nb / 8)),
            GgmlType::Q6K => by_groups!(rows, rb, y, |p, R| q6k::<D, R>(p, act, nb / 8)),
            _ => unreachable!("checked by the caller"),
        }
    }
}

/// The little-endian f16 at `p`, as f32.
#[inline(always)]
pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32))) }
}

/// The sum of the eight lanes.
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// Whole blocks of 32 values of `x` quantized as [`super::QAct::quantize`] does, in AVX2: per
/// block the scale `d` (largest magnitude / `T::MAX`), the codes `round(x / d)` into `qs` (half
/// away from zero, as `f32::round`: `trunc(v + copysign(0.5 − 2⁻²⁵, v))`, which is how LLVM lowers
/// it; NaN to 0) clamped to ±`T::MAX`, and `s` = `d` · the codes' sum. One call for the vector
/// and codes narrowed in registers: a call a block through an `[i32; 32]` was 7 % of a two-thread
/// prefill's samples (Zen 4).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_blocks<T: Code>(x: &[f32], qs: &mut [T], d: &mut [f32], s: &mut [f32]) {
    let nb = x.len() / QK8;
    assert!(nb * QK8 == x.len() && qs.len() == x.len() && d.len() == nb && s.len() == nb, "quantize_blocks: {} values", x.len());
    for b in 0..nb {
        // SAFETY: block `b` of `x` and of `qs` is inside them (checked above).
        unsafe {
            let (scale, c, sum) = quantize_block(x.as_ptr().add(b * QK8), T::MAX);
            let q = qs.as_mut_ptr().add(b * QK8) as *mut __m256i;
            // The codes are within ±T::MAX: the saturating packs keep them; the permutes undo
            // the packs' interleaving of 128-bit lanes.
            if size_of::<T>() == 2 {
                for i in 0..2 {
                    let w = _mm256_packs_epi32(c[2 * i], c[2 * i + 1]);
                    _mm256_storeu_si256(q.add(i), _mm256_permute4x64_epi64(w, 0b11_01_10_00));
                }
            } else {
                let w = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
                _mm256_storeu_si256(q, _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
            }
            d[b] = scale;
            s[b] = scale * sum as f32;
        }
    }
}

/// One block of 32 values at `p` as [`quantize_blocks`] quantizes it: the scale, the codes as
/// four vectors of eight i32, and their sum.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `p` points at 32 values.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn quantize_block(p: *const f32, max: f32) -> (f32, [__m256i; 4], i32) {
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
        // max(|v|, m) keeps m where v is NaN, as f32::max does.
        let m = v.iter().fold(_mm256_setzero_ps(), |m, &v| _mm256_max_ps(_mm256_andnot_ps(sign, v), m));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
        let d = amax / max;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let (half, hi, lo) = (_mm256_set1_ps(0.49999997), _mm256_set1_ps(max), _mm256_set1_ps(-max));
        let (mut sum, mut codes) = (_mm256_setzero_si256(), [_mm256_setzero_si256(); 4]);
        for (c, &v) in codes.iter_mut().zip(&v) {
            let t = _mm256_mul_ps(v, id);
            let r = _mm256_round_ps(_mm256_add_ps(t, _mm256_or_ps(_mm256_and_ps(t, sign), half)), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            let r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));
            *c = _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(r, hi), lo));
            sum = _mm256_add_epi32(sum, *c);
        }
        let s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        (d, codes, _mm_cvtsi128_si32(s))
    }
}

#[inline(always)]
unsafe fn load(p: *const i8) -> __m256i {
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// Each row's lane sums plus its scalar offset.
#[inline(always)]
unsafe fn finish<const R: usize>(acc: [__m256; R], off: [f32; R]) -> [f32; R] {
    let mut out = off;
    for (o, a) in out.iter_mut().zip(acc) {
        *o += unsafe { hsum(a) };
    }
    out
}

/// 0xFF in byte `j` where bit `j` of `bits` is set, 0 elsewhere.
#[inline(always)]
unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    unsafe {
        // Byte j gets byte j / 8 of `bits`, then all its bits but bit j % 8 are set.
        let spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), spread);
        let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
        _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi8(-1))
    }
}

/// Q4_0 (value (q − 8)·d), Q4_1 (value q·d + m, `MIN`), Q5_0 (value (q − 16)·d, `FIVE`: a
/// fifth bit per value from 32 bits `qh`) and Q5_1 (both): the codes are unsigned; the offset
/// or minimum times the activation block's sum is added apart.
#[inline(always)]
unsafe fn q4_5<D: Dot, const MIN: bool, const FIVE: bool, const R: usize>(p: [*const u8; R], act: &Q8Act, nb: usize) -> [f32; R] {
    let qho = if MIN { 4 } else { 2 };
    let qo = if FIVE { qho + 4 } else { qho };
    let (bb, offset) = (qo + 16, if FIVE { -16.0 } else { -8.0 });
    unsafe {
        let (mask, fifth) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x10));
        let (mut acc, mut off) = ([_mm256_setzero_ps(); R], [0f32; R]);
        for b in 0..nb {
            let x = load(act.qs.as_ptr().add(b * QK8));
            let (dx, sx) = (*act.d.get_unchecked(b), *act.s.get_unchecked(b));
            for ((row, acc), off) in p.iter().zip(&mut acc).zip(&mut off) {
                let blk = row.add(b * bb);
                let q = _mm_loadu_si128(blk.add(qo) as *const __m128i);
                let mut w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), mask);
                if FIVE {
                    let high = bytes_from_bits((blk.add(qho) as *const u32).read_unaligned());
                    w = _mm256_or_si256(w, _mm256_and_si256(high, fifth));
                }
                let d = f16_at(blk);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(D::dot(w, x)), _mm256_set1_ps(d * dx), *acc);
                *off += if MIN { f16_at(blk.add(2)) } else { offset * d } * sx;
            }
        }
        finish(acc, off)
    }
}

/// Q8_0: signed codes times signed activations, as |w| · sign(x, w).
#[inline(always)]
unsafe fn q8_0<D: Dot, const R: usize>(p: [*const u8; R], act: &Q8Act, nb: usize) -> [f32; R] {
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let x = load(act.qs.as_ptr().add(b * QK8));
            let dx = *act.d.get_unchecked(b);
            for (row, acc) in p.iter().zip(&mut acc) {
                let blk = row.add(b * 34);
                let w = load(blk.add(2) as *const i8);
                let prod = D::dot(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(f16_at(blk) * dx), *acc);
            }
        }
        finish(acc, [0.0; R])
    }
}

/// Q4_K: per super-block of 256, eight sub-blocks of 32 with 6-bit scales and minimums; chunk
/// `c` of 32 bytes holds sub-block 2c in its low nibbles and 2c + 1 in its high ones.
#[inline(always)]
unsafe fn q4k<D: Dot, const R: usize>(p: [*const u8; R], act: &Q8Act, nsb: usize) -> [f32; R] {
    unsafe {
        let mask = _mm256_set1_epi8(0x0F);
        let (mut acc, mut off) = ([_mm256_setzero_ps(); R], [0f32; R]);
        for sb in 0..nsb {
            for ((row, acc), off) in p.iter().zip(&mut acc).zip(&mut off) {
                let blk = row.add(sb * 144);
                let (d, dmin) = (f16_at(blk), f16_at(blk.add(2)));
                let scales = std::slice::from_raw_parts(blk.add(4), 12);
                let mut mins = 0f32;
                for c in 0..4 {
                    let q = load(blk.add(16 + 32 * c) as *const i8);
                    let a = 8 * sb + 2 * c;
                    for (half, w) in [_mm256_and_si256(q, mask), _mm256_and_si256(_mm256_srli_epi16(q, 4), mask)].into_iter().enumerate() {
                        let (sc, m) = scale_min_k4(2 * c + half, scales);
                        let x = load(act.qs.as_ptr().add((a + half) * QK8));
                        let scale = _mm256_set1_ps(d * sc as f32 * *act.d.get_unchecked(a + half));
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(D::dot(w, x)), scale, *acc);
                        mins += m as f32 * *act.s.get_unchecked(a + half);
                    }
                }
                *off -= dmin * mins;
            }
        }
        finish(acc, off)
    }
}

/// Half `h` of a Q6_K super-block at `blk`: its f16 scale `d`, its eight signed sub-block scales
/// and its four groups of 32 codes as signed bytes (code − 32), shared by the 8- and 16-bit kernels.
#[inline(always)]
unsafe fn q6k_half(blk: *const u8, h: usize) -> (f32, *const i8, [__m256i; 4]) {
    unsafe {
        let (mask, m30, m32) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30), _mm256_set1_epi8(32));
        let (ql, qh, sc) = (blk.add(64 * h), blk.add(128 + 32 * h), blk.add(192 + 8 * h) as *const i8);
        let (ql0, ql1, qh) = (load(ql as *const i8), load(ql.add(32) as *const i8), load(qh as *const i8));
        let codes = [
            _mm256_or_si256(_mm256_and_si256(ql0, mask), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4)),
            _mm256_or_si256(_mm256_and_si256(ql1, mask), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), mask), _mm256_and_si256(qh, m30)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), mask), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)),
        ];
        (f16_at(blk.add(208)), sc, codes.map(|q| _mm256_sub_epi8(q, m32)))
    }
}

/// Q6_K: per super-block, two halves of four groups of 32 six-bit codes (low nibbles in `ql`,
/// two high bits in `qh`), each group two sub-blocks of 16 with their own signed scale, applied
/// per lane (lanes 0–3 hold values 0–15).
#[inline(always)]
unsafe fn q6k<D: Dot, const R: usize>(p: [*const u8; R], act: &Q8Act, nsb: usize) -> [f32; R] {
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for sb in 0..nsb {
            for h in 0..2 {
                for (row, acc) in p.iter().zip(&mut acc) {
                    let (d, sc, codes) = q6k_half(row.add(sb * 210), h);
                    for (k, w) in codes.into_iter().enumerate() {
                        let a = 8 * sb + 4 * h + k;
                        let x = load(act.qs.as_ptr().add(a * QK8));
                        let prod = D::dot(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
                        let f = d * *act.d.get_unchecked(a);
                        let scale = _mm256_set_m128(_mm_set1_ps(f * *sc.add(2 * k + 1) as f32), _mm_set1_ps(f * *sc.add(2 * k) as f32));
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), scale, *acc);
                    }
                }
            }
        }
        finish(acc, [0.0; R])
    }
}

/// `acc` plus eight i32 lanes, lane `k` = `Σ a[2k + i] · b[2k + i]` for `i < 2`, all signed 16-bit.
trait Dot16: Registers {
    /// The product, added to `acc`.
    unsafe fn dot16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
    /// Whether the add is part of the multiply (VNNI's `vpdpwssd`): a chain of them waits on the
    /// multiply's latency, where AVX2's separate add waits one cycle.
    const FUSED: bool;
}

impl Dot16 for Avx2 {
    #[inline(always)]
    unsafe fn dot16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) }
    }
    const FUSED: bool = false;
}

impl Dot16 for AvxVnni {
    #[inline(always)]
    unsafe fn dot16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_dpwssd_avx_epi32(acc, a, b) }
    }
    const FUSED: bool = true;
}

impl Dot16 for Avx512Vnni {
    #[inline(always)]
    unsafe fn dot16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_dpwssd_epi32(acc, a, b) }
    }
    const FUSED: bool = true;
}

/// See [`super::dot_rows16`].
///
/// # Safety
/// As [`dot_rows`], with 16-bit activation codes.
pub(super) unsafe fn dot_rows16(isa: Isa, ty: GgmlType, rows: &[u8], rb: usize, act: &Q16Act, y: &mut [f32]) {
    unsafe {
        match isa {
            Isa::Avx2 => rows16_avx2(ty, rows, rb, act, y),
            Isa::AvxVnni => rows16_avxvnni(ty, rows, rb, act, y),
            Isa::Avx512Vnni => rows16_avx512vnni(ty, rows, rb, act, y),
            Isa::Scalar => unreachable!("the scalar kernels are not here"),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows16_avx2(ty: GgmlType, rows: &[u8], rb: usize, act: &Q16Act, y: &mut [f32]) {
    unsafe { by_type16::<Avx2>(ty, rows, rb, act, y) }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn rows16_avxvnni(ty: GgmlType, rows: &[u8], rb: usize, act: &Q16Act, y: &mut [f32]) {
    unsafe { by_type16::<AvxVnni>(ty, rows, rb, act, y) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn rows16_avx512vnni(ty: GgmlType, rows: &[u8], rb: usize, act: &Q16Act, y: &mut [f32]) {
    unsafe { by_type16::<Avx512Vnni>(ty, rows, rb, act, y) }
}

#[inline(always)]
unsafe fn by_type16<D: Dot16>(ty: GgmlType, rows: &[u8], rb: usize, act: &Q16Act, y: &mut [f32]) {
    let nb = act.qs.len() / QK8;
    unsafe {
        match ty {
            GgmlType::Q4_0 => by_groups!(rows, rb, y, |p, R| q4_5_16::<D, false, false, R>(p, act, nb)),
            GgmlType::Q4_1 => by_groups!(rows, rb, y, |p, R| q4_5_16::<D, true, false, R>(p, act, nb)),
            GgmlType::Q5_0 => by_groups!(rows, rb, y, |p, R| q4_5_16::<D, false, true, R>(p, act, nb)),
            GgmlType::Q5_1 => by_groups!(rows, rb, y, |p, R| q4_5_16::<D, true, true, R>(p, act, nb)),
            GgmlType::Q8_0 => by_groups!(rows, rb, y, |p, R| q8_0_16::<D, R>(p, act, nb)),
            GgmlType::Q4K => by_groups!(rows, rb, y, |p, R| q4k_16::<D, R>(p, act, nb / 8)),
            GgmlType::Q6K => by_groups!(rows, rb, y, |p, R| q6k_16::<D, R>(p, act, nb / 8)),
            _ => unreachable!("checked by the caller"),
        }
    }
}

/// The 32 codes of activation block `b` as two registers of sixteen.
#[inline(always)]
unsafe fn load16(act: &Q16Act, b: usize) -> [__m256i; 2] {
    unsafe {
        let p = act.qs.as_ptr().add(b * QK8) as *const __m256i;
        [_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))]
    }
}

/// [`q4_5`] with 16-bit activations: the codes widened to 16 bits, two `Dot16` a block.
#[inline(always)]
unsafe fn q4_5_16<D: Dot16, const MIN: bool, const FIVE: bool, const R: usize>(p: [*const u8; R], act: &Q16Act, nb: usize) -> [f32; R] {
    let qho = if MIN { 4 } else { 2 };
    let qo = if FIVE { qho + 4 } else { qho };
    let (bb, offset) = (qo + 16, if FIVE { -16.0 } else { -8.0 });
    unsafe {
        let (mask, fifth) = (_mm_set1_epi8(0x0F), _mm256_set1_epi8(0x10));
        let (mut acc, mut off) = ([_mm256_setzero_ps(); R], [0f32; R]);
        for b in 0..nb {
            let [x0, x1] = load16(act, b);
            let (dx, sx) = (*act.d.get_unchecked(b), *act.s.get_unchecked(b));
            for ((row, acc), off) in p.iter().zip(&mut acc).zip(&mut off) {
                let blk = row.add(b * bb);
                let q = _mm_loadu_si128(blk.add(qo) as *const __m128i);
                let (mut lo, mut hi) = (_mm_and_si128(q, mask), _mm_and_si128(_mm_srli_epi16(q, 4), mask));
                if FIVE {
                    let high = _mm256_and_si256(bytes_from_bits((blk.add(qho) as *const u32).read_unaligned()), fifth);
                    lo = _mm_or_si128(lo, _mm256_castsi256_si128(high));
                    hi = _mm_or_si128(hi, _mm256_extracti128_si256(high, 1));
                }
                let i = D::dot16(D::dot16(_mm256_setzero_si256(), _mm256_cvtepu8_epi16(lo), x0), _mm256_cvtepu8_epi16(hi), x1);
                let d = f16_at(blk);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(d * dx), *acc);
                *off += if MIN { f16_at(blk.add(2)) } else { offset * d } * sx;
            }
        }
        finish(acc, off)
    }
}

/// [`q8_0`] with 16-bit activations.
#[inline(always)]
unsafe fn q8_0_16<D: Dot16, const R: usize>(p: [*const u8; R], act: &Q16Act, nb: usize) -> [f32; R] {
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let [x0, x1] = load16(act, b);
            let dx = *act.d.get_unchecked(b);
            for (row, acc) in p.iter().zip(&mut acc) {
                let blk = row.add(b * 34);
                let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(2) as *const __m128i));
                let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(18) as *const __m128i));
                let i = D::dot16(D::dot16(_mm256_setzero_si256(), w0, x0), w1, x1);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(f16_at(blk) * dx), *acc);
            }
        }
        finish(acc, [0.0; R])
    }
}

/// [`q4k`] with 16-bit activations, per super-block: each sub-block's integer sum (exact, below
/// 2²⁴) into one lane of a vector of eight by one horizontal reduction, then the eight scales
/// (`d` · the 6-bit scale · the activation block's scale) and minimums applied as vectors.
#[inline(always)]
unsafe fn q4k_16<D: Dot16, const R: usize>(p: [*const u8; R], act: &Q16Act, nsb: usize) -> [f32; R] {
    unsafe {
        let mask = _mm_set1_epi8(0x0F);
        let zero = _mm256_setzero_si256();
        let (mut acc, mut off) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        for sb in 0..nsb {
            let (dx, sx) = (_mm256_loadu_ps(act.d.as_ptr().add(8 * sb)), _mm256_loadu_ps(act.s.as_ptr().add(8 * sb)));
            for r in 0..R {
                let blk = p[r].add(sb * 144);
                // As in `q6k_16`.
                prefetch_ahead(blk, 144);
                let (sc, m) = q4k_scales(blk.add(4));
                let mut isum = [zero; 8];
                for c in 0..4 {
                    let q0 = _mm_loadu_si128(blk.add(16 + 32 * c) as *const __m128i);
                    let q1 = _mm_loadu_si128(blk.add(32 + 32 * c) as *const __m128i);
                    for half in 0..2 {
                        let (q0, q1) = if half == 0 { (q0, q1) } else { (_mm_srli_epi16(q0, 4), _mm_srli_epi16(q1, 4)) };
                        let w0 = _mm256_cvtepu8_epi16(_mm_and_si128(q0, mask));
                        let w1 = _mm256_cvtepu8_epi16(_mm_and_si128(q1, mask));
                        let [x0, x1] = load16(act, 8 * sb + 2 * c + half);
                        isum[2 * c + half] = D::dot16(D::dot16(zero, w0, x0), w1, x1);
                    }
                }
                let d = _mm256_set1_ps(f16_at(blk));
                let f = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(sc)), dx);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lane_sums(isum)), f, acc[r]);
                off[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(f16_at(blk.add(2))), _mm256_cvtepi32_ps(m)), sx, off[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(_mm256_sub_ps(acc[r], off[r]));
        }
        out
    }
}

/// The eight 6-bit scales and minimums of a Q4_K super-block (its 12 bytes at `scales`), sub-block
/// `j`'s in lane `j` of each (as [`scale_min_k4`] gives them one at a time).
#[inline(always)]
unsafe fn q4k_scales(scales: *const u8) -> (__m256i, __m256i) {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    unsafe {
        let u = [0, 4, 8].map(|o| (scales.add(o) as *const u32).read_unaligned());
        let sc = (u[0] & LOW6) as u64 | (((u[2] & LOW4) | ((u[0] >> 6) & LOW2) << 4) as u64) << 32;
        let m = (u[1] & LOW6) as u64 | ((((u[2] >> 4) & LOW4) | ((u[1] >> 6) & LOW2) << 4) as u64) << 32;
        (_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64)), _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(m as i64)))
    }
}

/// Lane `j` = the sum of `v[j]`'s eight lanes.
#[inline(always)]
unsafe fn lane_sums(v: [__m256i; 8]) -> __m256i {
    unsafe {
        let u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
        _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31))
    }
}

/// [`q6k`] with 16-bit activations, per half super-block: each sub-block of 16's integer sum
/// (exact, below 2²⁴) into one lane of a vector of eight, then the eight signed scales (`d` ·
/// the scale · its activation block's scale) applied as one vector.
#[inline(always)]
unsafe fn q6k_16<D: Dot16, const R: usize>(p: [*const u8; R], act: &Q16Act, nsb: usize) -> [f32; R] {
    unsafe {
        let zero = _mm256_setzero_si256();
        // Activation block k's scale for sub-blocks 2k and 2k + 1.
        let twice = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        let mut acc = [_mm256_setzero_ps(); R];
        for sb in 0..nsb {
            for h in 0..2 {
                let a0 = 8 * sb + 4 * h;
                let dx = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(act.d.as_ptr().add(a0))), twice);
                for r in 0..R {
                    if h == 0 {
                        // Rows four at a time are four streams the hardware prefetcher does not
                        // keep ahead of in a decode step. The rows of a matrix lie one after
                        // another, so 4 KiB ahead is the next rows' super-blocks: 300 decode
                        // steps of SmolLM2 Q4_K_M took 16 % less (Zen 3, 1 thread; 9 % with 2)
                        // than with the super-block after next of the same row.
                        prefetch_ahead(p[r].add(sb * 210), 210);
                    }
                    let (d, sc, codes) = q6k_half(p[r].add(sb * 210), h);
                    let mut isum = [zero; 8];
                    for (k, w) in codes.into_iter().enumerate() {
                        let [x0, x1] = load16(act, a0 + k);
                        isum[2 * k] = D::dot16(zero, _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w)), x0);
                        isum[2 * k + 1] = D::dot16(zero, _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w, 1)), x1);
                    }
                    let scales = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(sc as *const __m128i)));
                    let f = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(d), scales), dx);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lane_sums(isum)), f, acc[r]);
                }
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
        out
    }
}

/// See [`super::dot_rows16_packed`] and [`super::gemm16_packed`]: whole groups of eight packed
/// rows ([`super::packed`]) times each of `acts`, `y[t · ldy + r]` = row `r` (of `n`) times
/// `acts[t]`, in [`groups_of`]'s tiles: the inputs of a tile share each group's code loads and
/// unpacking, its groups each broadcast of an input's codes.
///
/// # Safety
/// The CPU must have `isa`; `rows` is `n` (a multiple of eight) rows of `rb` bytes of `ty`
/// blocks for the values of each of `acts` (all of one length, each with a scale and a sum per
/// block of 32), packed; `y + t · ldy` is `n` writable values for each input `t`, which no
/// other thread touches meanwhile.
pub(super) unsafe fn dot_groups16<A: Borrow<Q16Act>>(isa: Isa, ty: GgmlType, rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe {
        match isa {
            Isa::Avx2 => groups16_avx2(ty, rows, rb, acts, y, ldy),
            Isa::AvxVnni => groups16_avxvnni(ty, rows, rb, acts, y, ldy),
            Isa::Avx512Vnni => groups16_avx512vnni(ty, rows, rb, acts, y, ldy),
            Isa::Scalar => unreachable!("the scalar kernels are not here"),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn groups16_avx2<A: Borrow<Q16Act>>(ty: GgmlType, rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe { groups16::<Avx2, A>(ty, rows, rb, acts, y, ldy) }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn groups16_avxvnni<A: Borrow<Q16Act>>(ty: GgmlType, rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe { groups16::<AvxVnni, A>(ty, rows, rb, acts, y, ldy) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn groups16_avx512vnni<A: Borrow<Q16Act>>(ty: GgmlType, rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe { groups16::<Avx512Vnni, A>(ty, rows, rb, acts, y, ldy) }
}

/// `$body` once for each of the listed values of `$i` (a constant in each copy): loops whose
/// indices pick accumulators must be unrolled for those to stay in registers.
macro_rules! unroll {
    ($i:ident in [$($n:literal),*] $body:block) => {
        $({
            #[allow(non_upper_case_globals)]
            const $i: usize = $n;
            $body
        })*
    };
}

#[inline(always)]
unsafe fn groups16<D: Dot16, A: Borrow<Q16Act>>(ty: GgmlType, rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe {
        match ty {
            GgmlType::Q4_0 => groups_of::<Kernel16<D, false, false, false>, A>(rows, rb, acts, y, ldy),
            GgmlType::Q4_1 => groups_of::<Kernel16<D, false, true, false>, A>(rows, rb, acts, y, ldy),
            GgmlType::Q5_0 => groups_of::<Kernel16<D, false, false, true>, A>(rows, rb, acts, y, ldy),
            GgmlType::Q5_1 => groups_of::<Kernel16<D, false, true, true>, A>(rows, rb, acts, y, ldy),
            GgmlType::Q8_0 => groups_of::<Kernel16<D, true, false, false>, A>(rows, rb, acts, y, ldy),
            _ => unreachable!("checked by the caller"),
        }
    }
}

/// `G` packed groups times `T` quantized inputs, the product [`groups_of`] tiles.
trait GroupKernel {
    /// The vector registers of its instruction set ([`Registers`]).
    const REGISTERS: usize;
    /// One quantized input.
    type Act;
    /// Its number of values.
    fn len(a: &Self::Act) -> usize;
    /// Lane `r` of result `[k][t]` = row `r` of group `k` (at `gs[k]`, `nb` blocks) times `acts[t]`.
    unsafe fn run<const G: usize, const T: usize>(gs: [*const u8; G], acts: [&Self::Act; T], nb: usize) -> [[__m256; T]; G];
}

/// [`group16`] for one instruction set and layout.
struct Kernel16<D, const Q8: bool, const MIN: bool, const FIVE: bool>(std::marker::PhantomData<D>);

impl<D: Dot16, const Q8: bool, const MIN: bool, const FIVE: bool> GroupKernel for Kernel16<D, Q8, MIN, FIVE> {
    const REGISTERS: usize = D::REGISTERS;
    type Act = Q16Act;
    fn len(a: &Q16Act) -> usize {
        a.qs.len()
    }
    #[inline(always)]
    unsafe fn run<const G: usize, const T: usize>(gs: [*const u8; G], acts: [&Q16Act; T], nb: usize) -> [[__m256; T]; G] {
        unsafe { group16::<D, Q8, MIN, FIVE, G, T>(gs, acts, nb) }
    }
}

/// [`group8`] for one instruction set and layout.
struct Kernel8<D, const Q8: bool, const MIN: bool, const FIVE: bool>(std::marker::PhantomData<D>);

impl<D: Dot, const Q8: bool, const MIN: bool, const FIVE: bool> GroupKernel for Kernel8<D, Q8, MIN, FIVE> {
    const REGISTERS: usize = D::REGISTERS;
    type Act = PackedQ8Act;
    fn len(a: &PackedQ8Act) -> usize {
        a.lanes.len()
    }
    #[inline(always)]
    unsafe fn run<const G: usize, const T: usize>(gs: [*const u8; G], acts: [&PackedQ8Act; T], nb: usize) -> [[__m256; T]; G] {
        unsafe { group8::<D, Q8, MIN, FIVE, G, T>(gs, acts, nb) }
    }
}

/// A kernel `K` over all of `rows` and `acts` in tiles of (groups, inputs): (2, 3) with 32 vector
/// registers, (1, 4) with 16. `kernel_bench` (`PREFILL=int16`, SmolLM2 Q4_0, 512 positions,
/// thread CPU time): on AVX-512 VNNI (2, 3) took 0.80–0.82 s against 0.96–1.02 for (2, 4) and
/// 1.04–1.07 for (1, 4); on AVX2 (Zen 3) (2, 3) spilled its accumulators to the stack and took
/// 2.19–2.26 s, (2, 2) 2.09–2.17, (1, 6) 1.62–1.72, (1, 5) 1.49–1.61, (1, 3) 1.43–1.46 and
/// (1, 4) 1.22–1.31 (with one accumulator chain per product, [`group16`]).
#[inline(always)]
unsafe fn groups_of<K: GroupKernel, A: Borrow<K::Act>>(rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe {
        if K::REGISTERS >= 32 {
            tiles::<K, A, 2, 3>(rows, rb, acts, y, ldy)
        } else {
            tiles::<K, A, 1, 4>(rows, rb, acts, y, ldy)
        }
    }
}

/// [`groups_of`] with tiles of `GROUPS` groups × `INPUTS` inputs (the inputs' codes stay in the
/// L1 cache while every group of `rows` meets them); the inputs left over one at a time.
#[inline(always)]
unsafe fn tiles<K: GroupKernel, A: Borrow<K::Act>, const GROUPS: usize, const INPUTS: usize>(rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    let Some(first) = acts.first() else { return };
    let (g, nb, n) = (super::packed::GROUP, K::len(first.borrow()) / QK8, rows.len() / rb);
    let ng = n / g;
    // SAFETY: group `i` is the `g · rb` bytes at `i · g · rb` (the caller's lengths); input
    // `t`'s products go to `y + t · ldy`, `n` of them (the caller's), each store eight of rows
    // `i · g ..`.
    let group = |i: usize| unsafe { rows.as_ptr().add(i * g * rb) };
    let store = |t: usize, i: usize, v: __m256| unsafe { _mm256_storeu_ps(y.add(t * ldy + i * g), v) };
    let mut t = 0;
    while t + INPUTS <= acts.len() {
        let a: [&K::Act; INPUTS] = std::array::from_fn(|k| acts[t + k].borrow());
        let mut i = 0;
        while i + GROUPS <= ng {
            // SAFETY: as above.
            let v = unsafe { K::run::<GROUPS, INPUTS>(std::array::from_fn(|k| group(i + k)), a, nb) };
            for (k, v) in v.into_iter().enumerate() {
                for (u, v) in v.into_iter().enumerate() {
                    store(t + u, i + k, v);
                }
            }
            i += GROUPS;
        }
        while i < ng {
            // SAFETY: as above.
            let [v] = unsafe { K::run::<1, INPUTS>([group(i)], a, nb) };
            for (u, v) in v.into_iter().enumerate() {
                store(t + u, i, v);
            }
            i += 1;
        }
        t += INPUTS;
    }
    for (t, a) in acts.iter().enumerate().skip(t) {
        for i in 0..ng {
            // SAFETY: as above.
            let [[v]] = unsafe { K::run::<1, 1>([group(i)], [a.borrow()], nb) };
            store(t, i, v);
        }
    }
}

/// `G` packed groups of eight rows times `T` activation vectors, lane `r` of result `[k][t]` =
/// row `r` of group `k` times input `t`: Q8_0 (`Q8`), or 4-bit codes with a minimum (`MIN`:
/// Q4_1, Q5_1) and a fifth bit (`FIVE`: Q5_0, Q5_1). Per block: the eight f16 scales in one
/// conversion; per 32-byte load, `E` fields of each 16-bit word (nibbles by shift and mask, with
/// their fifth bit shifted in from the block's 32 bytes of them; bytes sign-extended), each
/// unpacked once and met by one broadcast pair of each input's codes (each broadcast meeting
/// the `G` groups); integer accumulators summed once a block (eight for one product, fewer when
/// there are several: latency, not count, bounds a chain). The minimum (or Q4_0's −8, Q5_0's
/// −16 times the scale) times the activation block's sum goes in apart.
#[inline(always)]
unsafe fn group16<D: Dot16, const Q8: bool, const MIN: bool, const FIVE: bool, const G: usize, const T: usize>(
    gs: [*const u8; G],
    acts: [&Q16Act; T],
    nb: usize,
) -> [[__m256; T]; G] {
    let l = super::packed::Layout { q8: Q8, min: MIN, five: FIVE };
    let bb = 8 * if Q8 { 34 } else { 18 + if MIN { 2 } else { 0 } + if FIVE { 4 } else { 0 } };
    let (qs, qh) = (l.packed_qs(), l.packed_qh());
    // Independent integer chains per product: enough to cover the multiply-add's latency (one
    // for AVX2's separate add, whose tiles of four products have no room for more).
    let chains = if G * T == 1 {
        8
    } else if D::FUSED {
        2
    } else {
        1
    };
    // No closures around the intrinsics (see `group8`).
    unsafe {
        let zero = _mm256_setzero_si256();
        let (nib, bit4) = (_mm256_set1_epi16(0x000F), _mm256_set1_epi16(0x0010));
        let (mut acc, mut off) = ([[_mm256_setzero_ps(); T]; G], [[_mm256_setzero_ps(); T]; G]);
        let mut xp = [std::ptr::null::<i32>(); T];
        let mut blk = [std::ptr::null::<u8>(); G];
        let (mut v, mut w, mut h) = ([zero; G], [zero; G], [zero; G]);
        for b in 0..nb {
            for t in 0..T {
                xp[t] = acts[t].qs.as_ptr().add(b * QK8) as *const i32;
            }
            for k in 0..G {
                blk[k] = gs[k].add(b * bb);
            }
            if G * T == 1 {
                prefetch_ahead(blk[0], bb);
            }
            let mut s = [[[zero; 8]; T]; G];
            if Q8 {
                unroll!(k in [0, 1, 2, 3, 4, 5, 6, 7] {
                    for g in 0..G {
                        v[g] = _mm256_loadu_si256(blk[g].add(qs + 32 * k) as *const __m256i);
                        w[g] = _mm256_srai_epi16(_mm256_slli_epi16(v[g], 8), 8);
                    }
                    let a = 2 * (k % 4);
                    madd16::<D, G, T>(&mut s, a % chains, w, xp, 2 * k);
                    for g in 0..G {
                        w[g] = _mm256_srai_epi16(v[g], 8);
                    }
                    madd16::<D, G, T>(&mut s, (a + 1) % chains, w, xp, 2 * k + 1);
                });
            } else {
                // The fifth bits of load k's values, bit 4k + e of each word, moved down 4 a load.
                if FIVE {
                    for g in 0..G {
                        h[g] = _mm256_loadu_si256(blk[g].add(qh) as *const __m256i);
                    }
                }
                unroll!(k in [0, 1, 2, 3] {
                    for g in 0..G {
                        v[g] = _mm256_loadu_si256(blk[g].add(qs + 32 * k) as *const __m256i);
                    }
                    let a = 4 * (k % 2);
                    unroll!(e in [0, 1, 2, 3] {
                        for g in 0..G {
                            w[g] = match e {
                                0 => _mm256_and_si256(v[g], nib),
                                1 => _mm256_and_si256(_mm256_srli_epi16(v[g], 4), nib),
                                2 => _mm256_and_si256(_mm256_srli_epi16(v[g], 8), nib),
                                _ => _mm256_srli_epi16(v[g], 12),
                            };
                            if FIVE {
                                let hb = match e {
                                    0 => _mm256_slli_epi16(h[g], 4),
                                    1 => _mm256_slli_epi16(h[g], 3),
                                    2 => _mm256_slli_epi16(h[g], 2),
                                    _ => _mm256_slli_epi16(h[g], 1),
                                };
                                w[g] = _mm256_or_si256(w[g], _mm256_and_si256(hb, bit4));
                            }
                        }
                        madd16::<D, G, T>(&mut s, (a + e) % chains, w, xp, 4 * k + e);
                    });
                    if FIVE {
                        for h in h.iter_mut() {
                            *h = _mm256_srli_epi16(*h, 4);
                        }
                    }
                });
            }
            for k in 0..G {
                let d = _mm256_cvtph_ps(_mm_loadu_si128(blk[k] as *const __m128i));
                let m = if MIN { _mm256_cvtph_ps(_mm_loadu_si128(blk[k].add(16) as *const __m128i)) } else { d };
                for t in 0..T {
                    let s = &s[k][t];
                    let s4 = [_mm256_add_epi32(s[0], s[4]), _mm256_add_epi32(s[1], s[5]), _mm256_add_epi32(s[2], s[6]), _mm256_add_epi32(s[3], s[7])];
                    let isum = _mm256_add_epi32(_mm256_add_epi32(s4[0], s4[1]), _mm256_add_epi32(s4[2], s4[3]));
                    acc[k][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_set1_ps(*acts[t].d.get_unchecked(b))), acc[k][t]);
                    if !Q8 {
                        off[k][t] = _mm256_fmadd_ps(m, _mm256_set1_ps(*acts[t].s.get_unchecked(b)), off[k][t]);
                    }
                }
            }
        }
        for k in 0..G {
            for t in 0..T {
                if MIN {
                    acc[k][t] = _mm256_add_ps(acc[k][t], off[k][t]);
                } else if !Q8 {
                    // Q4_0's values are (q − 8)·d, Q5_0's (q − 16)·d: the offset · d · the activation sum.
                    acc[k][t] = _mm256_fnmadd_ps(_mm256_set1_ps(if FIVE { 16.0 } else { 8.0 }), off[k][t], acc[k][t]);
                }
            }
        }
        acc
    }
}

/// How far ahead of a one-input product (a decode step's) its rows are asked for: on its own the
/// hardware prefetcher left a decode step of SmolLM2 Q4_0 about 15 % slower (Zen 3,
/// `mem_profile`, 300 steps, 1 and 2 threads; 2, 4 and 8 KiB ahead within noise of each other).
const PREFETCH_AHEAD: usize = 4096;

/// Asks for the cache lines of `bytes` bytes at [`PREFETCH_AHEAD`] past `p` (a hint: no fault
/// past the end of the rows).
#[inline(always)]
unsafe fn prefetch_ahead(p: *const u8, bytes: usize) {
    let mut o = 0;
    while o < bytes {
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + o) as *const i8) };
        o += 64;
    }
}

/// [`group16`]'s step: code pair `p` of every input (`xp`) into accumulator `a` of each, times
/// each group's codes `w`.
#[inline(always)]
unsafe fn madd16<D: Dot16, const G: usize, const T: usize>(s: &mut [[[__m256i; 8]; T]; G], a: usize, w: [__m256i; G], xp: [*const i32; T], p: usize) {
    for (t, x) in xp.iter().enumerate() {
        unsafe {
            let x = _mm256_set1_epi32(x.add(p).read_unaligned());
            for (s, &w) in s.iter_mut().zip(&w) {
                s[t][a] = D::dot16(s[t][a], w, x);
            }
        }
    }
}

/// See [`super::gemm8_packed`]: `acts.len()` inputs times the `n` packed rows of `rows`.
///
/// # Safety
/// As [`dot_groups16`], each input quantized for `ty`.
pub(super) unsafe fn dot_groups8<A: Borrow<PackedQ8Act>>(isa: Isa, ty: GgmlType, rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe {
        match isa {
            Isa::Avx2 => groups8_avx2(ty, rows, rb, acts, y, ldy),
            Isa::AvxVnni => groups8_avxvnni(ty, rows, rb, acts, y, ldy),
            Isa::Avx512Vnni => groups8_avx512vnni(ty, rows, rb, acts, y, ldy),
            Isa::Scalar => unreachable!("the scalar kernels are not here"),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn groups8_avx2<A: Borrow<PackedQ8Act>>(ty: GgmlType, rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe { groups8::<Avx2, A>(ty, rows, rb, acts, y, ldy) }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn groups8_avxvnni<A: Borrow<PackedQ8Act>>(ty: GgmlType, rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe { groups8::<AvxVnni, A>(ty, rows, rb, acts, y, ldy) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn groups8_avx512vnni<A: Borrow<PackedQ8Act>>(ty: GgmlType, rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe { groups8::<Avx512Vnni, A>(ty, rows, rb, acts, y, ldy) }
}

#[inline(always)]
unsafe fn groups8<D: Dot, A: Borrow<PackedQ8Act>>(ty: GgmlType, rows: &[u8], rb: usize, acts: &[A], y: *mut f32, ldy: usize) {
    unsafe {
        match ty {
            GgmlType::Q4_0 => groups_of::<Kernel8<D, false, false, false>, A>(rows, rb, acts, y, ldy),
            GgmlType::Q4_1 => groups_of::<Kernel8<D, false, true, false>, A>(rows, rb, acts, y, ldy),
            GgmlType::Q5_0 => groups_of::<Kernel8<D, false, false, true>, A>(rows, rb, acts, y, ldy),
            GgmlType::Q5_1 => groups_of::<Kernel8<D, false, true, true>, A>(rows, rb, acts, y, ldy),
            GgmlType::Q8_0 => groups_of::<Kernel8<D, true, false, false>, A>(rows, rb, acts, y, ldy),
            _ => unreachable!("checked by the caller"),
        }
    }
}

/// [`group16`] with 8-bit activation codes: four codes of a row to a 32-bit lane, so one
/// `vpdpbusd` (or `maddubs` + `madd`) takes four values of each of eight rows, twice
/// `vpdpwssd`'s two. A nibble load gives two byte vectors (low nibbles, and high ones shifted
/// down, each byte a code of its own; Q5's fifth bits moved to bit 4 of each byte); a Q8_0 load
/// is its byte codes, made unsigned by +128 (the offset then taken away with the activation
/// sums, as Q4_0's 8 is) or, where neighbouring products are summed in 16 bits, as |w| · sign(x, w).
/// The inputs' codes are in the lanes' order ([`PackedQ8Act`]).
#[inline(always)]
unsafe fn group8<D: Dot, const Q8: bool, const MIN: bool, const FIVE: bool, const G: usize, const T: usize>(
    gs: [*const u8; G],
    acts: [&PackedQ8Act; T],
    nb: usize,
) -> [[__m256; T]; G] {
    let l = super::packed::Layout { q8: Q8, min: MIN, five: FIVE };
    let bb = 8 * if Q8 { 34 } else { 18 + if MIN { 2 } else { 0 } + if FIVE { 4 } else { 0 } };
    let (qs, qh) = (l.packed_qs(), l.packed_qh());
    let sign_trick = Q8 && D::SATURATES;
    // The value a code stands for is (code − offset) · d: Q4_0 8, Q5_0 16, Q8_0 made unsigned 128.
    let offset = if Q8 { 128.0 } else if FIVE { 16.0 } else { 8.0 };
    // As in `group16`: AVX2's `maddubs` + `madd` (which saturates) is followed by a separate add.
    let chains = if G * T == 1 {
        4
    } else if D::SATURATES {
        1
    } else {
        2
    };
    // No closures around the intrinsics below: a closure that is not inlined is compiled
    // without the caller's target features, and each intrinsic becomes a call.
    unsafe {
        let zero = _mm256_setzero_si256();
        let (nib, lo5, hi5, flip) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(0x0010), _mm256_set1_epi16(0x1000), _mm256_set1_epi8(-128));
        let (mut acc, mut off) = ([[_mm256_setzero_ps(); T]; G], [[_mm256_setzero_ps(); T]; G]);
        let mut xp = [std::ptr::null::<i32>(); T];
        let mut blk = [std::ptr::null::<u8>(); G];
        let (mut v, mut lo, mut hi, mut h) = ([zero; G], [zero; G], [zero; G], [zero; G]);
        for b in 0..nb {
            for t in 0..T {
                xp[t] = acts[t].lanes.as_ptr().add(b * QK8) as *const i32;
            }
            for k in 0..G {
                blk[k] = gs[k].add(b * bb);
            }
            if G * T == 1 {
                prefetch_ahead(blk[0], bb);
            }
            let mut s = [[[zero; 4]; T]; G];
            if Q8 {
                unroll!(k in [0, 1, 2, 3, 4, 5, 6, 7] {
                    for g in 0..G {
                        v[g] = _mm256_loadu_si256(blk[g].add(qs + 32 * k) as *const __m256i);
                        lo[g] = if sign_trick { _mm256_abs_epi8(v[g]) } else { _mm256_xor_si256(v[g], flip) };
                    }
                    madd8::<D, G, T>(&mut s, k % chains, lo, v, xp, k, sign_trick);
                });
            } else {
                if FIVE {
                    for g in 0..G {
                        h[g] = _mm256_loadu_si256(blk[g].add(qh) as *const __m256i);
                    }
                }
                unroll!(k in [0, 1, 2, 3] {
                    for g in 0..G {
                        let v = _mm256_loadu_si256(blk[g].add(qs + 32 * k) as *const __m256i);
                        lo[g] = _mm256_and_si256(v, nib);
                        hi[g] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                        if FIVE {
                            // Word bits e = 0 and 2 (low nibbles) and 1 and 3 (high) of this
                            // load's fifth bits to bit 4 of the word's two bytes.
                            let (b0, b2) = (_mm256_slli_epi16(h[g], 4), _mm256_slli_epi16(h[g], 10));
                            let (b1, b3) = (_mm256_slli_epi16(h[g], 3), _mm256_slli_epi16(h[g], 9));
                            lo[g] = _mm256_or_si256(lo[g], _mm256_or_si256(_mm256_and_si256(b0, lo5), _mm256_and_si256(b2, hi5)));
                            hi[g] = _mm256_or_si256(hi[g], _mm256_or_si256(_mm256_and_si256(b1, lo5), _mm256_and_si256(b3, hi5)));
                            h[g] = _mm256_srli_epi16(h[g], 4);
                        }
                    }
                    madd8::<D, G, T>(&mut s, (2 * k) % chains, lo, lo, xp, 2 * k, false);
                    madd8::<D, G, T>(&mut s, (2 * k + 1) % chains, hi, hi, xp, 2 * k + 1, false);
                });
            }
            for k in 0..G {
                let d = _mm256_cvtph_ps(_mm_loadu_si128(blk[k] as *const __m128i));
                let m = if MIN { _mm256_cvtph_ps(_mm_loadu_si128(blk[k].add(16) as *const __m128i)) } else { d };
                for t in 0..T {
                    let s = &s[k][t];
                    let isum = _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), _mm256_add_epi32(s[2], s[3]));
                    acc[k][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_set1_ps(*acts[t].plain.d.get_unchecked(b))), acc[k][t]);
                    if !sign_trick {
                        off[k][t] = _mm256_fmadd_ps(m, _mm256_set1_ps(*acts[t].plain.s.get_unchecked(b)), off[k][t]);
                    }
                }
            }
        }
        for k in 0..G {
            for t in 0..T {
                acc[k][t] = if MIN {
                    _mm256_add_ps(acc[k][t], off[k][t])
                } else if sign_trick {
                    acc[k][t]
                } else {
                    _mm256_fnmadd_ps(_mm256_set1_ps(offset), off[k][t], acc[k][t])
                };
            }
        }
        acc
    }
}

/// [`group8`]'s step: lane word `p` of every input's codes (`xp`) into accumulator `a` of each,
/// times each group's unsigned codes `w` (`signs`: the signed codes, for the sign trick).
/// A function, not a closure, so that it is inlined with the caller's target features.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn madd8<D: Dot, const G: usize, const T: usize>(
    s: &mut [[[__m256i; 4]; T]; G],
    a: usize,
    w: [__m256i; G],
    signs: [__m256i; G],
    xp: [*const i32; T],
    p: usize,
    sign_trick: bool,
) {
    for (t, x) in xp.iter().enumerate() {
        unsafe {
            let x = _mm256_set1_epi32(x.add(p).read_unaligned());
            for ((s, &w), &sg) in s.iter_mut().zip(&w).zip(&signs) {
                let x = if sign_trick { _mm256_sign_epi8(x, sg) } else { x };
                s[t][a] = D::dot_acc(s[t][a], w, x);
            }
        }
    }
}

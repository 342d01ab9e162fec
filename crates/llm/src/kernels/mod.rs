//! Integer kernels for one-token decoding on the CPU: the activation vector is quantized once
//! per matrix to 8 bits per block of 32 ([`Q8Act`], ggml's Q8_1 with an f32 scale) or to 16 bits
//! ([`Q16Act`], 256 times finer), and block-encoded weight rows (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q4_K, Q6_K) are multiplied with it in integer arithmetic: for 8 bits AVX2 `maddubs`/`madd` or
//! 256-bit VNNI `vpdpbusd`, for 16 bits AVX2 `madd` or VNNI `vpdpwssd` (AVX-VNNI or AVX-512
//! VNNI), chosen at run time, with a portable scalar loop elsewhere. Every path computes the same
//! integer sums per block; only the order of the f32 sums over blocks differs.

pub mod packed;
mod scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use std::sync::atomic::{AtomicU8, Ordering};

use crate::matvec::QMatrix;
use crate::quant::GgmlType;

/// Values per activation block.
pub const QK8: usize = 32;

/// An activation code: a signed integer of 8 or 16 bits.
pub trait Code: Copy + Default + Into<i32> + Send + Sync + 'static {
    /// The largest code magnitude.
    const MAX: f32;
    /// The code of an already rounded value within ±[`Code::MAX`].
    fn from_rounded(v: f32) -> Self;
}

impl Code for i8 {
    const MAX: f32 = 127.0;
    fn from_rounded(v: f32) -> Self {
        v as i8
    }
}

impl Code for i16 {
    const MAX: f32 = 32767.0;
    fn from_rounded(v: f32) -> Self {
        v as i16
    }
}

/// An activation vector quantized to codes `T` per block of 32: value `i` ≈ `d[i / 32] · qs[i]`.
#[derive(Debug, Default, Clone)]
pub struct QAct<T> {
    /// Codes, `round(x / d)` (half away from zero), in −MAX..=MAX.
    pub(crate) qs: Vec<T>,
    /// Per block: the scale, largest magnitude / MAX.
    pub(crate) d: Vec<f32>,
    /// Per block: `d · Σ qs`, which multiplies a weight block's offset or minimum.
    pub(crate) s: Vec<f32>,
}

/// Activations in 8-bit blocks (ggml's Q8_1 with an f32 scale).
pub type Q8Act = QAct<i8>;

/// Activations in 16-bit blocks: a relative error of at most 1/65534 of a block's largest value.
pub type Q16Act = QAct<i16>;

/// Why a vector cannot be quantized to [`Q8Act`] blocks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0} activation values is not a whole number of blocks of 32")]
pub struct NotWholeBlocks(pub usize);

impl<T: Code> QAct<T> {
    /// Quantizes `x` (a whole number of blocks of 32) into this buffer, reusing its memory.
    pub fn quantize(&mut self, x: &[f32]) -> Result<(), NotWholeBlocks> {
        self.quantize_with(x, crate::matvec::has_avx2_fma())
    }

    /// [`QAct::quantize`] in AVX2 (`simd`, on a CPU that has it) or portable Rust: the same codes.
    fn quantize_with(&mut self, x: &[f32], simd: bool) -> Result<(), NotWholeBlocks> {
        if !x.len().is_multiple_of(QK8) {
            return Err(NotWholeBlocks(x.len()));
        }
        let nb = x.len() / QK8;
        self.qs.resize(x.len(), T::default());
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the CPU has AVX2 and FMA (the caller checked); the lengths are as above.
            unsafe { x86::quantize_blocks(x, &mut self.qs, &mut self.d, &mut self.s) };
            return Ok(());
        }
        for (b, (xs, qs)) in x.chunks_exact(QK8).zip(self.qs.chunks_exact_mut(QK8)).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / T::MAX;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = T::from_rounded((v * id).round().clamp(-T::MAX, T::MAX));
                sum += (*q).into();
            }
            self.d[b] = d;
            self.s[b] = d * sum as f32;
        }
        Ok(())
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.qs.len()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.qs.is_empty()
    }
}

/// Weight block types the integer kernels multiply.
pub fn supports(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q6K)
}

/// An instruction set the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// AVX2 + FMA + F16C: `maddubs` and `madd`.
    Avx2,
    /// AVX2 with AVX-VNNI: 256-bit `vpdpbusd`.
    AvxVnni,
    /// AVX2 with AVX-512 VNNI and VL: 256-bit `vpdpbusd` (EVEX encoded).
    Avx512Vnni,
}

/// Every [`Isa`], best first.
const ALL: [Isa; 4] = [Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2, Isa::Scalar];

/// The [`Isa`] in use: an index into [`ALL`], or `u8::MAX` until first asked.
static CHOSEN: AtomicU8 = AtomicU8::new(u8::MAX);

impl Isa {
    /// Whether this CPU can run kernels compiled for it.
    pub fn is_available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            match self {
                Isa::Scalar => true,
                Isa::Avx2 => avx2,
                Isa::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
                Isa::Avx512Vnni => avx2 && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Scalar
        }
    }

    /// The instruction sets this CPU can run, best first.
    pub fn available() -> Vec<Isa> {
        ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The one the kernels use: the best available unless [`Isa::select`] chose another.
    pub fn current() -> Isa {
        let i = CHOSEN.load(Ordering::Relaxed);
        if let Some(&isa) = ALL.get(i as usize) {
            return isa;
        }
        let best = Isa::available()[0];
        CHOSEN.store(ALL.iter().position(|&i| i == best).unwrap_or(ALL.len() - 1) as u8, Ordering::Relaxed);
        best
    }

    /// Makes the kernels use `self` from now on (to measure a lesser instruction set on a CPU
    /// that has a better one); refused when this CPU cannot run it.
    pub fn select(self) -> Result<(), IsaUnavailable> {
        if !self.is_available() {
            return Err(IsaUnavailable(self));
        }
        let i = ALL.iter().position(|&i| i == self).unwrap_or(ALL.len() - 1);
        CHOSEN.store(i as u8, Ordering::Relaxed);
        Ok(())
    }
}

/// [`Isa::select`] of an instruction set this CPU lacks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("this CPU cannot run the {0:?} kernels")]
pub struct IsaUnavailable(pub Isa);

/// `y[r]` = (row `r` of `rows`) · (the vector `act` holds), for `y.len()` consecutive rows of
/// `ty` blocks covering `act.len()` columns, computed with `isa`'s kernels.
///
/// Panics (before reading anything) when the type is not [`supports`]ed, `isa` is not available,
/// or the lengths disagree: callers size these from one matrix, so a mismatch is a bug.
pub fn dot_rows(isa: Isa, ty: GgmlType, rows: &[u8], act: &Q8Act, y: &mut [f32]) {
    let Some(rb) = check(isa, ty, rows, act, y.len()) else { return y.fill(0.0) };
    match isa {
        Isa::Scalar => scalar::dot_rows(ty, rows, rb, act, y),
        // SAFETY: the CPU has `isa` (checked above), and the lengths of `rows`, `act` and `y`
        // agree with `ty` and `cols` (checked above), which is all the kernels rely on.
        #[cfg(target_arch = "x86_64")]
        _ => unsafe { x86::dot_rows(isa, ty, rows, rb, act, y) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the scalar kernels exist off x86-64"),
    }
}

/// [`dot_rows`] with 16-bit activation codes: AVX2 `madd` or VNNI `vpdpwssd`.
pub fn dot_rows16(isa: Isa, ty: GgmlType, rows: &[u8], act: &Q16Act, y: &mut [f32]) {
    let Some(rb) = check(isa, ty, rows, act, y.len()) else { return y.fill(0.0) };
    match isa {
        Isa::Scalar => scalar::dot_rows(ty, rows, rb, act, y),
        // SAFETY: as in `dot_rows`.
        #[cfg(target_arch = "x86_64")]
        _ => unsafe { x86::dot_rows16(isa, ty, rows, rb, act, y) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the scalar kernels exist off x86-64"),
    }
}

/// [`dot_rows16`] for rows laid out by [`packed::pack_rows`] (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): `y.len() / 8`
/// whole groups of eight rows, each group's rows in the lanes of one multiply-add, then the
/// remaining rows plain. Each row's integer sums per block are the same as [`dot_rows16`]'s.
///
/// Panics as [`dot_rows`], and when `ty` is not [`packed::packs`]ed.
pub fn dot_rows16_packed(isa: Isa, ty: GgmlType, rows: &[u8], act: &Q16Act, y: &mut [f32]) {
    assert!(packed::packs(ty), "{ty:?} rows are not packed");
    let Some(rb) = check(isa, ty, rows, act, y.len()) else { return y.fill(0.0) };
    let whole = y.len() / packed::GROUP * packed::GROUP;
    let (groups, tail) = rows.split_at(whole * rb);
    let (yg, yt) = y.split_at_mut(whole);
    match isa {
        Isa::Scalar => {
            packed::dot_groups_scalar(ty, groups, rb, act, yg);
            scalar::dot_rows(ty, tail, rb, act, yt);
        }
        // SAFETY: as in `dot_rows`; `groups` is whole groups of eight rows (`yg.len()` rows).
        #[cfg(target_arch = "x86_64")]
        _ => unsafe {
            x86::dot_groups16(isa, ty, groups, rb, &[act], yg.as_mut_ptr(), yg.len());
            x86::dot_rows16(isa, ty, tail, rb, act, yt);
        },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the scalar kernels exist off x86-64"),
    }
}

/// The prefill product over packed rows: `y[t · n + r]` = row `r` of `rows` (`n` rows laid out
/// by [`packed::pack_rows`]) times `acts[t]`, for every input at once, so that each group's codes
/// are loaded and unpacked once for several inputs (four with AVX2's registers, three with
/// AVX-512's, whose input codes each meet two groups). Each product equals [`dot_rows16_packed`]'s.
///
/// Panics as [`dot_rows16_packed`], and when `y` is not `acts.len() · n` values or the inputs
/// differ in length.
pub fn gemm16_packed(isa: Isa, ty: GgmlType, rows: &[u8], acts: &[Q16Act], y: &mut [f32]) {
    let n = gemm_rows(ty, rows, acts.first().map_or(0, |a| a.len()));
    assert_eq!(y.len(), acts.len() * n, "{} outputs for {} inputs of {n} rows", y.len(), acts.len());
    // SAFETY: `y` holds `acts.len()` rows of `n` values.
    unsafe { gemm16_packed_to(isa, ty, rows, acts, y.as_mut_ptr(), n) }
}

/// [`gemm16_packed`] with input `t`'s products at `y + t · ldy`: a tile of a larger product's
/// columns, written in place.
///
/// # Safety
/// `y + t · ldy` is `n` writable values (the rows of `rows`) for each input `t`, which no other
/// thread touches meanwhile.
pub(crate) unsafe fn gemm16_packed_to(isa: Isa, ty: GgmlType, rows: &[u8], acts: &[Q16Act], y: *mut f32, ldy: usize) {
    let Some(first) = acts.first() else { return };
    assert!(acts.iter().all(|a| a.len() == first.len()), "inputs of different lengths");
    assert!(packed::packs(ty), "{ty:?} rows are not packed");
    let n = gemm_rows(ty, rows, first.len());
    // SAFETY: input `t`'s `n` outputs (the caller's contract).
    let out = |t: usize| unsafe { std::slice::from_raw_parts_mut(y.add(t * ldy), n) };
    // The checks of `dot_rows`, once.
    let Some(rb) = check(isa, ty, rows, first, n) else { return (0..acts.len()).for_each(|t| out(t).fill(0.0)) };
    let whole = n / packed::GROUP * packed::GROUP;
    match isa {
        // SAFETY: as in `dot_rows16_packed`; every input has the checked length; the outputs
        // are the caller's.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => unsafe {
            x86::dot_groups16(isa, ty, &rows[..whole * rb], rb, acts, y, ldy);
            for (t, a) in acts.iter().enumerate().filter(|_| whole < n) {
                x86::dot_rows16(isa, ty, &rows[whole * rb..], rb, a, &mut out(t)[whole..]);
            }
        },
        _ => acts.iter().enumerate().for_each(|(t, a)| dot_rows16_packed(isa, ty, rows, a, out(t))),
    }
}

/// [`gemm16_packed`] with 8-bit codes ([`packed::PackedQ8Act`], each quantized for `ty`): four
/// values of eight rows in one `vpdpbusd`, twice the 16-bit kernel's products per instruction,
/// at the 8-bit codes' precision. Each product's integer sums per block are those of
/// [`dot_rows`] with the input's plain codes.
///
/// Panics as [`gemm16_packed`].
pub fn gemm8_packed(isa: Isa, ty: GgmlType, rows: &[u8], acts: &[packed::PackedQ8Act], y: &mut [f32]) {
    let n = gemm_rows(ty, rows, acts.first().map_or(0, |a| a.len()));
    assert_eq!(y.len(), acts.len() * n, "{} outputs for {} inputs of {n} rows", y.len(), acts.len());
    // SAFETY: `y` holds `acts.len()` rows of `n` values.
    unsafe { gemm8_packed_to(isa, ty, rows, acts, y.as_mut_ptr(), n) }
}

/// [`gemm8_packed`] with input `t`'s products at `y + t · ldy`, as [`gemm16_packed_to`].
///
/// # Safety
/// As [`gemm16_packed_to`].
pub(crate) unsafe fn gemm8_packed_to(isa: Isa, ty: GgmlType, rows: &[u8], acts: &[packed::PackedQ8Act], y: *mut f32, ldy: usize) {
    let Some(first) = acts.first() else { return };
    assert!(acts.iter().all(|a| a.len() == first.len()), "inputs of different lengths");
    assert!(packed::packs(ty), "{ty:?} rows are not packed");
    let n = gemm_rows(ty, rows, first.len());
    // SAFETY: input `t`'s `n` outputs (the caller's contract).
    let out = |t: usize| unsafe { std::slice::from_raw_parts_mut(y.add(t * ldy), n) };
    let Some(rb) = check(isa, ty, rows, &first.plain, n) else { return (0..acts.len()).for_each(|t| out(t).fill(0.0)) };
    let whole = n / packed::GROUP * packed::GROUP;
    let (groups, tail) = rows.split_at(whole * rb);
    match isa {
        // SAFETY: as in `gemm16_packed_to`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => unsafe {
            x86::dot_groups8(isa, ty, groups, rb, acts, y, ldy);
            for (t, a) in acts.iter().enumerate().filter(|_| whole < n) {
                x86::dot_rows(isa, ty, tail, rb, &a.plain, &mut out(t)[whole..]);
            }
        },
        _ => {
            for (t, a) in acts.iter().enumerate() {
                let (yg, yt) = out(t).split_at_mut(whole);
                packed::dot_groups_scalar(ty, groups, rb, &a.plain, yg);
                scalar::dot_rows(ty, tail, rb, &a.plain, yt);
            }
        }
    }
}

/// The rows of `rows` for inputs of `cols` values of `ty` blocks (0 for no columns).
fn gemm_rows(ty: GgmlType, rows: &[u8], cols: usize) -> usize {
    rows.len().checked_div(QMatrix::row_bytes(ty, cols)).unwrap_or(0)
}

/// The checks of [`dot_rows`] for `n` rows: the bytes of one row, or `None` for rows of no
/// columns (the caller zeroes its outputs).
fn check<T>(isa: Isa, ty: GgmlType, rows: &[u8], act: &QAct<T>, n: usize) -> Option<usize> {
    let cols = act.qs.len();
    assert!(supports(ty), "no integer kernel for {ty:?}");
    assert!(isa.is_available(), "{isa:?} kernels on a CPU without them");
    assert!(cols.is_multiple_of(ty.block_size()), "{cols} columns is not a whole number of {ty:?} blocks");
    assert!(act.d.len() * QK8 == cols && act.s.len() * QK8 == cols, "activation scales for {} of {cols} values", act.d.len() * QK8);
    let rb = cols / ty.block_size() * ty.block_bytes();
    assert_eq!(rows.len(), n * rb, "{} bytes for {n} rows of {rb}", rows.len());
    (rb > 0).then_some(rb)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::quant::dequantize;

    /// Random blocks of `ty` with every code pattern possible and finite f16 scales of either sign.
    fn random_blocks(ty: GgmlType, n_blocks: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let bb = ty.block_bytes();
        let mut v: Vec<u8> = (0..n_blocks * bb).map(|_| rng.random()).collect();
        let f16_fields: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K => &[0, 2],
            GgmlType::Q6K => &[208],
            _ => unreachable!("not a kernel type"),
        };
        for b in 0..n_blocks {
            for &o in f16_fields {
                let s = half::f16::from_f32(rng.random_range(-0.05f32..0.05)).to_le_bytes();
                v[b * bb + o..b * bb + o + 2].copy_from_slice(&s);
            }
        }
        v
    }

    /// The dot products computed plainly: dequantized weights times dequantized activations, in
    /// f64; with each the sum of its terms' magnitudes (what f32 rounding scales with).
    fn reference<T: Code>(ty: GgmlType, rows: &[u8], n_rows: usize, act: &QAct<T>) -> Vec<(f64, f64)> {
        let cols = act.len();
        let w = dequantize(ty, rows, n_rows * cols).unwrap();
        let x: Vec<f64> = act.qs.iter().enumerate().map(|(i, &q)| act.d[i / QK8] as f64 * q.into() as f64).collect();
        let terms = |r: &[f32]| r.iter().zip(&x).map(|(&w, x)| w as f64 * x).collect::<Vec<f64>>();
        w.chunks_exact(cols).map(|r| (terms(r).iter().sum(), terms(r).iter().map(|t| t.abs()).sum())).collect()
    }

    #[test]
    fn every_instruction_set_matches_the_plain_product_for_every_type() {
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        let (n_rows, cols) = (11, 512); // 11 rows: groups of four and a remainder
        let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-3f32..3.0)).collect();
        let mut act = Q8Act::default();
        act.quantize(&x).unwrap();
        let mut act16 = Q16Act::default();
        act16.quantize(&x).unwrap();
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
            let rows = random_blocks(ty, n_rows * cols / ty.block_size(), &mut rng);
            let (want, want16) = (reference(ty, &rows, n_rows, &act), reference(ty, &rows, n_rows, &act16));
            for isa in Isa::available() {
                let (mut y, mut y16) = (vec![f32::NAN; n_rows], vec![f32::NAN; n_rows]);
                dot_rows(isa, ty, &rows, &act, &mut y);
                dot_rows16(isa, ty, &rows, &act16, &mut y16);
                for (bits, y, want) in [(8, &y, &want), (16, &y16, &want16)] {
                    for (r, (&got, &(want, magnitude))) in y.iter().zip(want).enumerate() {
                        // f32 rounding of the scales and of ≤ 16 sums a lane: far below one block's share.
                        let tol = 1e-5 * magnitude;
                        assert!((got as f64 - want).abs() <= tol, "{isa:?} {ty:?} {bits}-bit row {r}: {got} vs {want}");
                    }
                }
            }
            // 16-bit codes follow x 256 times more closely than 8-bit ones.
            let exact: Vec<f64> = {
                let w = dequantize(ty, &rows, n_rows * cols).unwrap();
                w.chunks_exact(cols).map(|r| r.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum()).collect()
            };
            let err = |want: &[(f64, f64)]| want.iter().zip(&exact).map(|((w, _), e)| (w - e).abs()).fold(0f64, f64::max);
            assert!(err(&want16) * 50.0 < err(&want), "{ty:?}: 16-bit error {} vs 8-bit {}", err(&want16), err(&want));
        }
    }

    #[test]
    fn packed_rows_unpack_to_the_plain_rows_and_every_instruction_set_multiplies_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        // 27 rows: three groups of eight and three plain rows after them.
        let (n_rows, cols) = (27, 320);
        let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-3f32..3.0)).collect();
        let mut act = Q16Act::default();
        act.quantize(&x).unwrap();
        let acts: Vec<Q16Act> = (0..7)
            .map(|_| {
                let mut a = Q16Act::default();
                a.quantize(&(0..cols).map(|_| rng.random_range(-3f32..3.0)).collect::<Vec<f32>>()).unwrap();
                a
            })
            .collect();
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0] {
            let rows = random_blocks(ty, n_rows * cols / 32, &mut rng);
            let rb = rows.len() / n_rows;
            let mut packed_rows = rows.clone();
            packed::pack_rows(ty, &mut packed_rows, rb);
            assert_ne!(packed_rows[..24 * rb], rows[..24 * rb], "{ty:?}: the groups were rearranged");
            assert_eq!(packed_rows[24 * rb..], rows[24 * rb..], "{ty:?}: the rows after the last group stay plain");
            let mut back = vec![0u8; rows.len()];
            packed::unpack_rows(ty, &packed_rows, rb, &mut back);
            assert_eq!(back, rows, "{ty:?}: unpacking gives the plain rows back");
            let mut values = vec![f32::NAN; n_rows * cols];
            packed::decode_rows(ty, &packed_rows, rb, &mut values);
            assert_eq!(values, dequantize(ty, &rows, n_rows * cols).unwrap(), "{ty:?}: decoded from the groups as from the plain rows");
            let want = reference(ty, &rows, n_rows, &act);
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; n_rows];
                dot_rows16_packed(isa, ty, &packed_rows, &act, &mut y);
                for (r, (&got, &(want, magnitude))) in y.iter().zip(&want).enumerate() {
                    assert!((got as f64 - want).abs() <= 1e-5 * magnitude, "{isa:?} {ty:?} packed row {r}: {got} vs {want}");
                }
                // A later part of the matrix on its own (as a task gets it): whole groups, then the tail.
                let mut part = vec![f32::NAN; n_rows - 8];
                dot_rows16_packed(isa, ty, &packed_rows[8 * rb..], &act, &mut part);
                assert_eq!(part, y[8..], "{isa:?} {ty:?}: rows 8.. alone");
                // Seven inputs at once (tiles of three or four, then the rest alone), over two
                // groups, three (with AVX-512's tiles a pair and one alone) and groups with plain
                // rows after them.
                for n in [16, 24, n_rows] {
                    let mut y7 = vec![f32::NAN; 7 * n];
                    gemm16_packed(isa, ty, &packed_rows[..n * rb], &acts, &mut y7);
                    for (t, (a, got)) in acts.iter().zip(y7.chunks_exact(n)).enumerate() {
                        let mut want = vec![f32::NAN; n];
                        dot_rows16_packed(isa, ty, &packed_rows[..n * rb], a, &mut want);
                        assert_eq!(got, want, "{isa:?} {ty:?}: input {t} of seven, {n} rows");
                    }
                }
            }
        }
    }

    #[test]
    fn every_instruction_set_multiplies_packed_rows_by_8_bit_inputs() {
        let mut rng = ChaCha8Rng::seed_from_u64(18);
        // 27 rows: three groups of eight and three plain rows after them.
        let (n_rows, cols) = (27, 320);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0] {
            let acts: Vec<packed::PackedQ8Act> = (0..7)
                .map(|_| packed::PackedQ8Act::quantize(ty, &(0..cols).map(|_| rng.random_range(-3f32..3.0)).collect::<Vec<f32>>()).unwrap())
                .collect();
            let rows = random_blocks(ty, n_rows * cols / 32, &mut rng);
            let rb = rows.len() / n_rows;
            let mut packed_rows = rows.clone();
            packed::pack_rows(ty, &mut packed_rows, rb);
            // Seven inputs (tiles of three or four, then the rest alone) over two groups, three
            // (with AVX-512's tiles a pair and one alone), groups with plain rows after them, and
            // plain rows alone.
            for (from, n) in [(0, 16), (0, 24), (0, n_rows), (24, 3)] {
                let part = &packed_rows[from * rb..(from + n) * rb];
                for isa in Isa::available() {
                    let mut y = vec![f32::NAN; 7 * n];
                    gemm8_packed(isa, ty, part, &acts, &mut y);
                    for (t, (a, got)) in acts.iter().zip(y.chunks_exact(n)).enumerate() {
                        let want = reference(ty, &rows[from * rb..(from + n) * rb], n, &a.plain);
                        for (r, (&got, &(want, magnitude))) in got.iter().zip(&want).enumerate() {
                            assert!((got as f64 - want).abs() <= 1e-5 * magnitude, "{isa:?} {ty:?} input {t} row {}: {got} vs {want}", from + r);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn quantized_activations_round_to_the_nearest_code() {
        let mut x = vec![0f32; 64];
        x[0] = -127.0; // scale 1
        x[1] = 50.4;
        x[2] = 0.5; // half away from zero: 1
        x[3] = -0.5;
        let mut act = Q8Act::default();
        act.quantize(&x).unwrap();
        assert_eq!(act.d, vec![1.0, 0.0], "an all-zero block has scale 0");
        assert_eq!(&act.qs[..4], &[-127, 50, 1, -1]);
        assert!(act.qs[32..].iter().all(|&q| q == 0));
        assert_eq!(act.s, vec![-77.0, 0.0]);
        assert_eq!(act.quantize(&x[..40]), Err(NotWholeBlocks(40)));
        let mut act16 = Q16Act::default();
        x[0] = -32767.0;
        act16.quantize(&x).unwrap();
        assert_eq!(&act16.qs[..4], &[-32767, 50, 1, -1]);
        assert_eq!(act16.d, vec![1.0, 0.0]);
    }

    #[test]
    fn simd_quantization_gives_the_portable_codes() {
        if !crate::matvec::has_avx2_fma() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        for case in 0..400 {
            let mut x: Vec<f32> = (0..96).map(|_| rng.random_range(-4f32..4.0)).collect();
            if case % 2 == 0 {
                // Exact halves (block maximum 127 or 32767 gives scale 1): the ties of rounding.
                let max = if case % 4 == 0 { 127.0 } else { 32767.0 };
                x[..32].iter_mut().for_each(|v| *v = (*v * 8.0).round() + 0.5);
                x[0] = max;
                x[32] = f32::NAN;
                x[64] = -0.0;
            }
            let (mut a, mut b) = (Q8Act::default(), Q8Act::default());
            a.quantize_with(&x, true).unwrap();
            b.quantize_with(&x, false).unwrap();
            assert_eq!((&a.qs, &a.d, &a.s), (&b.qs, &b.d, &b.s), "8-bit case {case}");
            let (mut a, mut b) = (Q16Act::default(), Q16Act::default());
            a.quantize_with(&x, true).unwrap();
            b.quantize_with(&x, false).unwrap();
            assert_eq!((&a.qs, &a.d, &a.s), (&b.qs, &b.d, &b.s), "16-bit case {case}");
        }
    }

    #[test]
    fn mismatched_lengths_panic_before_reading() {
        let mut act = Q8Act::default();
        act.quantize(&[1.0; 64]).unwrap();
        let short = vec![0u8; 2 * 18 - 1];
        let r = std::panic::catch_unwind(|| dot_rows(Isa::current(), GgmlType::Q4_0, &short, &act, &mut [0f32; 1]));
        assert!(r.is_err(), "a row of {} bytes for 64 Q4_0 values was read", short.len());
        let r = std::panic::catch_unwind(|| dot_rows(Isa::current(), GgmlType::F16, &[0u8; 128], &act, &mut [0f32; 1]));
        assert!(r.is_err(), "an F16 row went to an integer kernel");
    }

    #[test]
    fn an_unavailable_instruction_set_is_refused() {
        for isa in ALL.into_iter().filter(|i| !i.is_available()) {
            assert_eq!(isa.select(), Err(IsaUnavailable(isa)));
        }
        Isa::available()[0].select().unwrap();
        assert_eq!(Isa::current(), Isa::available()[0]);
    }
}

//! The portable kernels: per block, the integer sum of weight codes times activation codes, then
//! one f32 multiply-add by the two scales (and the weight block's offset or minimum times the
//! activation block's sum). The SIMD kernels compute the same integer sums.

use super::{Code, QAct, QK8};
use crate::quant::{GgmlType, f16_at, q5_values, scale_min_k4};

/// See [`super::dot_rows`]; `rb` is the bytes of one row (checked by the caller).
pub(super) fn dot_rows<T: Code>(ty: GgmlType, rows: &[u8], rb: usize, act: &QAct<T>, y: &mut [f32]) {
    for (row, out) in rows.chunks_exact(rb).zip(y) {
        *out = match ty {
            GgmlType::Q4_0 => blocks32(row, 18, act, |b, x| (f16_at(b, 0), nibble_dot(&b[2..18], x), -8.0 * f16_at(b, 0))),
            GgmlType::Q4_1 => blocks32(row, 20, act, |b, x| (f16_at(b, 0), nibble_dot(&b[4..20], x), f16_at(b, 2))),
            GgmlType::Q5_0 => blocks32(row, 22, act, |b, x| (f16_at(b, 0), q5_dot(&b[2..6], &b[6..22], x), -16.0 * f16_at(b, 0))),
            GgmlType::Q5_1 => blocks32(row, 24, act, |b, x| (f16_at(b, 0), q5_dot(&b[4..8], &b[8..24], x), f16_at(b, 2))),
            GgmlType::Q8_0 => blocks32(row, 34, act, |b, x| (f16_at(b, 0), b[2..34].iter().zip(x).map(|(&w, &x)| w as i8 as i32 * x.into()).sum(), 0.0)),
            GgmlType::Q4K => row.chunks_exact(ty.block_bytes()).enumerate().map(|(sb, b)| q4k_block(b, act, 8 * sb)).sum(),
            GgmlType::Q6K => row.chunks_exact(ty.block_bytes()).enumerate().map(|(sb, b)| q6k_block(b, act, 8 * sb)).sum(),
            _ => unreachable!("checked by the caller"),
        };
    }
}

/// Sums over blocks of 32 whose `block` function gives (scale, integer dot with the activation
/// codes, the offset or minimum every value carries).
#[inline(always)]
fn blocks32<T: Code>(row: &[u8], bb: usize, act: &QAct<T>, block: impl Fn(&[u8], &[T]) -> (f32, i32, f32)) -> f32 {
    let (mut acc, mut off) = (0f32, 0f32);
    for (b, (w, x)) in row.chunks_exact(bb).zip(act.qs.chunks_exact(QK8)).enumerate() {
        let (d, isum, m) = block(w, x);
        acc += d * act.d[b] * isum as f32;
        off += m * act.s[b];
    }
    acc + off
}

/// `Σ code·x` for 16 bytes of nibbles: value j in the low nibble of byte j, value j + 16 in its
/// high nibble (Q4_0, Q4_1).
#[inline(always)]
fn nibble_dot<T: Code>(qs: &[u8], x: &[T]) -> i32 {
    qs.iter().enumerate().map(|(j, &q)| (q & 15) as i32 * x[j].into() + (q >> 4) as i32 * x[j + 16].into()).sum()
}

/// `Σ code·x` for the 5-bit codes of a Q5_0 / Q5_1 block (fifth bits `qh`, nibbles `qs`).
#[inline(always)]
fn q5_dot<T: Code>(qh: &[u8], qs: &[u8], x: &[T]) -> i32 {
    let codes = q5_values(u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]), qs);
    codes.iter().zip(x).map(|(&q, &x)| q as i32 * x.into()).sum()
}

/// One Q4_K super-block: eight sub-blocks of 32 (activation blocks `first..first + 8`), chunk `c`
/// of 32 bytes holding sub-block 2c in its low nibbles and 2c + 1 in its high ones.
fn q4k_block<T: Code>(b: &[u8], act: &QAct<T>, first: usize) -> f32 {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (mut acc, mut off) = (0f32, 0f32);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &b[4..16]);
        let q = &b[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
        let shift = 4 * (j % 2);
        let x = &act.qs[(first + j) * QK8..(first + j + 1) * QK8];
        let isum: i32 = q.iter().zip(x).map(|(&q, &x)| ((q >> shift) & 15) as i32 * x.into()).sum();
        acc += d * sc as f32 * act.d[first + j] * isum as f32;
        off += dmin * m as f32 * act.s[first + j];
    }
    acc - off
}

/// One Q6_K super-block: two halves of four groups of 32 values (activation blocks
/// `first..first + 8`), each group two sub-blocks of 16 with their own signed scale.
fn q6k_block<T: Code>(b: &[u8], act: &QAct<T>, first: usize) -> f32 {
    let d = f16_at(b, 208);
    let mut acc = 0f32;
    for h in 0..2 {
        let (ql, qh, sc) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..160 + 32 * h], &b[192 + 8 * h..200 + 8 * h]);
        for k in 0..4 {
            let a = first + 4 * h + k;
            let x = &act.qs[a * QK8..(a + 1) * QK8];
            let mut isum = [0i32; 2];
            for l in 0..32 {
                let low = (ql[l + 32 * (k % 2)] >> (4 * (k / 2))) & 15;
                let high = (qh[l] >> (2 * k)) & 3;
                isum[l / 16] += ((low | high << 4) as i32 - 32) * x[l].into();
            }
            // In i64: with 16-bit codes one scaled sum can reach 2^31.
            let scaled = sc[2 * k] as i8 as i64 * isum[0] as i64 + sc[2 * k + 1] as i8 as i64 * isum[1] as i64;
            acc += d * act.d[a] * scaled as f32;
        }
    }
    acc
}

//! Rows repacked in groups of [`GROUP`] for the one-token products (as llama.cpp repacks Q4_0
//! into interleaved groups at load): per block of 32 values, the eight rows' f16 scales side by
//! side (16 bytes), then their codes interleaved so that one 32-byte load holds, in each 32-bit
//! lane `r`, two consecutive values of row `r` for several value pairs. A kernel then multiplies
//! a pair of activation codes (one broadcast 32-bit load) into all eight rows at once with one
//! 16-bit multiply-add (`madd` / `vpdpwssd`), each row's sum stays in its own lane (no horizontal
//! sums), and the eight scales are converted and applied as one vector.
//!
//! Lane `r` of load `k` holds two 16-bit words, `i` = 0 and 1; word `i` holds, in its `E` fields
//! of `16 / E` bits, the codes of values `2(E·k + e) + i` of row `r`, `e < E`: Q4_0 has `E` = 4
//! nibble fields (4 loads a block), Q8_0 `E` = 2 byte fields (8 loads a block). A group block
//! takes as many bytes as its eight plain blocks, so rows `a..b` (`a`, `b` multiples of eight)
//! lie at the same byte range in either layout; the rows after the last whole group stay plain.

use super::Q16Act;
use crate::quant::GgmlType;

/// Rows per packed group.
pub const GROUP: usize = 8;

/// Whether rows of `ty` are packed (Q4_0 and Q8_0).
pub fn packs(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q8_0)
}

/// Code fields per 16-bit word: 4 nibbles (Q4_0) or 2 bytes (Q8_0).
const fn fields(ty: GgmlType) -> usize {
    if matches!(ty, GgmlType::Q8_0) { 2 } else { 4 }
}

/// Code `j` (0..32) of a plain block: the nibble (Q4_0, value j in the low nibble of byte j,
/// j + 16 in its high one) or the byte (Q8_0, as stored).
#[inline(always)]
fn code(ty: GgmlType, blk: &[u8], j: usize) -> u16 {
    match ty {
        GgmlType::Q8_0 => blk[2 + j] as u16,
        _ => (blk[2 + j % 16] >> (4 * (j / 16)) & 15) as u16,
    }
}

/// Packs one block of eight plain rows' blocks (`plain[r]`) into `out` (8 block lengths).
fn pack_block(ty: GgmlType, plain: [&[u8]; GROUP], out: &mut [u8]) {
    let e_n = fields(ty);
    let bits = 16 / e_n;
    for (r, p) in plain.iter().enumerate() {
        out[2 * r..2 * r + 2].copy_from_slice(&p[..2]);
    }
    for k in 0..16 / e_n {
        for (r, p) in plain.iter().enumerate() {
            for i in 0..2 {
                let word = (0..e_n).fold(0u16, |w, e| w | code(ty, p, 2 * (e_n * k + e) + i) << (bits * e));
                let at = 16 + 32 * k + 4 * r + 2 * i;
                out[at..at + 2].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
}

/// Row `r` (of a group) of one packed group block, as its plain block bytes, into `out`.
fn unpack_block(ty: GgmlType, packed: &[u8], r: usize, out: &mut [u8]) {
    let e_n = fields(ty);
    let bits = 16 / e_n;
    out[..2].copy_from_slice(&packed[2 * r..2 * r + 2]);
    if ty == GgmlType::Q4_0 {
        out[2..18].fill(0);
    }
    for k in 0..16 / e_n {
        for i in 0..2 {
            let at = 16 + 32 * k + 4 * r + 2 * i;
            let word = u16::from_le_bytes([packed[at], packed[at + 1]]);
            for e in 0..e_n {
                let (j, c) = (2 * (e_n * k + e) + i, (word >> (bits * e)) as u8);
                match ty {
                    GgmlType::Q8_0 => out[2 + j] = c,
                    _ => out[2 + j % 16] |= (c & 15) << (4 * (j / 16)),
                }
            }
        }
    }
}

/// Rearranges `data` (rows of `rb` bytes of `ty` blocks) in place: every whole group of eight
/// rows into the packed layout; the rows after the last whole group stay as they are.
///
/// Panics when `ty` is not [`packs`]ed or `data` is not whole rows.
pub fn pack_rows(ty: GgmlType, data: &mut [u8], rb: usize) {
    assert!(packs(ty) && rb.is_multiple_of(ty.block_bytes()), "{rb}-byte rows of {ty:?} cannot be packed");
    if rb == 0 {
        return;
    }
    assert!(data.len().is_multiple_of(rb), "{} bytes is not whole rows of {rb}", data.len());
    let bb = ty.block_bytes();
    let mut plain = vec![0u8; GROUP * rb];
    for group in data.chunks_exact_mut(GROUP * rb) {
        plain.copy_from_slice(group);
        for (b, out) in group.chunks_exact_mut(GROUP * bb).enumerate() {
            let rows: [&[u8]; GROUP] = std::array::from_fn(|r| &plain[r * rb + b * bb..r * rb + (b + 1) * bb]);
            pack_block(ty, rows, out);
        }
    }
}

/// The plain bytes of row `r` of `data` (whole rows of `rb` bytes, packed by [`pack_rows`])
/// into `out` (`rb` bytes).
///
/// Panics when `r` is not a row of `data` or `out` is not one row.
pub fn unpack_row(ty: GgmlType, data: &[u8], rb: usize, r: usize, out: &mut [u8]) {
    assert!(out.len() == rb && (r + 1) * rb <= data.len(), "row {r} of {} rows of {rb} bytes", data.len() / rb.max(1));
    let whole = data.len() / rb.max(1) / GROUP * GROUP;
    if r >= whole {
        out.copy_from_slice(&data[r * rb..(r + 1) * rb]);
        return;
    }
    let (bb, g) = (ty.block_bytes(), r / GROUP * GROUP * rb);
    for (b, o) in out.chunks_exact_mut(bb).enumerate() {
        unpack_block(ty, &data[g + b * GROUP * bb..g + (b + 1) * GROUP * bb], r % GROUP, o);
    }
}

/// [`unpack_row`] for every row of `data` into `out` (as long as `data`).
pub fn unpack_rows(ty: GgmlType, data: &[u8], rb: usize, out: &mut [u8]) {
    assert_eq!(out.len(), data.len(), "unpacking {} bytes into {}", data.len(), out.len());
    for (r, o) in out.chunks_exact_mut(rb.max(1)).enumerate() {
        unpack_row(ty, data, rb, r, o);
    }
}

/// The portable product of whole packed groups (`rows`, `y.len()` a multiple of eight): each
/// group unpacked, then the scalar kernel.
pub(super) fn dot_groups_scalar(ty: GgmlType, rows: &[u8], rb: usize, act: &Q16Act, y: &mut [f32]) {
    let mut plain = vec![0u8; GROUP * rb];
    for (g, out) in rows.chunks_exact(GROUP * rb).zip(y.chunks_exact_mut(GROUP)) {
        unpack_rows(ty, g, rb, &mut plain);
        super::scalar::dot_rows(ty, &plain, rb, act, out);
    }
}

/// Decodes whole rows of `data` (rows of `rb` bytes laid out by [`pack_rows`]) to f32 values
/// into `out` (as [`crate::quant::dequantize`] would decode the plain rows), straight from the
/// packed groups: the prefill tiles' decoder.
///
/// Panics when `ty` is not [`packs`]ed or the lengths disagree.
pub fn decode_rows(ty: GgmlType, data: &[u8], rb: usize, out: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => decode_rows_of::<false>(data, rb, out),
        GgmlType::Q8_0 => decode_rows_of::<true>(data, rb, out),
        _ => panic!("{ty:?} rows are not packed"),
    }
}

/// [`decode_rows`] for Q8_0 (`Q8`) or Q4_0.
fn decode_rows_of<const Q8: bool>(data: &[u8], rb: usize, out: &mut [f32]) {
    let (ty, e_n) = if Q8 { (GgmlType::Q8_0, 2) } else { (GgmlType::Q4_0, 4) };
    let (bb, bits) = (ty.block_bytes(), 16 / e_n);
    let cols = rb / bb * 32;
    let n = if rb == 0 { 0 } else { data.len() / rb };
    assert!(n * rb == data.len() && out.len() == n * cols, "decoding {} bytes of {rb}-byte rows into {} values", data.len(), out.len());
    let whole = n / GROUP * GROUP;
    for (gd, go) in data[..whole * rb].chunks_exact(GROUP * rb).zip(out.chunks_exact_mut(GROUP * cols)) {
        for (b, blk) in gd.chunks_exact(GROUP * bb).enumerate() {
            let d: [f32; GROUP] = std::array::from_fn(|r| crate::quant::f16_at(blk, 2 * r));
            for k in 0..16 / e_n {
                for (r, &d) in d.iter().enumerate() {
                    for i in 0..2 {
                        let at = 16 + 32 * k + 4 * r + 2 * i;
                        let word = u16::from_le_bytes([blk[at], blk[at + 1]]);
                        for e in 0..e_n {
                            let c = word >> (bits * e);
                            let q = if Q8 { c as u8 as i8 as i32 } else { (c & 15) as i32 - 8 };
                            go[r * cols + 32 * b + 2 * (e_n * k + e) + i] = q as f32 * d;
                        }
                    }
                }
            }
        }
    }
    for (row, o) in data[whole * rb..].chunks_exact(rb.max(1)).zip(out[whole * cols..].chunks_exact_mut(cols.max(1))) {
        for (b, y) in row.chunks_exact(bb).zip(o.chunks_exact_mut(32)) {
            ty.decode_block(b, y);
        }
    }
}

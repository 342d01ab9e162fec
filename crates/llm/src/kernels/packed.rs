//! Rows repacked in groups of [`GROUP`] for the one-token products (as llama.cpp repacks Q4_0
//! into interleaved groups at load): per block of 32 values, the eight rows' f16 scales side by
//! side (16 bytes), then their codes interleaved so that one 32-byte load holds, in each 32-bit
//! lane `r`, two consecutive values of row `r` for several value pairs. A kernel then multiplies
//! a pair of activation codes (one broadcast 32-bit load) into all eight rows at once with one
//! 16-bit multiply-add (`madd` / `vpdpwssd`), each row's sum stays in its own lane (no horizontal
//! sums), and the eight scales are converted and applied as one vector.
//!
//! Lane `r` of load `k` holds two 16-bit words, `i` = 0 and 1; word `i` holds, in its `E` fields
//! of `16 / E` bits, the codes of values `2(E·k + e) + i` of row `r`, `e < E`: the 4-bit types
//! have `E` = 4 nibble fields (4 loads a block; Q4_1 and Q5_1 put their eight minimums after the
//! scales, Q5_0 and Q5_1 their fifth bits in 32 bytes before the codes, see `Layout`), Q8_0
//! `E` = 2 byte fields (8 loads a block). A group block takes as many bytes as its eight plain
//! blocks, so rows `a..b` (`a`, `b` multiples of eight)
//! lie at the same byte range in either layout; the rows after the last whole group stay plain.

use super::{Code, QAct};
use crate::quant::GgmlType;

/// Rows per packed group.
pub const GROUP: usize = 8;

/// Whether rows of `ty` are packed (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
pub fn packs(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0)
}

/// Where a type's fields lie, plain and packed.
#[derive(Clone, Copy)]
pub(crate) struct Layout {
    /// Q8_0: byte codes (two fields a word), else nibbles (four).
    pub(crate) q8: bool,
    /// A minimum per block (Q4_1, Q5_1): packed as eight f16 after the scales.
    pub(crate) min: bool,
    /// A fifth bit per value (Q5_0, Q5_1): packed as 32 bytes after the scales (and minimums),
    /// lane `r`'s word `i` holding in bit `4k + e` the fifth bit of value `2(4k + e) + i`.
    pub(crate) five: bool,
}

impl Layout {
    /// The layout of `ty` (one of [`packs`]).
    pub(crate) const fn of(ty: GgmlType) -> Layout {
        Layout {
            q8: matches!(ty, GgmlType::Q8_0),
            min: matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1),
            five: matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1),
        }
    }

    /// Code fields per 16-bit word: 2 bytes (Q8_0) or 4 nibbles.
    const fn fields(self) -> usize {
        if self.q8 { 2 } else { 4 }
    }

    /// Byte offset of the plain block's fifth bits (after the scale and minimum).
    const fn plain_qh(self) -> usize {
        if self.min { 4 } else { 2 }
    }

    /// Byte offset of the plain block's codes.
    const fn plain_qs(self) -> usize {
        self.plain_qh() + if self.five { 4 } else { 0 }
    }

    /// Byte offset of a packed group block's fifth bits.
    pub(crate) const fn packed_qh(self) -> usize {
        if self.min { 32 } else { 16 }
    }

    /// Byte offset of a packed group block's interleaved codes.
    pub(crate) const fn packed_qs(self) -> usize {
        self.packed_qh() + if self.five { 32 } else { 0 }
    }

    /// Code `j` (0..32) of a plain block: the byte (Q8_0, as stored), or the nibble (value `j`
    /// in the low nibble of byte `j`, `j + 16` in its high one) with its fifth bit (bit `j` of
    /// the block's 32 high bits).
    #[inline(always)]
    fn code(self, blk: &[u8], j: usize) -> u16 {
        if self.q8 {
            return blk[2 + j] as u16;
        }
        let mut c = (blk[self.plain_qs() + j % 16] >> (4 * (j / 16)) & 15) as u16;
        if self.five {
            let qh = u32::from_le_bytes(blk[self.plain_qh()..self.plain_qh() + 4].try_into().expect("4 bytes"));
            c |= ((qh >> j & 1) << 4) as u16;
        }
        c
    }
}

/// Packs one block of eight plain rows' blocks (`plain[r]`) into `out` (8 block lengths).
fn pack_block(ty: GgmlType, plain: [&[u8]; GROUP], out: &mut [u8]) {
    let l = Layout::of(ty);
    let (e_n, bits) = (l.fields(), 16 / l.fields());
    out.fill(0);
    for (r, p) in plain.iter().enumerate() {
        out[2 * r..2 * r + 2].copy_from_slice(&p[..2]);
        if l.min {
            out[16 + 2 * r..18 + 2 * r].copy_from_slice(&p[2..4]);
        }
    }
    for k in 0..16 / e_n {
        for (r, p) in plain.iter().enumerate() {
            for i in 0..2 {
                let mut word = 0u16;
                for e in 0..e_n {
                    let c = l.code(p, 2 * (e_n * k + e) + i);
                    word |= (c & if l.q8 { 0xFF } else { 15 }) << (bits * e);
                    if l.five {
                        let at = l.packed_qh() + 4 * r + 2 * i;
                        let h = u16::from_le_bytes([out[at], out[at + 1]]) | (c >> 4) << (4 * k + e);
                        out[at..at + 2].copy_from_slice(&h.to_le_bytes());
                    }
                }
                let at = l.packed_qs() + 32 * k + 4 * r + 2 * i;
                out[at..at + 2].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
}

/// Code `j` of row `r` of a packed group block.
#[inline(always)]
fn packed_code(l: Layout, packed: &[u8], r: usize, j: usize) -> u16 {
    let (e_n, bits) = (l.fields(), 16 / l.fields());
    let (p, i) = (j / 2, j % 2);
    let (k, e) = (p / e_n, p % e_n);
    let at = l.packed_qs() + 32 * k + 4 * r + 2 * i;
    let word = u16::from_le_bytes([packed[at], packed[at + 1]]);
    let mut c = word >> (bits * e) & if l.q8 { 0xFF } else { 15 };
    if l.five {
        let at = l.packed_qh() + 4 * r + 2 * i;
        c |= (u16::from_le_bytes([packed[at], packed[at + 1]]) >> (4 * k + e) & 1) << 4;
    }
    c
}

/// Row `r` (of a group) of one packed group block, as its plain block bytes, into `out`.
fn unpack_block(ty: GgmlType, packed: &[u8], r: usize, out: &mut [u8]) {
    let l = Layout::of(ty);
    out.fill(0);
    out[..2].copy_from_slice(&packed[2 * r..2 * r + 2]);
    if l.min {
        out[2..4].copy_from_slice(&packed[16 + 2 * r..18 + 2 * r]);
    }
    let mut qh = 0u32;
    for j in 0..32 {
        let c = packed_code(l, packed, r, j);
        if l.q8 {
            out[2 + j] = c as u8;
        } else {
            out[l.plain_qs() + j % 16] |= (c as u8 & 15) << (4 * (j / 16));
            qh |= ((c >> 4) as u32 & 1) << j;
        }
    }
    if l.five {
        out[l.plain_qh()..l.plain_qh() + 4].copy_from_slice(&qh.to_le_bytes());
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
pub(super) fn dot_groups_scalar<T: Code>(ty: GgmlType, rows: &[u8], rb: usize, act: &QAct<T>, y: &mut [f32]) {
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
        GgmlType::Q4_0 => decode_rows_of::<false, false, false>(ty, data, rb, out),
        GgmlType::Q4_1 => decode_rows_of::<false, true, false>(ty, data, rb, out),
        GgmlType::Q5_0 => decode_rows_of::<false, false, true>(ty, data, rb, out),
        GgmlType::Q5_1 => decode_rows_of::<false, true, true>(ty, data, rb, out),
        GgmlType::Q8_0 => decode_rows_of::<true, false, false>(ty, data, rb, out),
        _ => panic!("{ty:?} rows are not packed"),
    }
}

/// [`decode_rows`] for the type of layout (`Q8`, `MIN`, `FIVE`).
fn decode_rows_of<const Q8: bool, const MIN: bool, const FIVE: bool>(ty: GgmlType, data: &[u8], rb: usize, out: &mut [f32]) {
    let l = Layout { q8: Q8, min: MIN, five: FIVE };
    let bb = ty.block_bytes();
    let cols = rb / bb * 32;
    let n = data.len().checked_div(rb).unwrap_or(0);
    assert!(n * rb == data.len() && out.len() == n * cols, "decoding {} bytes of {rb}-byte rows into {} values", data.len(), out.len());
    // The value a code stands for before the scale: Q4_0's and Q5_0's codes are offset.
    let offset = if Q8 || MIN { 0 } else if FIVE { 16 } else { 8 };
    let whole = n / GROUP * GROUP;
    for (gd, go) in data[..whole * rb].chunks_exact(GROUP * rb).zip(out.chunks_exact_mut(GROUP * cols)) {
        for (b, blk) in gd.chunks_exact(GROUP * bb).enumerate() {
            for r in 0..GROUP {
                let d = crate::quant::f16_at(blk, 2 * r);
                let m = if MIN { crate::quant::f16_at(blk, 16 + 2 * r) } else { 0.0 };
                for (j, y) in go[r * cols + 32 * b..r * cols + 32 * b + 32].iter_mut().enumerate() {
                    let c = packed_code(l, blk, r, j);
                    let q = if Q8 { c as u8 as i8 as i32 } else { c as i32 - offset };
                    *y = if MIN { q as f32 * d + m } else { q as f32 * d };
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

/// An input quantized to 8-bit blocks for [`super::gemm8_packed`]: the codes in their own order
/// (for the plain rows after the last group, and the portable kernel) and in the order the lanes
/// of `ty`'s packed loads hold a row's values, four to a 32-bit lane, so that one broadcast
/// 32-bit load of them meets four codes of each of the group's eight rows in one `vpdpbusd`.
///
/// The lanes of a nibble type's load `k` (of four a block), masked to their low nibbles, hold
/// values `8k + [0, 4, 1, 5]` of their row, shifted down by four `8k + [2, 6, 3, 7]`; a Q8_0
/// load `k` (of eight) holds values `4k + [0, 2, 1, 3]`.
#[derive(Debug, Default, Clone)]
pub struct PackedQ8Act {
    /// The codes in the input's order, with each block's scale and sum.
    pub(crate) plain: super::Q8Act,
    /// The codes of each block of 32 in the lanes' order.
    pub(crate) lanes: Vec<i8>,
}

impl PackedQ8Act {
    /// `x` (a whole number of blocks of 32) quantized for rows of `ty` (one of [`packs`]).
    ///
    /// Panics when `ty` is not packed.
    pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Self, super::NotWholeBlocks> {
        let mut a = PackedQ8Act::default();
        a.quantize_into(ty, x)?;
        Ok(a)
    }

    /// [`PackedQ8Act::quantize`] into this buffer, reusing its memory.
    ///
    /// Panics when `ty` is not packed.
    pub fn quantize_into(&mut self, ty: GgmlType, x: &[f32]) -> Result<(), super::NotWholeBlocks> {
        assert!(packs(ty), "{ty:?} rows are not packed");
        self.plain.quantize(x)?;
        let order = lane_order(Layout::of(ty));
        self.lanes.resize(self.plain.qs.len(), 0);
        for (l, b) in self.lanes.chunks_exact_mut(super::QK8).zip(self.plain.qs.chunks_exact(super::QK8)) {
            for (l, &j) in l.iter_mut().zip(&order) {
                *l = b[j as usize];
            }
        }
        Ok(())
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.plain.len()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty()
    }
}

/// Which value of a block of 32 each byte of [`PackedQ8Act::lanes`] holds.
fn lane_order(l: Layout) -> [u8; 32] {
    let quad: [u8; 4] = if l.q8 { [0, 2, 1, 3] } else { [0, 4, 1, 5] };
    std::array::from_fn(|j| {
        let (j, i) = (j as u8, j % 4);
        if l.q8 {
            4 * (j / 4) + quad[i]
        } else {
            // Byte j of eight: the low nibbles' four values, then the high nibbles' (two more).
            8 * (j / 8) + quad[i] + if j % 8 >= 4 { 2 } else { 0 }
        }
    })
}

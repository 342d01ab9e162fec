//! GGML tensor element types and their dequantization to f32, written from the block layouts of
//! the GGML format (`block_q4_0`, …, `block_q6_K`).
//!
//! Every quantized type packs `block_size()` values into `block_bytes()` bytes; the decoders below
//! take whole blocks and never index outside them.

use half::{bf16, f16};
use rayon::prelude::*;

/// A GGML tensor element or block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    Bf16,
    /// 4-bit, scale per 32.
    Q4_0,
    /// 4-bit, scale and minimum per 32.
    Q4_1,
    /// 5-bit, scale per 32.
    Q5_0,
    /// 5-bit, scale and minimum per 32.
    Q5_1,
    /// 8-bit, scale per 32.
    Q8_0,
    /// 2-bit k-quant (super-block of 256).
    Q2K,
    /// 3-bit k-quant.
    Q3K,
    /// 4-bit k-quant.
    Q4K,
    /// 5-bit k-quant.
    Q5K,
    /// 6-bit k-quant.
    Q6K,
}

/// Values in a k-quant super-block.
const QK_K: usize = 256;

impl GgmlType {
    /// The type for a GGML type tag, if it is one we can read.
    pub fn from_tag(tag: u32) -> Option<Self> {
        Some(match tag {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// Values per block.
    pub const fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::Bf16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::Q4_0 => 2 + 16,
            Self::Q4_1 => 2 + 2 + 16,
            Self::Q5_0 => 2 + 4 + 16,
            Self::Q5_1 => 2 + 2 + 4 + 16,
            Self::Q8_0 => 2 + 32,
            Self::Q2K => 16 + 64 + 2 + 2,
            Self::Q3K => 32 + 64 + 12 + 2,
            Self::Q4K => 2 + 2 + 12 + 128,
            Self::Q5K => 2 + 2 + 12 + 32 + 128,
            Self::Q6K => 128 + 64 + 16 + 2,
        }
    }

    /// Decodes one block (`block_bytes()` bytes) into `block_size()` values.
    #[inline(always)]
    pub(crate) fn decode_block(self, b: &[u8], y: &mut [f32]) {
        match self {
            Self::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Self::F16 => y[0] = f16_at(b, 0),
            Self::Bf16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Self::Q4_0 => q4_0(b, y),
            Self::Q4_1 => q4_1(b, y),
            Self::Q5_0 => q5_0(b, y),
            Self::Q5_1 => q5_1(b, y),
            Self::Q8_0 => q8_0(b, y),
            Self::Q2K => q2_k(b, y),
            Self::Q3K => q3_k(b, y),
            Self::Q4K => q45_k::<false>(b, y),
            Self::Q5K => q45_k::<true>(b, y),
            Self::Q6K => q6_k(b, y),
        }
    }
}

/// Dequantizes `n` values of type `ty` from `bytes`; errors (never panics) when the sizes disagree.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    if !n.is_multiple_of(bs) {
        return Err(format!("{n} values is not a whole number of {ty:?} blocks of {bs}"));
    }
    let need = (n / bs).checked_mul(bb).ok_or_else(|| format!("{n} {ty:?} values overflow the address space"))?;
    if bytes.len() != need {
        return Err(format!("{ty:?} data is {} bytes, expected {need} for {n} values", bytes.len()));
    }
    let mut out = vec![0f32; n];
    // Chunks of whole blocks, decoded in parallel.
    let blocks_per_chunk = (65536 / bs).max(1);
    out.par_chunks_mut(blocks_per_chunk * bs)
        .zip(bytes.par_chunks(blocks_per_chunk * bb))
        .for_each(|(y, b)| {
            for (y, b) in y.chunks_exact_mut(bs).zip(b.chunks_exact(bb)) {
                ty.decode_block(b, y);
            }
        });
    Ok(out)
}

/// One Q4_0 block of 32 values as ggml's reference quantizer makes it: the scale `d` (the
/// value of largest magnitude over −8) and 16 bytes of nibbles, value j in the low nibble of byte j
/// and value j + 16 in its high nibble; a value is `(q − 8)·d`.
pub fn quantize_block_q4_0(x: &[f32; 32]) -> (f16, [u8; 16]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let q = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
    (f16::from_f32(d), qs)
}

/// One Q8_0 block of 32 values as ggml's reference quantizer makes it: the scale `d` (largest
/// magnitude over 127) and 32 signed bytes rounded half away from zero; a value is `q·d`.
pub fn quantize_block_q8_0(x: &[f32; 32]) -> (f16, [i8; 32]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (f16::from_f32(d), x.map(|v| (v * id).round() as i8))
}

/// Quantizes `x` into GGML blocks of `ty` (Q4_0 or Q8_0, the types [`quantize_block_q4_0`] and
/// [`quantize_block_q8_0`] make), in the GGUF block layout; errors when `x` is not whole blocks.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, String> {
    if !matches!(ty, GgmlType::Q4_0 | GgmlType::Q8_0) {
        return Err(format!("quantizing to {ty:?} is not supported (Q4_0 and Q8_0 are)"));
    }
    if !x.len().is_multiple_of(32) {
        return Err(format!("{} values is not a whole number of {ty:?} blocks of 32", x.len()));
    }
    let mut out = vec![0u8; x.len() / 32 * ty.block_bytes()];
    out.par_chunks_mut(ty.block_bytes()).zip(x.par_chunks(32)).for_each(|(b, x)| {
        let x: &[f32; 32] = x.try_into().expect("blocks of 32");
        if ty == GgmlType::Q4_0 {
            let (d, qs) = quantize_block_q4_0(x);
            b[..2].copy_from_slice(&d.to_le_bytes());
            b[2..].copy_from_slice(&qs);
        } else {
            let (d, qs) = quantize_block_q8_0(x);
            b[..2].copy_from_slice(&d.to_le_bytes());
            b[2..].iter_mut().zip(qs).for_each(|(b, q)| *b = q as u8);
        }
    });
    Ok(out)
}

/// The little-endian f16 at byte `i` of `b`, as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

#[inline(always)]
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

#[inline(always)]
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// The 5th bits of a Q5 block: bit j of `qh` belongs to value j.
#[inline(always)]
pub(crate) fn q5_values(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        let h0 = (((qh >> j) & 1) << 4) as u8;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        q[j] = (qs[j] & 0x0F) | h0;
        q[j + 16] = (qs[j] >> 4) | h1;
    }
    q
}

#[inline(always)]
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (y, q) in y.iter_mut().zip(q5_values(qh, &b[6..22])) {
        *y = (q as i32 - 16) as f32 * d;
    }
}

#[inline(always)]
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (y, q) in y.iter_mut().zip(q5_values(qh, &b[8..24])) {
        *y = q as f32 * d + m;
    }
}

#[inline(always)]
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = (q as i8) as f32 * d;
    }
}

#[inline(always)]
fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut out = 0;
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0x0F) as f32, dmin * (sc >> 4) as f32);
                for l in 0..16 {
                    y[out] = dl * ((q[part * 16 + l] >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

/// The sixteen 6-bit signed scales of a Q3_K block, unpacked from 12 bytes.
#[inline(always)]
fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}

#[inline(always)]
fn q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    let mut out = 0;
    let mut is = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                for l in 0..16 {
                    let k = part * 16 + l;
                    let low = ((q[k] >> shift) & 3) as i32;
                    let sub = if hmask[k] & m != 0 { 0 } else { 4 };
                    y[out] = dl * (low - sub) as f32;
                    out += 1;
                }
            }
            m <<= 1;
        }
    }
}

/// Scale and minimum `j` (0..8) of a Q4_K/Q5_K block, 6 bits each, from 12 packed bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q4_K (`FIVE = false`) and Q5_K: eight sub-blocks of 32 values with 6-bit scales and minimums;
/// Q5_K adds a fifth bit per value from its `qh` bytes.
#[inline(always)]
fn q45_k<const FIVE: bool>(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let (qh, qs) = if FIVE { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (s1, m1) = scale_min_k4(2 * chunk, scales);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let high = |l: usize, bit: u8| if FIVE && qh[l] & bit != 0 { 16 } else { 0 };
        let y = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            y[l] = d1 * ((q[l] & 0x0F) + high(l, u1)) as f32 - m1;
            y[l + 32] = d2 * ((q[l] >> 4) + high(l, u2)) as f32 - m2;
        }
    }
}

#[inline(always)]
fn q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let sc = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let (ql, qh) = (&ql[half * 64..half * 64 + 64], &qh[half * 32..half * 32 + 32]);
        let sc = &sc[half * 8..half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each test packs chosen integer codes and scales into bytes the way the format describes
    //! (bit by bit, independently of the decoders above), and checks the decoded values against
    //! `scale * code - min` computed directly from the chosen integers.
    use super::*;

    #[test]
    fn a_value_count_whose_byte_size_wraps_is_refused() {
        // 2^62 f32 values are 2^64 bytes, which wrapped to 0 and matched an empty buffer.
        let e = dequantize(GgmlType::F32, &[], 1 << 62).unwrap_err();
        assert!(e.contains("overflow"), "{e}");
    }

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// Sets bit `bit` of a little-endian bit array.
    fn set_bits(buf: &mut [u8], bit: usize, width: usize, value: u32) {
        for k in 0..width {
            if value >> k & 1 == 1 {
                buf[(bit + k) / 8] |= 1 << ((bit + k) % 8);
            }
        }
    }

    fn codes(n: usize, modulo: u32, seed: u32) -> Vec<u32> {
        (0..n as u32).map(|i| (i * 7 + seed * 13 + i / 5) % modulo).collect()
    }

    fn check(ty: GgmlType, bytes: &[u8], expected: &[f32]) {
        let got = dequantize(ty, bytes, expected.len()).unwrap();
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!((g - e).abs() <= 1e-6 * e.abs().max(1.0), "{ty:?} value {i}: got {g}, expected {e}");
        }
    }

    #[test]
    fn plain_floats() {
        let f16s: Vec<u8> = [1.0f32, -0.5, 65504.0].iter().flat_map(|&v| h(v)).collect();
        check(GgmlType::F16, &f16s, &[1.0, -0.5, 65504.0]);
        // bf16 of 3.0 is 0x4040; of -1.0 is 0xBF80.
        check(GgmlType::Bf16, &[0x40, 0x40, 0x80, 0xBF], &[3.0, -1.0]);
        check(GgmlType::F32, &2.5f32.to_le_bytes(), &[2.5]);
    }

    #[test]
    fn q4_0_and_q4_1_nibbles() {
        // Value j (< 16) is the low nibble of byte j, value j+16 its high nibble.
        let q = codes(32, 16, 1);
        let mut qs = [0u8; 16];
        for j in 0..16 {
            qs[j] = (q[j] | q[j + 16] << 4) as u8;
        }
        let d = 0.25f32;
        let mut b = h(d).to_vec();
        b.extend_from_slice(&qs);
        let exp: Vec<f32> = q.iter().map(|&c| (c as f32 - 8.0) * d).collect();
        check(GgmlType::Q4_0, &b, &exp);

        let m = -1.5f32;
        let mut b = h(d).to_vec();
        b.extend_from_slice(&h(m));
        b.extend_from_slice(&qs);
        let exp: Vec<f32> = q.iter().map(|&c| c as f32 * d + m).collect();
        check(GgmlType::Q4_1, &b, &exp);
    }

    #[test]
    fn q5_0_and_q5_1_high_bits() {
        let q = codes(32, 32, 2);
        let mut qs = [0u8; 16];
        let mut qh = [0u8; 4];
        for j in 0..32 {
            set_bits(&mut qh, j, 1, q[j] >> 4);
            let nib = (q[j] & 15) as u8;
            qs[j % 16] |= if j < 16 { nib } else { nib << 4 };
        }
        let d = 0.5f32;
        let mut b = h(d).to_vec();
        b.extend_from_slice(&qh);
        b.extend_from_slice(&qs);
        let exp: Vec<f32> = q.iter().map(|&c| (c as f32 - 16.0) * d).collect();
        check(GgmlType::Q5_0, &b, &exp);

        let m = 3.0f32;
        let mut b = h(d).to_vec();
        b.extend_from_slice(&h(m));
        b.extend_from_slice(&qh);
        b.extend_from_slice(&qs);
        let exp: Vec<f32> = q.iter().map(|&c| c as f32 * d + m).collect();
        check(GgmlType::Q5_1, &b, &exp);
    }

    #[test]
    fn q8_0_signed_bytes() {
        let q: Vec<i8> = (0..32).map(|i| (i as i8 - 16) * 7).collect();
        let d = 0.125f32;
        let mut b = h(d).to_vec();
        b.extend(q.iter().map(|&v| v as u8));
        let exp: Vec<f32> = q.iter().map(|&c| c as f32 * d).collect();
        check(GgmlType::Q8_0, &b, &exp);
    }

    /// Value i of a 256-block in the 2-bit-plane layout shared by Q2_K and Q3_K: which byte of
    /// the 64 `qs` bytes it lives in, and at what shift.
    fn plane_position(i: usize) -> (usize, usize) {
        let half = i / 128; // each half uses 32 bytes
        let within = i % 128;
        let shift = (within / 32) * 2; // four 32-value groups per half, one 2-bit plane each
        (half * 32 + within % 32, shift)
    }

    #[test]
    fn q2_k_scales_mins_and_planes() {
        let q = codes(256, 4, 3);
        let sub_scale = codes(16, 16, 4);
        let sub_min = codes(16, 16, 5);
        let (d, dmin) = (0.5f32, 0.25f32);
        let mut b = vec![0u8; 84];
        for s in 0..16 {
            b[s] = (sub_scale[s] | sub_min[s] << 4) as u8;
        }
        for i in 0..256 {
            let (byte, shift) = plane_position(i);
            b[16 + byte] |= (q[i] as u8) << shift;
        }
        b[80..82].copy_from_slice(&h(d));
        b[82..84].copy_from_slice(&h(dmin));
        let exp: Vec<f32> =
            (0..256).map(|i| d * sub_scale[i / 16] as f32 * q[i] as f32 - dmin * sub_min[i / 16] as f32).collect();
        check(GgmlType::Q2K, &b, &exp);
    }

    #[test]
    fn q3_k_high_mask_and_6_bit_scales() {
        let q = codes(256, 8, 6); // 3-bit codes: value = code - 4
        let sub_scale = codes(16, 64, 7); // 6-bit, value = s - 32
        let d = 0.75f32;
        let mut b = vec![0u8; 110];
        for i in 0..256 {
            let (byte, shift) = plane_position(i);
            b[32 + byte] |= ((q[i] & 3) as u8) << shift;
            // hmask: bit (i / 32) of byte (i % 32).
            if q[i] & 4 != 0 {
                b[i % 32] |= 1 << (i / 32);
            }
        }
        // Scales: low 4 bits of scale s in nibble (s % 8) of bytes 0..8 (low nibbles first), the
        // high 2 bits in 2-bit field (s / 4) of byte 8 + s % 4.
        for s in 0..16 {
            let low = (sub_scale[s] & 15) as u8;
            b[96 + s % 8] |= if s < 8 { low } else { low << 4 };
            b[96 + 8 + s % 4] |= ((sub_scale[s] >> 4) as u8) << (2 * (s / 4));
        }
        b[108..110].copy_from_slice(&h(d));
        let exp: Vec<f32> =
            (0..256).map(|i| d * (sub_scale[i / 16] as f32 - 32.0) * (q[i] as f32 - 4.0)).collect();
        check(GgmlType::Q3K, &b, &exp);
    }

    /// Packs eight 6-bit scales and mins the Q4_K/Q5_K way: for j < 4, scale j in the low 6 bits
    /// of byte j and min j of byte j + 4; for j ≥ 4, the low 4 bits of each in byte j + 4 (scale
    /// low nibble, min high nibble), their top 2 bits in the top bits of bytes j − 4 and j.
    fn pack_k4_scales(scale: &[u32], min: &[u32]) -> [u8; 12] {
        let mut p = [0u8; 12];
        for j in 0..8 {
            let (s, m) = (scale[j] as u8, min[j] as u8);
            if j < 4 {
                p[j] |= s & 63;
                p[j + 4] |= m & 63;
            } else {
                p[j + 4] |= (s & 15) | (m & 15) << 4;
                p[j - 4] |= (s >> 4) << 6;
                p[j] |= (m >> 4) << 6;
            }
        }
        p
    }

    #[test]
    fn q4_k_and_q5_k() {
        let scale = codes(8, 64, 8);
        let min = codes(8, 64, 9);
        let (d, dmin) = (0.5f32, 0.125f32);
        // Value i: chunk c = i / 64 uses 32 bytes; the first 32 values are low nibbles.
        let q4 = codes(256, 16, 10);
        let mut qs = vec![0u8; 128];
        for i in 0..256 {
            let (c, w) = (i / 64, i % 64);
            qs[c * 32 + w % 32] |= (q4[i] as u8) << (4 * (w / 32));
        }
        let mut b = h(d).to_vec();
        b.extend_from_slice(&h(dmin));
        b.extend_from_slice(&pack_k4_scales(&scale, &min));
        b.extend_from_slice(&qs);
        let sub = |i: usize| i / 32;
        let exp: Vec<f32> =
            (0..256).map(|i| d * scale[sub(i)] as f32 * q4[i] as f32 - dmin * min[sub(i)] as f32).collect();
        check(GgmlType::Q4K, &b, &exp);

        // Q5_K: the 5th bit of value i is bit (i / 32) of qh byte (i % 32).
        let q5 = codes(256, 32, 11);
        let mut qs = vec![0u8; 128];
        let mut qh = vec![0u8; 32];
        for i in 0..256 {
            let (c, w) = (i / 64, i % 64);
            qs[c * 32 + w % 32] |= ((q5[i] & 15) as u8) << (4 * (w / 32));
            if q5[i] & 16 != 0 {
                qh[i % 32] |= 1 << (i / 32);
            }
        }
        let mut b = h(d).to_vec();
        b.extend_from_slice(&h(dmin));
        b.extend_from_slice(&pack_k4_scales(&scale, &min));
        b.extend_from_slice(&qh);
        b.extend_from_slice(&qs);
        let exp: Vec<f32> =
            (0..256).map(|i| d * scale[sub(i)] as f32 * q5[i] as f32 - dmin * min[sub(i)] as f32).collect();
        check(GgmlType::Q5K, &b, &exp);
    }

    #[test]
    fn q6_k() {
        let q = codes(256, 64, 12); // value = code - 32
        let scales: Vec<i8> = (0..16).map(|s| (s as i8 - 8) * 9).collect();
        let d = 0.0625f32;
        let mut ql = vec![0u8; 128];
        let mut qh = vec![0u8; 64];
        for i in 0..256 {
            // Half (128 values) → 64 ql bytes and 32 qh bytes; within it four 32-value groups:
            // group g uses ql bytes (g % 2) * 32.. with nibble g / 2, and qh 2-bit field g.
            let (half, w) = (i / 128, i % 128);
            let (g, l) = (w / 32, w % 32);
            ql[half * 64 + (g % 2) * 32 + l] |= ((q[i] & 15) as u8) << (4 * (g / 2));
            qh[half * 32 + l] |= ((q[i] >> 4) as u8) << (2 * g);
        }
        let mut b = ql;
        b.extend_from_slice(&qh);
        b.extend(scales.iter().map(|&s| s as u8));
        b.extend_from_slice(&h(d));
        let exp: Vec<f32> = (0..256).map(|i| d * scales[i / 16] as f32 * (q[i] as f32 - 32.0)).collect();
        check(GgmlType::Q6K, &b, &exp);
    }

    #[test]
    fn size_mismatch_is_an_error() {
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 17], 32).is_err());
        assert!(dequantize(GgmlType::Q4K, &[0u8; 144], 100).is_err());
    }
}

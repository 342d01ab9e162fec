//! `QMatrix`: a weight matrix kept in its GGUF block encoding, multiplied by one activation vector
//! without dequantizing it first. This is the CPU decode path: one token's step is a handful of
//! matrix-vector products whose cost is reading the weights, so reading 4-bit blocks instead of
//! f32 values is what makes decoding fast. (burn's CPU matmul for `m = 1` reads f32 weights at a
//! few GB/s.)
//!
//! Three ways ([`Activations`]): the input quantized to 8 or 16 bits per block of 32 and
//! multiplied in integer arithmetic ([`crate::kernels`], for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K
//! and Q6_K), or kept in f32,
//! each row decoded block by block into registers with the same block decoders as
//! [`crate::quant`] and multiplied into per-lane accumulators (with AVX2 + FMA available at run
//! time the inner loop is compiled for them). Either way the rows of one or several matrices
//! sharing an input are split into tasks across rayon's threads in one parallel region. Q4_0,
//! Q4_1, Q5_0, Q5_1 and Q8_0 rows are kept packed in groups of eight ([`kernels::packed`]), which
//! their kernels multiply eight rows at a time.

use std::cell::{OnceCell, RefCell};

use rayon::prelude::*;

use crate::arena::{Arena, WeightBytes};
use crate::kernels::packed::PackedQ8Act;
use crate::kernels::{self, NotWholeBlocks, Q8Act, Q16Act};
use crate::quant::GgmlType;

/// A row-major matrix `[rows, cols]` whose rows are stored as GGUF blocks of `ty`.
#[derive(Clone)]
pub struct QMatrix {
    /// Block type of every row.
    pub ty: GgmlType,
    /// Number of rows (outputs).
    pub rows: usize,
    /// Number of columns (inputs); a multiple of the block size.
    pub cols: usize,
    /// Whether whole groups of eight rows are packed ([`kernels::packed`]: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
    packed: bool,
    data: WeightBytes,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({:?}, {}x{})", self.ty, self.rows, self.cols)
    }
}

impl QMatrix {
    /// Bytes of one encoded row.
    pub fn row_bytes(ty: GgmlType, cols: usize) -> usize {
        cols / ty.block_size() * ty.block_bytes()
    }

    /// Builds a matrix from encoded rows taken from `src` in the order `order` (row indices of
    /// `src`), so that rows can be permuted or several matrices stacked without decoding.
    pub fn from_rows(ty: GgmlType, cols: usize, parts: &[(&[u8], Vec<usize>)]) -> Result<Self, String> {
        Self::from_rows_in(None, ty, cols, parts)
    }

    /// [`QMatrix::from_rows`] with its bytes from `arena` (a model's matrices together in huge
    /// pages), or the heap.
    pub fn from_rows_in(arena: Option<&Arena>, ty: GgmlType, cols: usize, parts: &[(&[u8], Vec<usize>)]) -> Result<Self, String> {
        if !cols.is_multiple_of(ty.block_size()) {
            return Err(format!("{cols} columns is not a multiple of the {ty:?} block size"));
        }
        let rb = Self::row_bytes(ty, cols);
        let rows: usize = parts.iter().map(|(_, o)| o.len()).sum();
        let total = rows.checked_mul(rb).ok_or_else(|| format!("{rows} rows of {rb} bytes overflow the address space"))?;
        // Every row is checked before any memory is taken for them.
        let mut sources = Vec::with_capacity(rows);
        for (src, order) in parts {
            for &r in order {
                let range = r.checked_mul(rb).and_then(|s| Some(s..s.checked_add(rb)?));
                sources.push(range.and_then(|range| src.get(range)).ok_or_else(|| format!("row {r} is outside the {} bytes given", src.len()))?);
            }
        }
        let mut data = arena.map_or_else(|| WeightBytes::heap(total), |a| a.alloc(total));
        for (out, row) in data.chunks_exact_mut(rb.max(1)).zip(sources) {
            out.copy_from_slice(row);
        }
        let packed = kernels::packed::packs(ty);
        if packed {
            kernels::packed::pack_rows(ty, &mut data, rb);
        }
        Ok(QMatrix { ty, rows, cols, packed, data })
    }

    /// `y = W x` for one vector `x` of length `cols` (`y` has length `rows`), in f32: equal to
    /// dequantize-then-multiply up to summation order.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        matvec_many(x, vec![(self, y)], Activations::F32, &mut ActScratch::default());
    }

    /// Decodes row `r` into `out` (`cols` values), as [`crate::quant::dequantize`] would.
    ///
    /// Panics when `r` is not a row or `out` has other than `cols` values.
    pub fn decode_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "row {r} of {} into {} values", self.rows, out.len());
        let rb = Self::row_bytes(self.ty, self.cols);
        if self.packed {
            let mut plain = vec![0u8; rb];
            kernels::packed::unpack_row(self.ty, &self.data, rb, r, &mut plain);
            decode_rows(self.ty, &plain, out);
        } else {
            decode_rows(self.ty, &self.data[r * rb..(r + 1) * rb], out);
        }
    }

    /// `bytes`, whole rows of this matrix from a row that is a multiple of eight, in the plain
    /// layout: as they are, or unpacked into `buf`.
    fn plain<'a>(&self, bytes: &'a [u8], buf: &'a mut Vec<u8>) -> &'a [u8] {
        if !self.packed {
            return bytes;
        }
        buf.resize(bytes.len(), 0);
        kernels::packed::unpack_rows(self.ty, bytes, Self::row_bytes(self.ty, self.cols), buf);
        buf
    }

    /// `y = X Wᵀ` for the `n` rows of `x` (`[n, cols]`, row-major) into `y` (`[n, rows]`): the
    /// prefill product, from the encoded rows with no dense copy of the matrix kept. Tiles of
    /// rows are decoded to f32 and multiplied in f32 (so each value equals
    /// dequantize-then-multiply up to summation order), split across rayon's threads.
    ///
    /// Panics when `x` or `y` has the wrong length.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        assert_eq!(x.len(), n * self.cols, "matmul input length");
        assert_eq!(y.len(), n * self.rows, "matmul output length");
        let (rows, cols) = (self.rows, self.cols);
        if n == 0 || rows == 0 {
            return;
        }
        if cols == 0 {
            y.fill(0.0);
            return;
        }
        let rb = Self::row_bytes(self.ty, cols);
        let tile = tile_rows(rows);
        let out = SyncPtr(y.as_mut_ptr());
        let avx2 = has_avx2_fma();
        self.data.par_chunks(tile * rb).enumerate().for_each(|(i, bytes)| {
            // Nothing below runs rayon work, so no other task can start on this thread (and
            // borrow the buffer again) until this one ends.
            TILE_ROWS.with_borrow_mut(|w| {
                let tr = bytes.len() / rb;
                w.resize(tr * cols, 0.0);
                if self.packed {
                    kernels::packed::decode_rows(self.ty, bytes, rb, w);
                } else {
                    decode_rows(self.ty, bytes, w);
                }
                // SAFETY: task `i` writes only columns `i·tile .. i·tile + tr` of `y`'s `n` rows of
                // `rows` values, disjoint from every other task's; `y` outlives the parallel loop.
                let store = |t: usize, r: usize, v: f32| unsafe { *out.at(t * rows + i * tile + r) = v };
                if avx2 {
                    // SAFETY: the CPU has AVX2 and FMA (checked at run time); `w` holds `tr` rows and
                    // `x` `n` rows of `cols` values.
                    unsafe { avx2::gemm_tile(w, tr, x, n, cols, &store) }
                } else {
                    gemm_tile(w, tr, x, n, cols, &store)
                }
            })
        });
    }

    /// [`QMatrix::matmul`] with the input rows treated as `act` says: f32 (that function), or
    /// each row quantized once to 8 or 16 bits per block and multiplied by tiles of encoded rows
    /// with the integer kernels (for the types that have one).
    ///
    /// Panics when `x` or `y` has the wrong length.
    pub fn matmul_with(&self, x: &[f32], n: usize, y: &mut [f32], act: Activations) {
        self.matmul_input(&PrefillInput::new(x, n), y, act);
    }

    /// [`QMatrix::matmul_with`] of an input that other matrices multiply too: its quantized
    /// rows are made on first use and kept in `input` for them.
    ///
    /// Panics when the input or `y` has the wrong length.
    pub fn matmul_input(&self, input: &PrefillInput, y: &mut [f32], act: Activations) {
        let (x, n) = (input.x, input.n);
        assert_eq!(x.len(), n * self.cols, "matmul input length");
        assert_eq!(y.len(), n * self.rows, "matmul output length");
        if n == 0 || self.rows == 0 || self.cols == 0 {
            y.fill(0.0);
            return;
        }
        let (isa, ty) = (kernels::Isa::current(), self.ty);
        if act == Activations::Int8 && self.packed {
            // Packed rows have an 8-bit GEMM, though not an 8-bit one-token kernel (`mode`).
            let acts = input.packed8(ty);
            // SAFETY: `tiles_of` hands each tile its own columns of `y`, for every input.
            return self.tiles_of(y, |bytes, yt, ldy| unsafe { kernels::gemm8_packed_to(isa, ty, bytes, acts, yt, ldy) });
        }
        match self.mode(act) {
            Activations::F32 => self.matmul(x, n, y),
            Activations::Int8 => self.matmul_int(input.q8(), y),
            Activations::Int16 if self.packed => {
                let acts = input.q16();
                // SAFETY: as above.
                self.tiles_of(y, |bytes, yt, ldy| unsafe { kernels::gemm16_packed_to(isa, ty, bytes, acts, yt, ldy) });
            }
            // The row kernels are slower than the f32 tiles for several inputs.
            Activations::Int16 => self.matmul(x, n, y),
        }
    }

    /// `y = X Wᵀ` ([`QMatrix::matmul`]'s shapes) by tiles of rows across rayon's threads:
    /// `gemm(rows, y_tile, ldy)` writes the products of a tile's encoded rows and every input
    /// `t` in place, at `y_tile + t · ldy`.
    fn tiles_of(&self, y: &mut [f32], gemm: impl Fn(&[u8], *mut f32, usize) + Sync) {
        let rows = self.rows;
        let rb = Self::row_bytes(self.ty, self.cols);
        let tile = tile_rows(rows);
        let out = SyncPtr(y.as_mut_ptr());
        // SAFETY: task `i` gets only columns `i·tile ..` of `y`'s rows of `rows` values, as
        // many as its rows, disjoint from every other task's; `y` outlives the parallel loop.
        self.data.par_chunks(tile * rb).enumerate().for_each(|(i, bytes)| gemm(bytes, unsafe { out.at(i * tile) }, rows));
    }

    /// The 8-bit product of [`QMatrix::matmul_with`] over plain rows: each tile's rows times each
    /// input in the one-token kernels.
    fn matmul_int(&self, acts: &[Q8Act], y: &mut [f32]) {
        let (isa, ty, rb) = (kernels::Isa::current(), self.ty, Self::row_bytes(self.ty, self.cols));
        self.tiles_of(y, |bytes, yt, ldy| {
            for (t, a) in acts.iter().enumerate() {
                // SAFETY: `tiles_of` hands this tile the `bytes.len() / rb` columns at `yt` of
                // every input's row.
                let y = unsafe { std::slice::from_raw_parts_mut(yt.add(t * ldy), bytes.len() / rb) };
                kernels::dot_rows(isa, ty, bytes, a, y);
            }
        });
    }

    /// The activations this matrix's one-token product uses under `act`: f32 for the types
    /// without an integer kernel. Packed rows (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) have no 8-bit
    /// one-token kernel: they take the 16-bit one (on the AMD EPYC, Zen 4, of the measurements as
    /// fast as the plain 8-bit one was, and exact); their prefill has an 8-bit GEMM.
    fn mode(&self, act: Activations) -> Activations {
        match act {
            _ if !kernels::supports(self.ty) => Activations::F32,
            Activations::Int8 | Activations::Int16 if self.packed => Activations::Int16,
            act => act,
        }
    }
}

/// The input rows of prefill products (`n` rows, row-major), quantized on first use in each form
/// a product asks for and kept, so that the matrices multiplying the same input (q, k and v; gate
/// and up) quantize it once.
pub struct PrefillInput<'a> {
    x: &'a [f32],
    n: usize,
    q8: OnceCell<Vec<Q8Act>>,
    q16: OnceCell<Vec<Q16Act>>,
    /// [`PackedQ8Act`]s for Q8_0's lanes (0) and the nibble types' (1).
    packed8: [OnceCell<Vec<PackedQ8Act>>; 2],
    /// The memory the forms not yet made will quantize into.
    spare: RefCell<PrefillScratch>,
}

/// The memory of a [`PrefillInput`]'s quantized rows, handed from one input to the next
/// ([`PrefillInput::reusing`], [`PrefillInput::into_scratch`]): a prefill's products then quantize
/// into the same buffers instead of allocating new ones a product. (Fresh ones were about 7,000
/// page faults a 512-position prefill of SmolLM2: memory handed back to the system after each
/// product and touched anew by the next.)
#[derive(Debug, Default, Clone)]
pub struct PrefillScratch {
    q8: Vec<Q8Act>,
    q16: Vec<Q16Act>,
    packed8: [Vec<PackedQ8Act>; 2],
}

impl<'a> PrefillInput<'a> {
    /// The `n` rows of `x`, not yet quantized.
    pub fn new(x: &'a [f32], n: usize) -> Self {
        Self::reusing(x, n, PrefillScratch::default())
    }

    /// [`PrefillInput::new`] quantizing into `scratch`'s memory.
    pub fn reusing(x: &'a [f32], n: usize, scratch: PrefillScratch) -> Self {
        let packed8 = [OnceCell::new(), OnceCell::new()];
        PrefillInput { x, n, q8: OnceCell::new(), q16: OnceCell::new(), packed8, spare: RefCell::new(scratch) }
    }

    /// The memory of every form made or not, for the next input.
    pub fn into_scratch(self) -> PrefillScratch {
        let mut s = self.spare.into_inner();
        if let Some(v) = self.q8.into_inner() {
            s.q8 = v;
        }
        if let Some(v) = self.q16.into_inner() {
            s.q16 = v;
        }
        for (spare, made) in s.packed8.iter_mut().zip(self.packed8) {
            if let Some(v) = made.into_inner() {
                *spare = v;
            }
        }
        s
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// The rows in 8-bit blocks.
    fn q8(&self) -> &[Q8Act] {
        &self.q8.get_or_init(|| self.each_row(|s| &mut s.q8, |a, r| a.quantize(r)))[..self.n]
    }

    /// The rows in 16-bit blocks.
    fn q16(&self) -> &[Q16Act] {
        &self.q16.get_or_init(|| self.each_row(|s| &mut s.q16, |a, r| a.quantize(r)))[..self.n]
    }

    /// The rows in 8-bit blocks in the lanes' order of `ty`'s packed rows.
    fn packed8(&self, ty: GgmlType) -> &[PackedQ8Act] {
        let i = usize::from(ty != GgmlType::Q8_0);
        &self.packed8[i].get_or_init(|| self.each_row(|s| &mut s.packed8[i], |a, r| a.quantize_into(ty, r)))[..self.n]
    }

    /// The spare buffers `spare` picks, at least `n` of them, the first `n` holding `quantize`
    /// of each row (across rayon's threads).
    fn each_row<T: Default + Send>(
        &self,
        spare: impl FnOnce(&mut PrefillScratch) -> &mut Vec<T>,
        quantize: impl Fn(&mut T, &[f32]) -> Result<(), NotWholeBlocks> + Sync + Send,
    ) -> Vec<T> {
        let mut v = std::mem::take(spare(&mut self.spare.borrow_mut()));
        if v.len() < self.n {
            v.resize_with(self.n, T::default);
        }
        let rows = self.x.par_chunks(self.x.len() / self.n.max(1));
        v[..self.n].par_iter_mut().zip(rows).for_each(|(a, r)| quantize(a, r).expect(WHOLE_BLOCKS));
        v
    }
}

/// Why a product's input always quantizes: every integer-kernel type's rows are whole blocks of 32.
const WHOLE_BLOCKS: &str = "columns are whole blocks of 32 for every integer-kernel type";

/// The quantized copies of a product's input, kept between products to reuse their memory.
#[derive(Debug, Default, Clone)]
pub struct ActScratch {
    q8: Q8Act,
    q16: Q16Act,
}

/// How one-token products treat the activation vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// Quantized to 8 bits per block of 32 ([`Q8Act`], as ggml does) for the integer kernels,
    /// for the weight types that have one; f32 for the others. Packed rows' one-token products
    /// take 16-bit codes under it ([`QMatrix::matmul_with`]'s prefill GEMM takes 8-bit ones).
    Int8,
    /// Kept in f32: each product equals dequantize-then-multiply up to summation order.
    F32,
    /// Quantized to 16 bits per block of 32 ([`Q16Act`]: a relative error of at most 1/65534
    /// of the block's largest value, 256 times finer than 8 bits) for the integer kernels.
    Int16,
}

/// `y = W x` for several matrices that share the input `x` (q, k and v; gate and up), in one
/// parallel region: `x` is quantized once into `scratch` when `act` asks for it, and the rows of
/// all the matrices are split into tasks across rayon's threads together.
///
/// Panics when a matrix has other than `x.len()` columns or its output other than `rows` values.
pub fn matvec_many(x: &[f32], parts: Vec<(&QMatrix, &mut [f32])>, act: Activations, scratch: &mut ActScratch) {
    for (m, y) in &parts {
        assert_eq!(x.len(), m.cols, "matvec input length");
        assert_eq!(y.len(), m.rows, "matvec output length");
    }
    if parts.iter().any(|(m, _)| m.mode(act) == Activations::Int8) {
        scratch.q8.quantize(x).expect(WHOLE_BLOCKS);
    }
    if parts.iter().any(|(m, _)| m.mode(act) == Activations::Int16) {
        scratch.q16.quantize(x).expect(WHOLE_BLOCKS);
    }
    let total: usize = parts.iter().map(|(m, _)| m.rows).sum();
    // Enough rows per task to amortise scheduling, few enough to balance two or more threads
    // (two tasks a thread: 300 two-thread decode steps of SmolLM2 Q4_0 took 7–9 % less than
    // with four, Zen 3); a multiple of eight, the rows of a packed group (and two of the four
    // rows the other integer kernels take at once).
    let chunk = (total / (2 * rayon::current_num_threads())).clamp(16, 4096).next_multiple_of(kernels::packed::GROUP);
    let mut tasks = Vec::new();
    for (m, y) in parts {
        let rb = QMatrix::row_bytes(m.ty, m.cols);
        tasks.extend(y.chunks_mut(chunk).zip(m.data.chunks(chunk * rb.max(1))).map(|(y, rows)| (m, rows, y)));
    }
    let (isa, avx2, scratch) = (kernels::Isa::current(), has_avx2_fma(), &*scratch);
    tasks.into_par_iter().for_each_init(Vec::new, |buf, (m, rows, y)| match m.mode(act) {
        Activations::Int8 => kernels::dot_rows(isa, m.ty, rows, &scratch.q8, y),
        Activations::Int16 if m.packed => kernels::dot_rows16_packed(isa, m.ty, rows, &scratch.q16, y),
        Activations::Int16 => kernels::dot_rows16(isa, m.ty, rows, &scratch.q16, y),
        Activations::F32 if m.packed && avx2 => {
            let whole = y.len() / kernels::packed::GROUP * kernels::packed::GROUP;
            let rb = QMatrix::row_bytes(m.ty, m.cols);
            let (yg, yt) = y.split_at_mut(whole);
            let block_sums: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
            // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time); `rows` holds
            // `y.len()` rows for `x.len()` values, the first `whole` of them packed groups.
            unsafe { avx2::groups_f32(m.ty, &rows[..whole * rb], rb, x, &block_sums, yg) };
            f32_rows(m, &rows[whole * rb..], x, yt, avx2);
        }
        Activations::F32 => f32_rows(m, m.plain(rows, buf), x, y, avx2),
    });
}

/// Rows of `m` (encoded, a whole number) times the f32 vector `x`.
fn f32_rows(m: &QMatrix, rows: &[u8], x: &[f32], y: &mut [f32], avx2: bool) {
    // Per-block sums of x: the minimum / offset term of Q4_0 and Q4_1 is `m · Σx`.
    let block_sums: Vec<f32> = if avx2 { x.chunks_exact(32).map(|c| c.iter().sum()).collect() } else { vec![] };
    for (out, row) in y.iter_mut().zip(rows.chunks_exact(QMatrix::row_bytes(m.ty, m.cols))) {
        *out = if avx2 {
            // SAFETY: the CPU was checked for AVX2, FMA and F16C; the row holds whole blocks for
            // `x.len()` values (checked by `from_rows` and `matvec_many`).
            unsafe { avx2::dot_row(m.ty, row, x, &block_sums) }
        } else {
            dot_row(m.ty, row, x)
        };
    }
}

thread_local! {
    /// A thread's tile of rows decoded to f32 for [`QMatrix::matmul`], kept from product to
    /// product: a new one a task (196 KB for SmolLM2's `ffn_down`, freed back to the system
    /// after each) was about 18,000 page faults a 512-position prefill of its Q4_K_M file, whose
    /// 1-thread prefill took a fifth less time without them (Zen 3).
    static TILE_ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rows per prefill tile: enough to share each input row's loads, few enough to balance
/// threads; a multiple of eight, the rows of a packed group.
fn tile_rows(rows: usize) -> usize {
    (rows / (4 * rayon::current_num_threads())).clamp(8, 32).next_multiple_of(kernels::packed::GROUP)
}

/// `y` as a pointer that several tasks write disjoint elements through.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: only used for writes to disjoint elements while the owner is borrowed (see `matmul`).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The element at `i`.
    ///
    /// # Safety
    /// `i` is inside the buffer and no other thread touches it meanwhile.
    unsafe fn at(self, i: usize) -> *mut f32 {
        unsafe { self.0.add(i) }
    }
}

/// Decodes whole encoded rows (`bytes`) into `out`, block by block.
fn decode_rows(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    for (y, b) in out.chunks_exact_mut(bs).zip(bytes.chunks_exact(bb)) {
        ty.decode_block(b, y);
    }
}

/// `store(t, r, w_r · x_t)` for the `tr` rows of `w` and the `n` rows of `x` (`cols` values each):
/// the portable tile product.
fn gemm_tile(w: &[f32], tr: usize, x: &[f32], n: usize, cols: usize, store: &dyn Fn(usize, usize, f32)) {
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..tr {
            let mut acc = [0f32; 8];
            lanes(&w[r * cols..(r + 1) * cols], xt, &mut acc);
            store(t, r, acc.iter().sum());
        }
    }
}

/// Whether this CPU has AVX2, FMA and F16C (checked once).
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    use crate::quant::GgmlType;
    pub unsafe fn dot_row(ty: GgmlType, row: &[u8], x: &[f32], _block_sums: &[f32]) -> f32 {
        super::dot_row(ty, row, x)
    }
    pub unsafe fn gemm_tile(w: &[f32], tr: usize, x: &[f32], n: usize, cols: usize, store: &dyn Fn(usize, usize, f32)) {
        super::gemm_tile(w, tr, x, n, cols, store)
    }
    pub unsafe fn groups_f32(_ty: GgmlType, _rows: &[u8], _rb: usize, _x: &[f32], _block_sums: &[f32], _y: &mut [f32]) {
        unreachable!("packed rows are unpacked off x86-64")
    }
}

/// Hand-written AVX2 kernels for the common types (f32 activations, so results match a
/// dequantize-then-multiply up to summation order); the rest use the generic loop compiled
/// with AVX2 enabled.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::kernels::x86::{f16_at, hsum};
    use crate::quant::GgmlType;

    /// Four independent accumulators, so that consecutive FMAs do not wait on each other.
    type Acc = [__m256; 4];

    #[inline(always)]
    unsafe fn zero() -> Acc {
        unsafe { [_mm256_setzero_ps(); 4] }
    }

    #[inline(always)]
    unsafe fn sum(acc: Acc) -> f32 {
        unsafe { hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) }
    }

    /// `acc += q · (d·x)` for 32 values; `q` as four groups of eight 32-bit integers.
    #[inline(always)]
    unsafe fn fma32(acc: &mut Acc, q: [__m256i; 4], d: f32, xp: *const f32) {
        unsafe {
            let d = _mm256_set1_ps(d);
            for (k, a) in acc.iter_mut().enumerate() {
                let xd = _mm256_mul_ps(_mm256_loadu_ps(xp.add(8 * k)), d);
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q[k]), xd, *a);
            }
        }
    }

    /// Q4_0 (`HAS_MIN = false`: value = (q − 8)·d) and Q4_1 (value = q·d + m).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q4<const HAS_MIN: bool>(row: &[u8], x: &[f32], block_sums: &[f32]) -> f32 {
        let bb = if HAS_MIN { 20 } else { 18 };
        let nb = x.len() / 32;
        // Checked once per row, outside the block loop: the reads below stay inside `row`.
        assert!(row.len() >= nb * bb && block_sums.len() >= nb, "dot_q4: {} row bytes for {nb} blocks", row.len());
        let mask = _mm_set1_epi8(0x0F);
        let mut acc = unsafe { zero() };
        let mut offset = 0f32;
        for b in 0..nb {
            unsafe {
                let blk = row.as_ptr().add(b * bb);
                let d = f16_at(blk);
                let qs = _mm_loadu_si128(blk.add(bb - 16) as *const __m128i);
                let lo = _mm_and_si128(qs, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                let q = [
                    _mm256_cvtepu8_epi32(lo),
                    _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
                    _mm256_cvtepu8_epi32(hi),
                    _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)),
                ];
                fma32(&mut acc, q, d, x.as_ptr().add(b * 32));
                let m = if HAS_MIN { f16_at(blk.add(2)) } else { -8.0 * d };
                offset += m * *block_sums.get_unchecked(b);
            }
        }
        unsafe { sum(acc) + offset }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
        let nb = x.len() / 32;
        assert!(row.len() >= nb * 34, "dot_q8_0: {} row bytes for {nb} blocks", row.len());
        let mut acc = unsafe { zero() };
        for b in 0..nb {
            unsafe {
                let blk = row.as_ptr().add(b * 34);
                let lo = _mm_loadu_si128(blk.add(2) as *const __m128i);
                let hi = _mm_loadu_si128(blk.add(18) as *const __m128i);
                let q = [
                    _mm256_cvtepi8_epi32(lo),
                    _mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)),
                    _mm256_cvtepi8_epi32(hi),
                    _mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)),
                ];
                fma32(&mut acc, q, f16_at(blk), x.as_ptr().add(b * 32));
            }
        }
        unsafe { sum(acc) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
        let n = x.len();
        assert!(row.len() >= n * 4, "dot_f32: {} row bytes for {n} values", row.len());
        let (w, xp) = (row.as_ptr() as *const f32, x.as_ptr());
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        unsafe {
            while i + 16 <= n {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(i)), _mm256_loadu_ps(xp.add(i)), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(i + 8)), _mm256_loadu_ps(xp.add(i + 8)), a1);
                i += 16;
            }
            let mut s = hsum(_mm256_add_ps(a0, a1));
            while i < n {
                s += w.add(i).read_unaligned() * *xp.add(i);
                i += 1;
            }
            s
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn generic(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
        super::dot_row(ty, row, x)
    }

    /// `T` input rows times `R` weight rows (`cols` values each, `cols` a multiple of 8) in
    /// `T·R` lane accumulators: every weight load serves `T` products, every input load `R`.
    #[inline(always)]
    unsafe fn block<const T: usize, const R: usize>(w: [*const f32; R], x: [*const f32; T], cols: usize) -> [[f32; R]; T] {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); R]; T];
            let mut c = 0;
            while c < cols {
                let xv = x.map(|p| _mm256_loadu_ps(p.add(c)));
                for (r, &wp) in w.iter().enumerate() {
                    let wv = _mm256_loadu_ps(wp.add(c));
                    for t in 0..T {
                        acc[t][r] = _mm256_fmadd_ps(wv, xv[t], acc[t][r]);
                    }
                }
                c += 8;
            }
            acc.map(|a| a.map(|v| hsum(v)))
        }
    }

    /// See [`super::gemm_tile`]: groups of 3 input rows × 4 weight rows (12 accumulators and
    /// the loads in the 16 AVX2 registers), the rest one by one.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `w` holds `tr` rows and `x` `n` rows of `cols` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_tile(w: &[f32], tr: usize, x: &[f32], n: usize, cols: usize, store: &dyn Fn(usize, usize, f32)) {
        assert!(w.len() >= tr * cols && x.len() >= n * cols, "gemm_tile: {} and {} values for {tr} and {n} rows of {cols}", w.len(), x.len());
        let body = cols / 8 * 8;
        // The columns past the last multiple of 8 (none for block-encoded rows).
        let tail = |r: usize, t: usize| -> f32 { (body..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum() };
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let row = |r: usize| wp.wrapping_add(r * cols);
        let inp = |t: usize| xp.wrapping_add(t * cols);
        let mut t = 0;
        while t < n {
            let nt = if n - t >= 3 { 3 } else { 1 };
            let mut r = 0;
            while r < tr {
                let nr = if tr - r >= 4 { 4 } else { 1 };
                // SAFETY: rows r..r + nr of `w` and t..t + nt of `x` exist (checked above).
                unsafe {
                    match (nt, nr) {
                        (3, 4) => {
                            let s = block::<3, 4>([0, 1, 2, 3].map(|k| row(r + k)), [0, 1, 2].map(|k| inp(t + k)), body);
                            for (i, s) in s.iter().enumerate() {
                                for (k, &v) in s.iter().enumerate() {
                                    store(t + i, r + k, v + tail(r + k, t + i));
                                }
                            }
                        }
                        (3, 1) => {
                            let s = block::<3, 1>([row(r)], [0, 1, 2].map(|k| inp(t + k)), body);
                            for (i, s) in s.iter().enumerate() {
                                store(t + i, r, s[0] + tail(r, t + i));
                            }
                        }
                        (1, 4) => {
                            let s = block::<1, 4>([0, 1, 2, 3].map(|k| row(r + k)), [inp(t)], body);
                            for (k, &v) in s[0].iter().enumerate() {
                                store(t, r + k, v + tail(r + k, t));
                            }
                        }
                        _ => store(t, r, block::<1, 1>([row(r)], [inp(t)], body)[0][0] + tail(r, t)),
                    }
                }
                r += nr;
            }
            t += nt;
        }
    }

    /// Whole packed groups of eight rows ([`crate::kernels::packed`]) times the f32
    /// vector `x`, into `y` (`rows.len() / rb` values, a multiple of eight): per block, lane `r`
    /// sums row `r`'s codes times `x` in f32, then takes the block's scale (and the minimum, or
    /// Q4_0's −8 and Q5_0's −16 times the scale, times the block's sum of `x` apart), as
    /// [`dot_row`] does.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C. Lengths that disagree panic before any read.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn groups_f32(ty: GgmlType, rows: &[u8], rb: usize, x: &[f32], block_sums: &[f32], y: &mut [f32]) {
        let nb = x.len() / 32;
        assert!(crate::kernels::packed::packs(ty) && y.len().is_multiple_of(8), "groups_f32: {} {ty:?} rows", y.len());
        assert!(rb == nb * ty.block_bytes() && rows.len() == y.len() * rb && block_sums.len() >= nb, "groups_f32: lengths");
        for (g, out) in y.chunks_exact_mut(8).enumerate() {
            // SAFETY: group `g` is the `8 · rb` bytes at `g · 8 · rb` of `rows` (checked above).
            unsafe {
                let base = rows.as_ptr().add(g * 8 * rb);
                let v = match ty {
                    GgmlType::Q8_0 => group_f32::<true, false, false>(base, x, block_sums, nb),
                    GgmlType::Q4_1 => group_f32::<false, true, false>(base, x, block_sums, nb),
                    GgmlType::Q5_0 => group_f32::<false, false, true>(base, x, block_sums, nb),
                    GgmlType::Q5_1 => group_f32::<false, true, true>(base, x, block_sums, nb),
                    _ => group_f32::<false, false, false>(base, x, block_sums, nb),
                };
                _mm256_storeu_ps(out.as_mut_ptr(), v);
            }
        }
    }

    /// One group of [`groups_f32`], lane `r` = row `r`: Q8_0 (`Q8`), or 4-bit codes with a
    /// minimum (`MIN`) and a fifth bit (`FIVE`), as in `kernels::x86::group16`.
    #[inline(always)]
    unsafe fn group_f32<const Q8: bool, const MIN: bool, const FIVE: bool>(base: *const u8, x: &[f32], block_sums: &[f32], nb: usize) -> __m256 {
        let l = crate::kernels::packed::Layout { q8: Q8, min: MIN, five: FIVE };
        let (fields, loads) = if Q8 { (2, 8) } else { (4, 4) };
        let bb = 8 * if Q8 { 34 } else { 18 + if MIN { 2 } else { 0 } + if FIVE { 4 } else { 0 } };
        let (qs, qh, bits) = (l.packed_qs(), l.packed_qh(), 16 / fields);
        unsafe {
            let (mut acc, mut off) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for b in 0..nb {
                let blk = base.add(b * bb);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                let xs = x.as_ptr().add(32 * b);
                // Eight accumulators: the FMAs' latency, not their count, bounds one chain.
                let mut s = [_mm256_setzero_ps(); 8];
                let h = if FIVE { _mm256_loadu_si256(blk.add(qh) as *const __m256i) } else { _mm256_setzero_si256() };
                for k in 0..loads {
                    let v = _mm256_loadu_si256(blk.add(qs + 32 * k) as *const __m256i);
                    for e in 0..fields {
                        for i in 0..2 {
                            let pos = 16 * i + bits * e;
                            // The field at bit `pos` of each lane: a signed byte, or a nibble.
                            let mut q = if Q8 {
                                _mm256_srai_epi32(_mm256_sllv_epi32(v, _mm256_set1_epi32(24 - pos as i32)), 24)
                            } else {
                                _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_set1_epi32(pos as i32)), _mm256_set1_epi32(15))
                            };
                            if FIVE {
                                // Bit 4k + e of word i: the fifth bit, worth 16.
                                let fifth = _mm256_and_si256(_mm256_srlv_epi32(h, _mm256_set1_epi32((16 * i + 4 * k + e) as i32)), _mm256_set1_epi32(1));
                                q = _mm256_or_si256(q, _mm256_slli_epi32(fifth, 4));
                            }
                            let j = 2 * (fields * k + e) + i;
                            s[j % 8] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(*xs.add(j)), s[j % 8]);
                        }
                    }
                }
                let s4 = [0, 1, 2, 3].map(|i| _mm256_add_ps(s[i], s[i + 4]));
                acc = _mm256_fmadd_ps(_mm256_add_ps(_mm256_add_ps(s4[0], s4[1]), _mm256_add_ps(s4[2], s4[3])), d, acc);
                if MIN {
                    let m = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
                    off = _mm256_fmadd_ps(m, _mm256_set1_ps(*block_sums.get_unchecked(b)), off);
                } else if !Q8 {
                    off = _mm256_fmadd_ps(d, _mm256_set1_ps(*block_sums.get_unchecked(b)), off);
                }
            }
            if MIN {
                _mm256_add_ps(acc, off)
            } else {
                _mm256_fnmadd_ps(_mm256_set1_ps(if FIVE { 16.0 } else { 8.0 }), off, acc)
            }
        }
    }

    /// Dot product of one encoded row with `x`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C. A `row` shorter than the blocks of `x.len()` values
    /// (or fewer `block_sums` than blocks) panics before any read.
    pub unsafe fn dot_row(ty: GgmlType, row: &[u8], x: &[f32], block_sums: &[f32]) -> f32 {
        unsafe {
            match ty {
                GgmlType::Q4_0 => dot_q4::<false>(row, x, block_sums),
                GgmlType::Q4_1 => dot_q4::<true>(row, x, block_sums),
                GgmlType::Q8_0 => dot_q8_0(row, x),
                GgmlType::F32 => dot_f32(row, x),
                _ => generic(ty, row, x),
            }
        }
    }
}

/// Dot product of one encoded row with `x`, specialised per block type so that the block
/// decoder inlines into the loop.
#[inline(always)]
fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    macro_rules! dot {
        ($t:expr) => {
            dot_blocks::<{ $t.block_size() }, { $t.block_bytes() }>(row, x, $t)
        };
    }
    match ty {
        GgmlType::F32 => dot!(GgmlType::F32),
        GgmlType::F16 => dot!(GgmlType::F16),
        GgmlType::Bf16 => dot!(GgmlType::Bf16),
        GgmlType::Q4_0 => dot!(GgmlType::Q4_0),
        GgmlType::Q4_1 => dot!(GgmlType::Q4_1),
        GgmlType::Q5_0 => dot!(GgmlType::Q5_0),
        GgmlType::Q5_1 => dot!(GgmlType::Q5_1),
        GgmlType::Q8_0 => dot!(GgmlType::Q8_0),
        GgmlType::Q2K => dot!(GgmlType::Q2K),
        GgmlType::Q3K => dot!(GgmlType::Q3K),
        GgmlType::Q4K => dot!(GgmlType::Q4K),
        GgmlType::Q5K => dot!(GgmlType::Q5K),
        GgmlType::Q6K => dot!(GgmlType::Q6K),
    }
}

/// Decodes each block of `BS` values (`BB` bytes) into a stack buffer and multiplies it into
/// eight lane accumulators.
#[inline(always)]
fn dot_blocks<const BS: usize, const BB: usize>(row: &[u8], x: &[f32], ty: GgmlType) -> f32 {
    if BS == 1 {
        // Plain floats: no block structure, just a wide dot product.
        let mut buf = [0f32; 64];
        let mut acc = [0f32; 8];
        for (bytes, xs) in row.chunks(64 * BB).zip(x.chunks(64)) {
            let n = xs.len();
            for (v, b) in buf[..n].iter_mut().zip(bytes.chunks_exact(BB)) {
                ty.decode_block(b, std::slice::from_mut(v));
            }
            lanes(&buf[..n], xs, &mut acc);
        }
        return acc.iter().sum();
    }
    let mut buf = [0f32; BS];
    let mut acc = [0f32; 8];
    for (block, xs) in row.chunks_exact(BB).zip(x.chunks_exact(BS)) {
        ty.decode_block(block, &mut buf);
        lanes(&buf, xs, &mut acc);
    }
    acc.iter().sum()
}

#[inline(always)]
fn lanes(w: &[f32], x: &[f32], acc: &mut [f32; 8]) {
    let mut wc = w.chunks_exact(8);
    let mut xc = x.chunks_exact(8);
    for (w8, x8) in (&mut wc).zip(&mut xc) {
        for l in 0..8 {
            acc[l] = w8[l].mul_add(x8[l], acc[l]);
        }
    }
    for (w, x) in wc.remainder().iter().zip(xc.remainder()) {
        acc[0] = w.mul_add(*x, acc[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;

    #[test]
    fn a_row_index_whose_byte_offset_wraps_is_refused() {
        // F32, 2 columns: 8 bytes a row; row 2^61 starts at byte 2^64, which wrapped to row 0.
        let src = [0u8; 16];
        let e = QMatrix::from_rows(GgmlType::F32, 2, &[(&src, vec![1 << 61])]).unwrap_err();
        assert!(e.contains("outside the 16 bytes"), "{e}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_kernels_refuse_a_short_row_before_reading() {
        if !has_avx2_fma() {
            eprintln!("no AVX2/FMA/F16C on this CPU: the kernels are not used");
            return;
        }
        let x = [1f32; 64];
        let sums = [32f32; 2];
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F32] {
            let short = vec![0u8; QMatrix::row_bytes(ty, 64) - 1];
            // SAFETY: the CPU has the features; the short row is what the kernel must refuse.
            let r = std::panic::catch_unwind(|| unsafe { avx2::dot_row(ty, &short, &x, &sums) });
            assert!(r.is_err(), "{ty:?}: a row of {} bytes for 64 values was read", short.len());
        }
    }

    /// A deterministic byte pattern with sane f16 scales where each type keeps them.
    fn block_bytes(ty: GgmlType, n_blocks: usize) -> Vec<u8> {
        let bb = ty.block_bytes();
        let mut v: Vec<u8> = (0..n_blocks * bb).map(|i| (i * 37 + i / 7) as u8).collect();
        // Overwrite each f16 field with a small scale so that values stay finite.
        let scale_offsets: &[usize] = match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::Q2K => &[80, 82],
            GgmlType::Q3K => &[108],
            GgmlType::Q6K => &[208],
            GgmlType::F16 => &[0],
            _ => &[],
        };
        for b in 0..n_blocks {
            for &o in scale_offsets {
                let s = half::f16::from_f32(0.01 * (1 + (b % 5)) as f32).to_le_bytes();
                v[b * bb + o..b * bb + o + 2].copy_from_slice(&s);
            }
        }
        if ty == GgmlType::Bf16 {
            v = (0..n_blocks).flat_map(|i| half::bf16::from_f32((i % 13) as f32 * 0.1 - 0.6).to_le_bytes()).collect();
        }
        if ty == GgmlType::F32 {
            v = (0..n_blocks).flat_map(|i| ((i % 13) as f32 * 0.1 - 0.6).to_le_bytes()).collect();
        }
        v
    }

    #[test]
    fn matvec_equals_dequantize_then_multiply_for_every_type() {
        let types = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Bf16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ];
        for ty in types {
            let (rows, cols) = (37, 512);
            let n_blocks = rows * cols / ty.block_size();
            let bytes = block_bytes(ty, n_blocks);
            let dense = dequantize(ty, &bytes, rows * cols).unwrap();
            let x: Vec<f32> = (0..cols).map(|i| ((i * 7) % 11) as f32 * 0.25 - 1.0).collect();
            let m = QMatrix::from_rows(ty, cols, &[(&bytes, (0..rows).collect())]).unwrap();
            let mut y = vec![0f32; rows];
            m.matvec(&x, &mut y);
            for r in 0..rows {
                let want: f64 = (0..cols).map(|c| dense[r * cols + c] as f64 * x[c] as f64).sum();
                let tol = 1e-4 * (1.0 + want.abs());
                assert!((y[r] as f64 - want).abs() <= tol, "{ty:?} row {r}: {} vs {want}", y[r]);
            }
        }
    }

    #[test]
    fn matmul_equals_dequantize_then_multiply_and_the_row_decoder() {
        // 37 rows: tiles of four and a remainder; 7 inputs: groups of three and a remainder.
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
            let (rows, cols, n) = (37, 512, 7);
            let bytes = block_bytes(ty, rows * cols / ty.block_size());
            let dense = dequantize(ty, &bytes, rows * cols).unwrap();
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7) % 11) as f32 * 0.25 - 1.0).collect();
            let m = QMatrix::from_rows(ty, cols, &[(&bytes, (0..rows).collect())]).unwrap();
            let mut y = vec![f32::NAN; n * rows];
            m.matmul(&x, n, &mut y);
            for t in 0..n {
                for r in 0..rows {
                    let want: f64 = (0..cols).map(|c| dense[r * cols + c] as f64 * x[t * cols + c] as f64).sum();
                    let got = y[t * rows + r] as f64;
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{ty:?} input {t} row {r}: {got} vs {want}");
                }
            }
            // The integer kernels over the same tiles: each row quantized once, within its precision.
            for (act, tol) in [(Activations::Int16, 1e-4), (Activations::Int8, 2e-2)] {
                let mut yi = vec![f32::NAN; n * rows];
                m.matmul_with(&x, n, &mut yi, act);
                let scale = y.iter().fold(0f32, |a, v| a.max(v.abs()));
                let worst = yi.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
                // 16-bit: the packed types' integer product, the others' f32 tiles.
                let has_kernel = if act == Activations::Int16 { kernels::packed::packs(ty) } else { kernels::supports(ty) };
                assert!(if has_kernel { worst <= tol && worst > 0.0 } else { worst == 0.0 }, "{ty:?} {act:?}: {worst}");
            }
            let mut row = vec![0f32; cols];
            m.decode_row(5, &mut row);
            assert_eq!(row, dense[5 * cols..6 * cols]);
        }
        // Columns that are not a multiple of eight (plain f32 rows): the tail is counted.
        let (rows, cols, n) = (5, 13, 4);
        let w: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let m = QMatrix::from_rows(GgmlType::F32, cols, &[(&bytes, (0..rows).collect())]).unwrap();
        let x: Vec<f32> = (0..n * cols).map(|i| (i % 5) as f32).collect();
        let mut y = vec![0f32; n * rows];
        m.matmul(&x, n, &mut y);
        for t in 0..n {
            for r in 0..rows {
                let want: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                assert_eq!(y[t * rows + r], want, "input {t} row {r}");
            }
        }
    }

    #[test]
    fn an_input_quantized_into_an_earlier_inputs_memory_multiplies_as_a_fresh_one() {
        // The earlier input is longer and wider: its rows' codes must not leak into the later one's.
        let (ty, rows) = (GgmlType::Q4_0, 24);
        let wide = QMatrix::from_rows(ty, 512, &[(&block_bytes(ty, rows * 512 / 32), (0..rows).collect())]).unwrap();
        let narrow = QMatrix::from_rows(ty, 256, &[(&block_bytes(ty, rows * 256 / 32), (0..rows).collect())]).unwrap();
        let k4 = QMatrix::from_rows(GgmlType::Q4K, 256, &[(&block_bytes(GgmlType::Q4K, rows), (0..rows).collect())]).unwrap();
        let big: Vec<f32> = (0..9 * 512).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
        let x: Vec<f32> = (0..5 * 256).map(|i| ((i * 7) % 11) as f32 * 0.25 - 1.0).collect();
        for act in [Activations::Int16, Activations::Int8] {
            let earlier = PrefillInput::new(&big, 9);
            let mut y = vec![0f32; 9 * rows];
            wide.matmul_input(&earlier, &mut y, act);
            let later = PrefillInput::reusing(&x, 5, earlier.into_scratch());
            let (mut got, mut want) = (vec![f32::NAN; 5 * rows], vec![f32::NAN; 5 * rows]);
            for m in [&narrow, &k4] {
                m.matmul_input(&later, &mut got, act);
                m.matmul_with(&x, 5, &mut want, act);
                assert_eq!(got, want, "{:?} {act:?}", m.ty);
            }
        }
    }

    #[test]
    fn rows_can_be_reordered_and_stacked() {
        let ty = GgmlType::Q8_0;
        let (rows, cols) = (4, 64);
        let bytes = block_bytes(ty, rows * cols / 32);
        let x = vec![1.0f32; cols];
        let plain = QMatrix::from_rows(ty, cols, &[(&bytes, (0..rows).collect())]).unwrap();
        let mut y = vec![0f32; rows];
        plain.matvec(&x, &mut y);
        let stacked = QMatrix::from_rows(ty, cols, &[(&bytes, vec![3, 1]), (&bytes, vec![0])]).unwrap();
        let mut z = vec![0f32; 3];
        stacked.matvec(&x, &mut z);
        assert_eq!(z, vec![y[3], y[1], y[0]]);
        assert!(QMatrix::from_rows(ty, cols, &[(&bytes, vec![9])]).is_err());
    }
}

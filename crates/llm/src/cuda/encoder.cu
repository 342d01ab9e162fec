
// ---------------------------------------------------------------------------------------------
// The image encoders' kernels (crates/llm/src/cuda/encoder.rs): the pieces of pre- and post-LN
// transformer encoders (ViTs, the Q-Former) around cuBLAS products. Appended to kernels.cu, whose
// helpers they use. Conventions: the residual stream is f32; the products' inputs and outputs
// (normalised rows, activations, attention heads and scores) are in T (f16 or f32), accumulated
// in f32 by cuBLAS and read back into f32 by the kernels that follow.
// Also here, as it shares the encoder attention's tensor-core pieces (fa_*): the decoder's
// causal attention over a prompt's rows (attention_prefill_mma).
#ifndef XC_GEMV_ROWS

#define ACT_NONE 0
#define ACT_GELU 1       // exact GELU, 0.5 x (1 + erf(x / sqrt 2))
#define ACT_QUICK_GELU 2 // CLIP's x · sigmoid(1.702 x)

__device__ __forceinline__ float activation(float x, int act) {
    if (act == ACT_GELU) return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    if (act == ACT_QUICK_GELU) return __fdividef(x, 1.f + __expf(-1.702f * x)); // 0 where the exp overflows
    return x;
}

// LayerNorm of row r of x (row stride `stride` floats) into out[r, :] in T and, when out_f is
// not null, in f32 (out_f may be x itself). One block per row.
template <typename T>
__device__ void layer_norm(const float* x, long long stride, const float* w, const float* b, T* out, float* out_f, int dim,
                           float eps) {
    const float* row = x + (long long)blockIdx.x * stride;
    float s = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) s += row[i];
    float mean = block_sum(s) / dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += (row[i] - mean) * (row[i] - mean);
    float inv = rsqrtf(block_sum(ss) / dim + eps);
    T* o = out + (long long)blockIdx.x * dim;
    float* of = out_f ? out_f + (long long)blockIdx.x * dim : nullptr;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = (row[i] - mean) * inv * w[i] + b[i];
        o[i] = from_f<T>(v);
        if (of) of[i] = v;
    }
}

// out[r, c] = T(act(y[r, c] + bias[c])) (bias may be null; out may be y).
template <typename T>
__device__ void bias_act(const T* y, const float* bias, T* out, long long rows, int n, int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * n) out[i] = from_f<T>(activation(to_f(y[i]) + (bias ? bias[i % n] : 0.f), act));
}

// h[r, c] += y[r, c] + bias[c] (bias may be null): a product's output into the f32 residual stream.
template <typename T>
__device__ void residual_add_t(float* h, const T* y, const float* bias, long long rows, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * n) h[i] += to_f(y[i]) + (bias ? bias[i % n] : 0.f);
}

// Heads of a product output: out[b, h, t, e] = T((y[b·n + t, col0 + h·hd + e] + bias[col0 + h·hd
// + e]) · scale) for t < n, 0 for n ≤ t < n_pad (so padded keys and values add nothing).
template <typename T>
__device__ void split_heads(const T* y, int ld, int col0, const float* bias, float scale, T* out, int batch, int n,
                            int n_pad, int heads, int hd) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)batch * heads * n_pad * hd;
    if (i >= total) return;
    int e = i % hd;
    long long r = i / hd;
    int t = r % n_pad;
    long long bh = r / n_pad;
    int h = bh % heads;
    long long b = bh / heads;
    float v = 0.f;
    if (t < n) {
        int c = col0 + h * hd + e;
        v = (to_f(y[(b * n + t) * ld + c]) + (bias ? bias[c] : 0.f)) * scale;
    }
    out[i] = from_f<T>(v);
}

// Softmax of each row's first n of n_pad scores into p (the padding set to 0). One warp per row.
// In place (p may be s).
template <typename T>
__device__ void softmax_rows(const T* s, T* p, long long rows, int n, int n_pad) {
    long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    int lane = threadIdx.x & 31;
    const T* x = s + r * n_pad;
    float m = NEG_INF;
    for (int i = lane; i < n; i += 32) m = fmaxf(m, to_f(x[i]));
    m = warp_max(m);
    float sum = 0.f;
    for (int i = lane; i < n; i += 32) sum += __expf(to_f(x[i]) - m);
    float inv = 1.f / warp_sum(sum);
    T* o = p + r * n_pad;
    for (int i = lane; i < n_pad; i += 32) o[i] = from_f<T>(i < n ? __expf(to_f(x[i]) - m) * inv : 0.f);
}

// out[b·n + t, h·hd + e] = o[b, h, t, e]: attention heads back into rows.
template <typename T>
__device__ void merge_heads(const T* o, T* out, int batch, int n, int heads, int hd) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)batch * n * heads * hd;
    if (i >= total) return;
    int e = i % hd;
    long long r = i / hd;
    int h = r % heads;
    long long bt = r / heads;
    int t = bt % n;
    long long b = bt / n;
    out[i] = o[((b * heads + h) * n + t) * hd + e];
}

// The patches of `px` ([batch, 3, img, img] f32) as rows of (channel, row, column) values, the
// order a stride-p convolution's weight [d, 3, p, p] flattens in: out[b·g² + y·g + x, :].
template <typename T>
__device__ void patches(const float* px, T* out, int batch, int img, int p) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int g = img / p, k = 3 * p * p;
    long long total = (long long)batch * g * g * k;
    if (i >= total) return;
    int j = i % k;
    long long r = i / k;
    int c = j / (p * p), ky = (j / p) % p, kx = j % p;
    int gx = r % g, gy = (r / g) % g;
    long long b = r / (g * g);
    out[i] = from_f<T>(px[((b * 3 + c) * img + gy * p + ky) * img + gx * p + kx]);
}

// The ViT's input rows: h[b, 0, :] = cls + pos[0]; h[b, 1 + t, :] = y[b·np + t, :] + bias + pos[1 + t].
__device__ void vit_embed(const float* y, const float* bias, const float* cls, const float* pos, float* h, int batch, int np,
                          int d) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)batch * (np + 1) * d;
    if (i >= total) return;
    int c = i % d;
    long long r = i / d;
    int t = r % (np + 1);
    long long b = r / (np + 1);
    float v = t == 0 ? cls[c] : y[(b * np + t - 1) * d + c] + (bias ? bias[c] : 0.f);
    h[i] = v + pos[(long long)t * d + c];
}

// h[b·n + t, :] = rows[t, :] for every b: learned query rows repeated over a batch.
__device__ void repeat_rows(const float* rows, float* h, int batch, int n, int d) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)batch * n * d) h[i] = rows[i % ((long long)n * d)];
}

#define ENCODER_INSTANTIATE(T, S)                                                                                   \
    extern "C" __global__ void layer_norm_##S(const float* x, long long stride, const float* w, const float* b, T* o, \
                                              float* of, int dim, float eps) {                                       \
        layer_norm<T>(x, stride, w, b, o, of, dim, eps);                                                             \
    }                                                                                                                 \
    extern "C" __global__ void bias_act_##S(const T* y, const float* bias, T* o, long long rows, int n, int act) {     \
        bias_act<T>(y, bias, o, rows, n, act);                                                                       \
    }                                                                                                                 \
    extern "C" __global__ void residual_add_t_##S(float* h, const T* y, const float* bias, long long rows, int n) {   \
        residual_add_t<T>(h, y, bias, rows, n);                                                                      \
    }                                                                                                                 \
    extern "C" __global__ void split_heads_##S(const T* y, int ld, int col0, const float* bias, float scale, T* o, \
                                               int batch, int n, int n_pad, int heads, int hd) {                      \
        split_heads<T>(y, ld, col0, bias, scale, o, batch, n, n_pad, heads, hd);                                     \
    }                                                                                                                 \
    extern "C" __global__ void softmax_rows_##S(const T* s, T* p, long long rows, int n, int n_pad) {                  \
        softmax_rows<T>(s, p, rows, n, n_pad);                                                                       \
    }                                                                                                                 \
    extern "C" __global__ void merge_heads_##S(const T* o, T* out, int batch, int n, int heads, int hd) {            \
        merge_heads<T>(o, out, batch, n, heads, hd);                                                                 \
    }                                                                                                                 \
    extern "C" __global__ void patches_##S(const float* px, T* o, int batch, int img, int p) {                        \
        patches<T>(px, o, batch, img, p);                                                                            \
    }

// Attention on the tensor cores (f16 only), for heads of up to D values (D = 64 or 96; the
// head's hd ≤ D values, a multiple of 8, are zero-padded): one block of 4 warps takes FA_Q query
// rows of one (item, head), each warp 16 of them, and walks the keys in chunks of FA_K copied to
// shared memory with 16-byte loads, with an online softmax in registers. Q·Kᵀ and P·V are
// mma.m16n8k16 products with f32 accumulation; P goes from the scores' accumulators to the second
// product's A fragments without leaving registers (their layouts agree), V's fragments come
// through ldmatrix.trans. Reads the heads straight from the products' outputs and writes
// `out[b·nq + t, h·hd + e]`, so the split, scores, softmax, weighted sums and merge of
// `attention` are one kernel. The query gets its bias and scale as it is loaded; the keys' bias
// is left out (it adds the same q·bias to every score of a query, which the softmax cancels) and
// the values' is added to the output (the weights sum to 1).
#define FA_Q 64
#define FA_K 64
#define FA_THREADS 128

__device__ __forceinline__ unsigned pack_f16x2(float lo, float hi) {
    return (unsigned)from_f<f16>(lo) | ((unsigned)from_f<f16>(hi) << 16);
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// Four 8 × 8 f16 matrices from shared memory, lanes 8i..8i+7 giving matrix i's row addresses;
// TRANS gives each lane its transposed fragment (for V, stored key-major).
template <bool TRANS> __device__ __forceinline__ void ldmatrix_x4(unsigned* r, const f16* p) {
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(smem_addr(p)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(smem_addr(p)));
}

// 16 bytes from global to shared memory without passing through registers; zeros when !valid.
__device__ __forceinline__ void cp_async16(f16* dst, const f16* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// Starts copying ROWS rows of one head (hd values from column `col`) into shared rows of D + 8
// values; rows past `valid` and values past hd become zeros.
template <int ROWS, int D>
__device__ __forceinline__ void fa_copy(const f16* y, int ld, int col, long long row0, int valid, int hd, f16* dst) {
    constexpr int V = D / 8, N = ROWS * V / FA_THREADS;
#pragma unroll
    for (int i = 0; i < N; ++i) {
        int idx = threadIdx.x + i * FA_THREADS, r = idx / V, c = idx % V;
        bool ok = r < valid && c * 8 < hd;
        cp_async16(dst + r * (D + 8) + c * 8, ok ? y + (row0 + r) * ld + col + c * 8 : y, ok);
    }
}

// (q + bias) · scale on the 8 f16 values of a copied query vector, in place.
__device__ __forceinline__ void fa_query(uint4* v, const float* bias, float scale) {
    unsigned* u = (unsigned*)v;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float lo = to_f((f16)(u[j] & 0xffffu)), hi = to_f((f16)(u[j] >> 16));
        float blo = bias ? bias[2 * j] : 0.f, bhi = bias ? bias[2 * j + 1] : 0.f;
        u[j] = pack_f16x2((lo + blo) * scale, (hi + bhi) * scale);
    }
}

// The warp's 16 rows of the queries staged in `sq` (rows of D + 8 values) as mma A fragments for
// D / 16 steps of 16.
template <int D> __device__ __forceinline__ void fa_fragments(const f16* sq, unsigned (*qa)[4]) {
    constexpr int S = D + 8;
    int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const f16* qw = sq + (threadIdx.x >> 5) * 16 * S;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const f16* c = qw + kk * 16 + t4 * 2;
        qa[kk][0] = *(const unsigned*)(c + g * S);
        qa[kk][1] = *(const unsigned*)(c + (g + 8) * S);
        qa[kk][2] = *(const unsigned*)(c + g * S + 8);
        qa[kk][3] = *(const unsigned*)(c + (g + 8) * S + 8);
    }
}

// The warp's 16 query rows (bias and scale applied), as mma A fragments for D / 16 steps of 16.
template <int D>
__device__ __forceinline__ void fa_load_queries(const f16* qy, int q_ld, int col, const float* q_bias, float scale, long long row0,
                                                int valid, int hd, f16* sq, unsigned (*qa)[4]) {
    constexpr int S = D + 8, V = D / 8, N = FA_Q * V / FA_THREADS;
    uint4 v[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
        int idx = threadIdx.x + i * FA_THREADS, r = idx / V, c = idx % V;
        v[i] = make_uint4(0u, 0u, 0u, 0u);
        if (r < valid && c * 8 < hd) {
            v[i] = __ldg((const uint4*)(qy + (row0 + r) * q_ld + col + c * 8));
            fa_query(&v[i], q_bias ? q_bias + col + c * 8 : nullptr, scale);
        }
    }
#pragma unroll
    for (int i = 0; i < N; ++i) {
        int idx = threadIdx.x + i * FA_THREADS;
        *(uint4*)(sq + (idx / V) * S + (idx % V) * 8) = v[i];
    }
    __syncthreads();
    fa_fragments<D>(sq, qa);
}

// One chunk of `kv` ≤ FA_K keys for the warp's 16 queries: scores against the keys in `sk`, the
// online softmax (running maxima m, sums l) and the weighted sum of `sv` into o. Tiles of keys
// past kv are skipped (scores -inf, weights 0); the lane's rows g and g + 8 see only the first
// kv0 and kv1 ≤ kv keys (a causal mask; a row must see a key of its first chunk).
template <int D>
__device__ __forceinline__ void fa_chunk(const unsigned (*qa)[4], const f16* sk, const f16* sv, int kv, int kv0, int kv1,
                                         float (*o)[4], float& m0, float& m1, float& l0, float& l1) {
    constexpr int S = D + 8;
    int lane = threadIdx.x & 31, t4 = lane & 3;
    float s[FA_K / 8][4];
#pragma unroll
    for (int n = 0; n < FA_K / 8; ++n) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
        if (n * 8 >= kv) continue;
        const f16* kc = sk + (n * 8 + (lane & 7)) * S + (lane >> 3) * 8;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk += 2) {
            unsigned b[4];
            ldmatrix_x4<false>(b, kc + kk * 16);
            mma_16816(s[n], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b[0], b[1]);
            if (kk + 1 < D / 16) mma_16816(s[n], qa[kk + 1][0], qa[kk + 1][1], qa[kk + 1][2], qa[kk + 1][3], b[2], b[3]);
        }
    }
    float c0 = m0, c1 = m1;
#pragma unroll
    for (int n = 0; n < FA_K / 8; ++n)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            if (n * 8 + t4 * 2 + j >= kv0) s[n][j] = NEG_INF;
            if (n * 8 + t4 * 2 + j >= kv1) s[n][2 + j] = NEG_INF;
            c0 = fmaxf(c0, s[n][j]);
            c1 = fmaxf(c1, s[n][2 + j]);
        }
    c0 = fmaxf(c0, __shfl_xor_sync(0xffffffffu, c0, 1));
    c0 = fmaxf(c0, __shfl_xor_sync(0xffffffffu, c0, 2));
    c1 = fmaxf(c1, __shfl_xor_sync(0xffffffffu, c1, 1));
    c1 = fmaxf(c1, __shfl_xor_sync(0xffffffffu, c1, 2));
    float f0 = __expf(m0 - c0), f1 = __expf(m1 - c1); // 0 on the first chunk (m = -inf)
    m0 = c0;
    m1 = c1;
    l0 *= f0;
    l1 *= f1;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        o[n][0] *= f0;
        o[n][1] *= f0;
        o[n][2] *= f1;
        o[n][3] *= f1;
    }
#pragma unroll
    for (int n = 0; n < FA_K / 8; ++n) {
        if (n * 8 >= kv) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
            continue;
        }
        s[n][0] = __expf(s[n][0] - m0);
        s[n][1] = __expf(s[n][1] - m0);
        s[n][2] = __expf(s[n][2] - m1);
        s[n][3] = __expf(s[n][3] - m1);
        l0 += s[n][0] + s[n][1];
        l1 += s[n][2] + s[n][3];
    }
#pragma unroll
    for (int j = 0; j < FA_K / 16; ++j) {
        if (j * 16 >= kv) break;
        unsigned a0 = pack_f16x2(s[2 * j][0], s[2 * j][1]), a1 = pack_f16x2(s[2 * j][2], s[2 * j][3]);
        unsigned a2 = pack_f16x2(s[2 * j + 1][0], s[2 * j + 1][1]), a3 = pack_f16x2(s[2 * j + 1][2], s[2 * j + 1][3]);
        const f16* vr = sv + (j * 16 + (lane & 15)) * S + (lane >> 4) * 8;
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
            unsigned b[4];
            ldmatrix_x4<true>(b, vr + n * 8);
            mma_16816(o[n], a0, a1, a2, a3, b[0], b[1]);
            mma_16816(o[n + 1], a0, a1, a2, a3, b[2], b[3]);
        }
    }
}

// The softmax sums of the lane's rows g and g + 8, each summed over the four lanes holding parts of it.
__device__ __forceinline__ void fa_row_sums(float& l0, float& l1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
}

// Keys and values go through STAGES shared buffers: with two, chunk c + 1 is copied (cp.async)
// while chunk c is computed. Warps whose 16 queries are all past nq only help copy.
template <int D>
__device__ void attention_mma(const f16* qy, int q_ld, int q_col0, const float* q_bias, const f16* ky, int k_ld,
                              int k_col0, const f16* vy, int v_ld, int v_col0, const float* v_bias, f16* out, int nq,
                              int nk, int heads, int hd, float scale) {
    constexpr int S = D + 8; // padded row stride: fragment loads without bank conflicts
    constexpr int STAGES = D <= 64 ? 2 : 1; // two stages of D = 96 pass the 48 KB of static shared memory
    __shared__ __align__(16) f16 sq[FA_Q * S];
    __shared__ __align__(16) f16 skv[STAGES][2][FA_K * S];
    int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * FA_Q;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    bool active = q0 + warp * 16 < nq;
    int chunks = (nk + FA_K - 1) / FA_K;
    auto copy = [&](int c, int stage) {
        long long kr = (long long)b * nk + c * FA_K;
        fa_copy<FA_K, D>(ky, k_ld, k_col0 + h * hd, kr, nk - c * FA_K, hd, skv[stage][0]);
        fa_copy<FA_K, D>(vy, v_ld, v_col0 + h * hd, kr, nk - c * FA_K, hd, skv[stage][1]);
        cp_async_commit();
    };
    if (STAGES == 2) copy(0, 0);
    unsigned qa[D / 16][4];
    fa_load_queries<D>(qy, q_ld, q_col0 + h * hd, q_bias, scale, (long long)b * nq + q0, nq - q0, hd, sq, qa);
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    for (int c = 0; c < chunks; ++c) {
        int stage = STAGES == 2 ? c & 1 : 0;
        if (STAGES == 2) {
            if (c + 1 < chunks) copy(c + 1, stage ^ 1);
            else cp_async_commit();
            cp_async_wait<1>();
        } else {
            copy(c, 0);
            cp_async_wait<0>();
        }
        __syncthreads();
        int kv = min(FA_K, nk - c * FA_K);
        if (active) fa_chunk<D>(qa, skv[stage][0], skv[stage][1], kv, kv, kv, o, m0, m1, l0, l1);
        __syncthreads();
    }
    if (!active) return;
    fa_row_sums(l0, l1);
    int r0 = q0 + warp * 16 + g, d = heads * hd;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        int e = n * 8 + t4 * 2;
        if (e >= hd) continue;
        float b0 = v_bias ? v_bias[v_col0 + h * hd + e] : 0.f, b1 = v_bias ? v_bias[v_col0 + h * hd + e + 1] : 0.f;
        f16* c = out + h * hd + e;
        if (r0 < nq) *(unsigned*)(c + ((long long)b * nq + r0) * d) = pack_f16x2(o[n][0] / l0 + b0, o[n][1] / l0 + b1);
        if (r0 + 8 < nq) *(unsigned*)(c + ((long long)b * nq + r0 + 8) * d) = pack_f16x2(o[n][2] / l1 + b0, o[n][3] / l1 + b1);
    }
}

// attention_mma_64 is compiled for 4 blocks an SM (at most 128 registers a thread, 12 bytes
// spilled; with 168 registers 3 fit): 15 % less time in the synchronised profile of CLIP
// ViT-L/14 at batch 128.
#define ATTENTION_MMA(D, NAME, MIN_BLOCKS)                                                                            \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, MIN_BLOCKS) NAME(                                       \
        const f16* qy, int q_ld, int q_col0, const float* q_bias, const f16* ky, int k_ld, int k_col0,                \
        const f16* vy, int v_ld, int v_col0, const float* v_bias, f16* out, int nq, int nk, int heads, int hd,        \
        float scale) {                                                                                                \
        attention_mma<D>(qy, q_ld, q_col0, q_bias, ky, k_ld, k_col0, vy, v_ld, v_col0, v_bias, out, nq, nk, heads, hd, \
                         scale);                                                                                      \
    }
ATTENTION_MMA(64, attention_mma_64, 4)
ATTENTION_MMA(96, attention_mma_96, 1)

// Causal attention of a prompt's rows over the decoder's KV cache on the tensor cores (f16,
// head size hd ≤ D, a multiple of 8): a block per (FA_Q query rows, head), the blocks with the
// most keys first. Row r is position pos0 + r of sequence 0 and sees keys 0..=pos0 + r, whose
// cache slots come from the slot table `path` as `attention` reads them; q is RoPE's f32 output
// [rows, nh·hd], out f16 [rows, nh·hd]. The queries pass through the keys' shared buffer on their
// way into registers; a chunk's key and value rows are copied by cp.async, then scored as
// attention_mma's are, with each row's keys past its own position masked.
template <int D>
__device__ void attention_prefill_mma(const float* q, const f16* kc, const f16* vc, const int* path, f16* out, int rows,
                                      int nh, int nkv, int hd, int pos0, int cache_len, float scale) {
    constexpr int S = D + 8, V = D / 8;
    __shared__ __align__(16) f16 skv[2][FA_K * S];
    __shared__ long long base[FA_K];
    int h = blockIdx.y, kvh = h / (nh / nkv), q0 = (gridDim.x - 1 - blockIdx.x) * FA_Q;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    int valid = min(FA_Q, rows - q0);
    const long long q_ld = (long long)nh * hd;
#pragma unroll
    for (int i = 0; i < FA_Q * V / FA_THREADS; ++i) {
        int idx = threadIdx.x + i * FA_THREADS, r = idx / V, c = idx % V;
        float x[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (r < valid && c * 8 < hd) {
            const float4* src = (const float4*)(q + (q0 + r) * q_ld + h * hd + c * 8);
            float4 a = __ldg(src), b = __ldg(src + 1);
            x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
        }
        uint4 v = make_uint4(pack_f16x2(x[0] * scale, x[1] * scale), pack_f16x2(x[2] * scale, x[3] * scale),
                             pack_f16x2(x[4] * scale, x[5] * scale), pack_f16x2(x[6] * scale, x[7] * scale));
        *(uint4*)(skv[0] + r * S + c * 8) = v;
    }
    __syncthreads();
    unsigned qa[D / 16][4];
    fa_fragments<D>(skv[0], qa);
    __syncthreads();
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    // The warp's rows' positions; rows past `rows` see every key (their outputs are not written).
    int w0 = q0 + warp * 16, p0 = pos0 + w0 + g, p1 = p0 + 8, pw = pos0 + w0 + 15;
    if (w0 + g >= rows) p0 = 0x3fffffff;
    if (w0 + g + 8 >= rows) p1 = 0x3fffffff;
    bool active = w0 < rows;
    int nk = pos0 + q0 + valid, stride = nkv * hd;
    for (int k0 = 0; k0 < nk; k0 += FA_K) {
        int n = min(FA_K, nk - k0);
        if (threadIdx.x < n) base[threadIdx.x] = ((long long)path[k0 + threadIdx.x] * cache_len + k0 + threadIdx.x) * stride + kvh * hd;
        __syncthreads();
#pragma unroll
        for (int i = 0; i < FA_K * V / FA_THREADS; ++i) {
            int idx = threadIdx.x + i * FA_THREADS, r = idx / V, c = idx % V;
            bool ok = r < n && c * 8 < hd;
            long long at = ok ? base[r] + c * 8 : 0;
            cp_async16(skv[0] + r * S + c * 8, kc + at, ok);
            cp_async16(skv[1] + r * S + c * 8, vc + at, ok);
        }
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        if (active && pw >= k0) {
            int lim = min(n, pw - k0 + 1);
            fa_chunk<D>(qa, skv[0], skv[1], lim, max(0, min(lim, p0 - k0 + 1)), max(0, min(lim, p1 - k0 + 1)), o, m0, m1, l0, l1);
        }
        __syncthreads();
    }
    if (!active) return;
    fa_row_sums(l0, l1);
    int r0 = w0 + g;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        int e = n * 8 + t4 * 2;
        if (e >= hd) continue;
        f16* c = out + h * hd + e;
        if (r0 < rows) *(unsigned*)(c + r0 * q_ld) = pack_f16x2(o[n][0] / l0, o[n][1] / l0);
        if (r0 + 8 < rows) *(unsigned*)(c + (r0 + 8) * q_ld) = pack_f16x2(o[n][2] / l1, o[n][3] / l1);
    }
}

// Grid (ceil(rows / FA_Q), heads); see attention_prefill_mma.
#define ATTENTION_PREFILL_MMA(D, MIN_BLOCKS)                                                                          \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, MIN_BLOCKS) attention_prefill_mma_##D(                  \
        const float* q, const f16* kc, const f16* vc, const int* path, f16* out, int rows, int nh, int nkv, int hd,  \
        int pos0, int cache_len, float scale) {                                                                       \
        attention_prefill_mma<D>(q, kc, vc, path, out, rows, nh, nkv, hd, pos0, cache_len, scale);                    \
    }
ATTENTION_PREFILL_MMA(64, 4)
ATTENTION_PREFILL_MMA(128, 2)

// bias_act and residual_add_t on 8 f16 values per thread with 16-byte loads (n a multiple of 8).
extern "C" __global__ void bias_act_h8(const f16* y, const float* bias, f16* out, long long rows, int n, int act) {
    long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= rows * n) return;
    uint4 v = *(const uint4*)(y + i);
    unsigned* u = (unsigned*)&v;
    const float* b = bias ? bias + i % n : nullptr;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float lo = to_f((f16)(u[j] & 0xffffu)) + (b ? b[2 * j] : 0.f), hi = to_f((f16)(u[j] >> 16)) + (b ? b[2 * j + 1] : 0.f);
        u[j] = pack_f16x2(activation(lo, act), activation(hi, act));
    }
    *(uint4*)(out + i) = v;
}
extern "C" __global__ void residual_add_h8(float* h, const f16* y, const float* bias, long long rows, int n) {
    long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= rows * n) return;
    uint4 v = *(const uint4*)(y + i);
    const unsigned* u = (const unsigned*)&v;
    const float* b = bias ? bias + i % n : nullptr;
    float4* hp = (float4*)(h + i);
    float4 h0 = hp[0], h1 = hp[1];
    float* hv[2] = {&h0.x, &h1.x};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float* o = hv[j / 2] + (j % 2) * 2;
        o[0] += to_f((f16)(u[j] & 0xffffu)) + (b ? b[2 * j] : 0.f);
        o[1] += to_f((f16)(u[j] >> 16)) + (b ? b[2 * j + 1] : 0.f);
    }
    hp[0] = h0;
    hp[1] = h1;
}

// LayerNorm with the row in registers, a warp per row, 8 values a load (dim a multiple of 8, at
// most 32 · 8 · LN_CHUNKS; 16-byte aligned rows). When y is not null the row is first updated
// and written back: h += y + y_bias (a product's output into the f32 residual stream), so a
// residual add and the next LayerNorm read the stream once. out gets the normalised row in f16
// and out_f (when not null; it may be h) in f32. Rows of h are `stride` floats apart, of y, out
// and out_f dim values.
#define LN_CHUNKS 8
extern "C" __global__ void add_layer_norm_h8(float* h, long long stride, const f16* y, const float* y_bias, const float* w,
                                             const float* b, f16* out, float* out_f, int rows, int dim, float eps) {
    long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    int lane = threadIdx.x & 31;
    float* row = h + r * stride;
    float v[LN_CHUNKS][8];
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < LN_CHUNKS; ++i) {
        int c = (lane + i * 32) * 8;
        if (c >= dim) break;
        float4 a0 = *(const float4*)(row + c), a1 = *(const float4*)(row + c + 4);
        v[i][0] = a0.x, v[i][1] = a0.y, v[i][2] = a0.z, v[i][3] = a0.w;
        v[i][4] = a1.x, v[i][5] = a1.y, v[i][6] = a1.z, v[i][7] = a1.w;
        if (y) {
            uint4 u = *(const uint4*)(y + r * dim + c);
            const unsigned* p = (const unsigned*)&u;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                v[i][2 * j] += to_f((f16)(p[j] & 0xffffu)) + (y_bias ? y_bias[c + 2 * j] : 0.f);
                v[i][2 * j + 1] += to_f((f16)(p[j] >> 16)) + (y_bias ? y_bias[c + 2 * j + 1] : 0.f);
            }
            *(float4*)(row + c) = make_float4(v[i][0], v[i][1], v[i][2], v[i][3]);
            *(float4*)(row + c + 4) = make_float4(v[i][4], v[i][5], v[i][6], v[i][7]);
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) s += v[i][j];
    }
    float mean = warp_sum(s) / dim, ss = 0.f;
#pragma unroll
    for (int i = 0; i < LN_CHUNKS; ++i) {
        if ((lane + i * 32) * 8 >= dim) break;
#pragma unroll
        for (int j = 0; j < 8; ++j) ss += (v[i][j] - mean) * (v[i][j] - mean);
    }
    float inv = rsqrtf(warp_sum(ss) / dim + eps);
#pragma unroll
    for (int i = 0; i < LN_CHUNKS; ++i) {
        int c = (lane + i * 32) * 8;
        if (c >= dim) break;
        float4 w0 = *(const float4*)(w + c), w1 = *(const float4*)(w + c + 4);
        float4 b0 = *(const float4*)(b + c), b1 = *(const float4*)(b + c + 4);
        const float ww[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
        const float bb[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int j = 0; j < 8; ++j) v[i][j] = (v[i][j] - mean) * inv * ww[j] + bb[j];
        uint4 o;
        unsigned* p = (unsigned*)&o;
#pragma unroll
        for (int j = 0; j < 4; ++j) p[j] = pack_f16x2(v[i][2 * j], v[i][2 * j + 1]);
        *(uint4*)(out + r * dim + c) = o;
        if (out_f) {
            *(float4*)(out_f + r * dim + c) = make_float4(v[i][0], v[i][1], v[i][2], v[i][3]);
            *(float4*)(out_f + r * dim + c + 4) = make_float4(v[i][4], v[i][5], v[i][6], v[i][7]);
        }
    }
}

ENCODER_INSTANTIATE(f16, h)
ENCODER_INSTANTIATE(float, f)

extern "C" __global__ void vit_embed_f(const float* y, const float* bias, const float* cls, const float* pos, float* h,
                                       int batch, int np, int d) {
    vit_embed(y, bias, cls, pos, h, batch, np, d);
}
extern "C" __global__ void repeat_rows_f(const float* rows, float* h, int batch, int n, int d) {
    repeat_rows(rows, h, batch, n, d);
}

#endif

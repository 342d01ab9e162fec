
// ---------------------------------------------------------------------------------------------
// The image encoders' kernels (crates/llm/src/cuda/encoder.rs): the pieces of pre- and post-LN
// transformer encoders (ViTs, the Q-Former) around cuBLAS products. Appended to kernels.cu, whose
// helpers they use. Conventions: the residual stream is f32; the products' inputs and outputs
// (normalised rows, activations, attention heads and scores) are in T (f16 or f32), accumulated
// in f32 by cuBLAS and read back into f32 by the kernels that follow.
#ifndef XC_GEMV_ROWS

#define ACT_NONE 0
#define ACT_GELU 1       // exact GELU, 0.5 x (1 + erf(x / sqrt 2))
#define ACT_QUICK_GELU 2 // CLIP's x · sigmoid(1.702 x)

__device__ __forceinline__ float activation(float x, int act) {
    if (act == ACT_GELU) return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    if (act == ACT_QUICK_GELU) return x / (1.f + __expf(-1.702f * x));
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

__device__ __forceinline__ void ldmatrix_x2_trans(unsigned* b0, unsigned* b1, const f16* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];" : "=r"(*b0), "=r"(*b1) : "r"(a));
}

// Copies ROWS rows of one head (hd values from column `col`) into shared rows of D + 8 values;
// rows past `valid` and values past hd are zero. Every load is issued before the first store.
template <int ROWS, int D>
__device__ __forceinline__ void fa_copy(const f16* y, int ld, int col, long long row0, int valid, int hd, f16* dst) {
    constexpr int V = D / 8, N = ROWS * V / FA_THREADS;
    uint4 v[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
        int idx = threadIdx.x + i * FA_THREADS, r = idx / V, c = idx % V;
        v[i] = make_uint4(0u, 0u, 0u, 0u);
        if (r < valid && c * 8 < hd) v[i] = __ldg((const uint4*)(y + (row0 + r) * ld + col + c * 8));
    }
#pragma unroll
    for (int i = 0; i < N; ++i) {
        int idx = threadIdx.x + i * FA_THREADS;
        *(uint4*)(dst + (idx / V) * (D + 8) + (idx % V) * 8) = v[i];
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

template <int D>
__device__ void attention_mma(const f16* qy, int q_ld, int q_col0, const float* q_bias, const f16* ky, int k_ld,
                              int k_col0, const f16* vy, int v_ld, int v_col0, const float* v_bias, f16* out, int nq,
                              int nk, int heads, int hd, float scale) {
    constexpr int S = D + 8; // padded row stride: fragment loads without bank conflicts
    __shared__ __align__(16) f16 sq[FA_Q * S];
    __shared__ __align__(16) f16 sk[FA_K * S];
    __shared__ __align__(16) f16 sv[FA_K * S];
    int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * FA_Q;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    {
        constexpr int V = D / 8, N = FA_Q * V / FA_THREADS;
        int col = q_col0 + h * hd;
        uint4 v[N];
#pragma unroll
        for (int i = 0; i < N; ++i) {
            int idx = threadIdx.x + i * FA_THREADS, r = idx / V, c = idx % V;
            v[i] = make_uint4(0u, 0u, 0u, 0u);
            if (q0 + r < nq && c * 8 < hd) {
                v[i] = __ldg((const uint4*)(qy + ((long long)b * nq + q0 + r) * q_ld + col + c * 8));
                fa_query(&v[i], q_bias ? q_bias + col + c * 8 : nullptr, scale);
            }
        }
#pragma unroll
        for (int i = 0; i < N; ++i) {
            int idx = threadIdx.x + i * FA_THREADS;
            *(uint4*)(sq + (idx / V) * S + (idx % V) * 8) = v[i];
        }
    }
    __syncthreads();
    unsigned qa[D / 16][4];
    const f16* qw = sq + warp * 16 * S;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const f16* c = qw + kk * 16 + t4 * 2;
        qa[kk][0] = *(const unsigned*)(c + g * S);
        qa[kk][1] = *(const unsigned*)(c + (g + 8) * S);
        qa[kk][2] = *(const unsigned*)(c + g * S + 8);
        qa[kk][3] = *(const unsigned*)(c + (g + 8) * S + 8);
    }
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    for (int k0 = 0; k0 < nk; k0 += FA_K) {
        __syncthreads();
        long long kr = (long long)b * nk + k0;
        fa_copy<FA_K, D>(ky, k_ld, k_col0 + h * hd, kr, nk - k0, hd, sk);
        fa_copy<FA_K, D>(vy, v_ld, v_col0 + h * hd, kr, nk - k0, hd, sv);
        __syncthreads();
        float s[FA_K / 8][4];
#pragma unroll
        for (int n = 0; n < FA_K / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
            const f16* kc = sk + (n * 8 + g) * S + t4 * 2;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk)
                mma_16816(s[n], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], *(const unsigned*)(kc + kk * 16),
                          *(const unsigned*)(kc + kk * 16 + 8));
        }
        float c0 = m0, c1 = m1;
#pragma unroll
        for (int n = 0; n < FA_K / 8; ++n)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                if (k0 + n * 8 + t4 * 2 + j >= nk) s[n][j] = s[n][2 + j] = NEG_INF;
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
            s[n][0] = __expf(s[n][0] - m0);
            s[n][1] = __expf(s[n][1] - m0);
            s[n][2] = __expf(s[n][2] - m1);
            s[n][3] = __expf(s[n][3] - m1);
            l0 += s[n][0] + s[n][1];
            l1 += s[n][2] + s[n][3];
        }
#pragma unroll
        for (int j = 0; j < FA_K / 16; ++j) {
            unsigned a0 = pack_f16x2(s[2 * j][0], s[2 * j][1]), a1 = pack_f16x2(s[2 * j][2], s[2 * j][3]);
            unsigned a2 = pack_f16x2(s[2 * j + 1][0], s[2 * j + 1][1]), a3 = pack_f16x2(s[2 * j + 1][2], s[2 * j + 1][3]);
            const f16* vr = sv + (j * 16 + (lane & 15)) * S;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                unsigned b0, b1;
                ldmatrix_x2_trans(&b0, &b1, vr + n * 8);
                mma_16816(o[n], a0, a1, a2, a3, b0, b1);
            }
        }
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
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

#define ATTENTION_MMA(D)                                                                                              \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) attention_mma_##D(                                      \
        const f16* qy, int q_ld, int q_col0, const float* q_bias, const f16* ky, int k_ld, int k_col0,                \
        const f16* vy, int v_ld, int v_col0, const float* v_bias, f16* out, int nq, int nk, int heads, int hd,        \
        float scale) {                                                                                                \
        attention_mma<D>(qy, q_ld, q_col0, q_bias, ky, k_ld, k_col0, vy, v_ld, v_col0, v_bias, out, nq, nk, heads, hd, \
                         scale);                                                                                      \
    }
ATTENTION_MMA(64)
ATTENTION_MMA(96)

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

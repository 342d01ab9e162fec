// The fused decoder kernels of xcomposer's CUDA engine (crates/llm/src/cuda), compiled at run
// time by NVRTC. No CUDA header is included: f16 values are `unsigned short` converted with PTX.
//
// Conventions: the residual stream `h` and every projection output are f32; the normalised
// inputs of the matrix products (`xn`, `act`) and the KV cache are in the weight type T (f16 or
// f32), so cuBLAS can multiply them for prefill; norms and biases are f32.
// Weights are row-major [out, in], as checkpoints store them.

typedef unsigned short f16;
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
}
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ f16 from_f<f16>(float x) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of up to 1024 threads; every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < (int)((blockDim.x + 31) >> 5) ? part[lane] : 0.f;
        s = warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

// h[r, :] = table[ids[r], :] (one block per row).
template <typename T>
__device__ void embed(const T* table, const int* ids, float* h, int dim) {
    const T* src = table + (long long)ids[blockIdx.x] * dim;
    float* dst = h + (long long)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = to_f(src[i]);
}

// out[r, :] = T(x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w) (one block per row).
template <typename T>
__device__ void rmsnorm(const float* x, const float* w, T* out, int dim, float eps) {
    const float* row = x + (long long)blockIdx.x * dim;
    T* o = out + (long long)blockIdx.x * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += row[i] * row[i];
    float inv = rsqrtf(block_sum(ss) / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = from_f<T>(row[i] * inv * w[i]);
}

// Matrix-vector products for M <= 8 rows of activations, one warp per output row, the weight
// read once for all M rows with 16-byte loads. What happens to each dot product:
#define EPI_STORE 0  // out_f[m, n] = dot + bias[n]
#define EPI_ADD 1    // out_f[m, n] += dot + bias[n]   (residual add)
#define EPI_SWIGLU 2 // out_t[m, n] = T(silu(dot(W[n])) * dot(W2[n]))

__device__ __forceinline__ void fma_chunk(float* acc, uint4 w, uint4 x, f16) {
    const f16* wp = (const f16*)&w;
    const f16* xp = (const f16*)&x;
#pragma unroll
    for (int i = 0; i < 8; i++) *acc = fmaf(to_f(wp[i]), to_f(xp[i]), *acc);
}
__device__ __forceinline__ void fma_chunk(float* acc, uint4 w, uint4 x, float) {
    const float* wp = (const float*)&w;
    const float* xp = (const float*)&x;
#pragma unroll
    for (int i = 0; i < 4; i++) *acc = fmaf(wp[i], xp[i], *acc);
}

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

template <typename T, int M, int MODE>
__device__ void gemv(const T* W, const T* W2, const T* x, const float* bias, float* out_f, T* out_t, int N, int K) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * (blockDim.x >> 5) + warp;
    if (n >= N) return;
    const int VEC = 16 / sizeof(T);
    float acc[M], acc2[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = acc2[m] = 0.f;
    const T* wrow = W + (long long)n * K;
    const T* w2row = MODE == EPI_SWIGLU ? W2 + (long long)n * K : wrow;
    if (K % VEC == 0) {
        const uint4* w4 = (const uint4*)wrow;
        const uint4* w24 = (const uint4*)w2row;
        int chunks = K / VEC;
#pragma unroll 4
        for (int c = lane; c < chunks; c += 32) {
            uint4 wv = load_stream(w4 + c);
            uint4 wv2;
            if (MODE == EPI_SWIGLU) wv2 = load_stream(w24 + c);
#pragma unroll
            for (int m = 0; m < M; m++) {
                uint4 xv = __ldg((const uint4*)(x + (long long)m * K) + c);
                fma_chunk(&acc[m], wv, xv, T());
                if (MODE == EPI_SWIGLU) fma_chunk(&acc2[m], wv2, xv, T());
            }
        }
    } else {
        for (int k = lane; k < K; k += 32) {
            float wv = to_f(wrow[k]);
            float wv2 = MODE == EPI_SWIGLU ? to_f(w2row[k]) : 0.f;
#pragma unroll
            for (int m = 0; m < M; m++) {
                float xv = to_f(x[(long long)m * K + k]);
                acc[m] = fmaf(wv, xv, acc[m]);
                if (MODE == EPI_SWIGLU) acc2[m] = fmaf(wv2, xv, acc2[m]);
            }
        }
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
        float d = warp_sum(acc[m]);
        float d2 = MODE == EPI_SWIGLU ? warp_sum(acc2[m]) : 0.f;
        if (lane == 0) {
            long long at = (long long)m * N + n;
            float b = bias ? bias[n] : 0.f;
            if (MODE == EPI_STORE) out_f[at] = d + b;
            else if (MODE == EPI_ADD) out_f[at] += d + b;
            else out_t[at] = from_f<T>(d / (1.f + __expf(-d)) * d2);
        }
    }
}

// RoPE (rotate-half, from [positions, head_dim] cos/sin tables) on the q and k parts of each
// row of `qkv` ([rows, (nh + 2 nkv) hd], biases already added): q goes to `q`, k and v to the
// cache. Row r is position pos0 + r*pos_step of sequence r*seq_step; a sequence's cache is
// [cache_len, nkv*hd]. Grid (rows, nh + nkv), block hd/2.
template <typename T>
__device__ void rope_kv(const float* qkv, const float* cos_t, const float* sin_t, float* q, T* kc, T* vc,
                        int nh, int nkv, int hd, int pos0, int pos_step, int seq_step, int cache_len) {
    int r = blockIdx.x, head = blockIdx.y, i = threadIdx.x, half = hd / 2;
    int pos = pos0 + r * pos_step, seq = r * seq_step;
    int width = (nh + 2 * nkv) * hd;
    const float* row = qkv + (long long)r * width;
    const float* c = cos_t + (long long)pos * hd;
    const float* s = sin_t + (long long)pos * hd;
    const float* src = row + head * hd;
    float x1 = src[i], x2 = src[i + half];
    float y1 = x1 * c[i] - x2 * s[i];
    float y2 = x2 * c[i + half] + x1 * s[i + half];
    if (head < nh) {
        float* dst = q + (long long)r * nh * hd + head * hd;
        dst[i] = y1;
        dst[i + half] = y2;
    } else {
        int kvh = head - nh;
        long long at = ((long long)seq * cache_len + pos) * nkv * hd + kvh * hd;
        kc[at + i] = from_f<T>(y1);
        kc[at + i + half] = from_f<T>(y2);
        const float* v = row + (nh + nkv) * hd + kvh * hd;
        vc[at + i] = from_f<T>(v[i]);
        vc[at + i + half] = from_f<T>(v[i + half]);
    }
}

// Causal attention in two kernels (flash-decoding): `attention_split` has one block per (query
// head, row, span of ATT_SPAN keys) and writes the span's max score, exp-sum and unnormalised
// output; `attention_merge` combines the spans of each (head, row). Row r is position
// pos0 + r*pos_step of sequence r*seq_step and sees keys 0..=pos. hd <= 256; softmax in f32.
// Partials: [rows, nh, spans, hd + 2] floats (max, sum, then the output).
#define ATT_SPAN 32
#define ATT_THREADS 128
template <typename T>
__device__ void attention_split(const float* q, const T* kc, const T* vc, float* part, int nh, int nkv, int hd,
                                int pos0, int pos_step, int seq_step, int cache_len, float scale, int spans) {
    __shared__ float qs[256];
    __shared__ float sc[ATT_SPAN];
    __shared__ float stat[2];
    int head = blockIdx.x, r = blockIdx.y, span = blockIdx.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = ATT_THREADS / 32;
    int pos = pos0 + r * pos_step, seq = r * seq_step;
    int k0 = span * ATT_SPAN, k1 = min(k0 + ATT_SPAN, pos + 1);
    float* out = part + (((long long)r * nh + head) * spans + span) * (hd + 2);
    if (k0 >= k1) {
        if (threadIdx.x == 0) { out[0] = NEG_INF; out[1] = 0.f; }
        for (int d = threadIdx.x; d < hd; d += ATT_THREADS) out[2 + d] = 0.f;
        return;
    }
    int kvh = head / (nh / nkv);
    const float* qr = q + (long long)r * nh * hd + head * hd;
    for (int d = threadIdx.x; d < hd; d += ATT_THREADS) qs[d] = qr[d] * scale;
    __syncthreads();
    const long long stride = (long long)nkv * hd;
    const T* kb = kc + (long long)seq * cache_len * stride + kvh * hd;
    const T* vb = vc + (long long)seq * cache_len * stride + kvh * hd;
    // Scores: a warp per key, the keys of a warp independent of each other.
#pragma unroll 4
    for (int t = k0 + warp; t < k1; t += warps) {
        const T* kt = kb + t * stride;
        float s = 0.f;
        for (int d = lane; d < hd; d += 32) s += qs[d] * to_f(kt[d]);
        s = warp_sum(s);
        if (lane == 0) sc[t - k0] = s;
    }
    __syncthreads();
    if (warp == 0) {
        float m = NEG_INF;
        for (int i = lane; i < k1 - k0; i += 32) m = fmaxf(m, sc[i]);
        m = warp_max(m);
        float l = 0.f;
        for (int i = lane; i < k1 - k0; i += 32) {
            float p = __expf(sc[i] - m);
            sc[i] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0) { stat[0] = m; stat[1] = l; }
    }
    __syncthreads();
    // Values: a thread per output dimension, the keys' loads independent of each other.
    for (int d = threadIdx.x; d < hd; d += ATT_THREADS) {
        float acc = 0.f;
#pragma unroll 8
        for (int t = k0; t < k1; t++) acc += sc[t - k0] * to_f(vb[t * stride + d]);
        out[2 + d] = acc;
    }
    if (threadIdx.x == 0) { out[0] = stat[0]; out[1] = stat[1]; }
}

template <typename T>
__device__ void attention_merge(const float* part, T* out, int nh, int hd, int spans) {
    int head = blockIdx.x, r = blockIdx.y;
    const float* p = part + ((long long)r * nh + head) * spans * (hd + 2);
    float gm = NEG_INF;
    for (int s = 0; s < spans; s++) gm = fmaxf(gm, p[s * (hd + 2)]);
    float gl = 0.f;
    for (int s = 0; s < spans; s++) {
        float m = p[s * (hd + 2)];
        if (m != NEG_INF) gl += p[s * (hd + 2) + 1] * __expf(m - gm);
    }
    T* o = out + (long long)r * nh * hd + head * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < spans; s++) {
            float m = p[s * (hd + 2)];
            if (m != NEG_INF) v += p[s * (hd + 2) + 2 + d] * __expf(m - gm);
        }
        o[d] = from_f<T>(v / gl);
    }
}

// Prefill epilogues after cuBLAS (f32 outputs): bias add, residual add, SwiGLU.
__device__ void add_bias(float* x, const float* bias, int rows, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)rows * n) x[i] += bias[i % n];
}
__device__ void residual_add(float* h, const float* y, const float* bias, int rows, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)rows * n) h[i] += y[i] + (bias ? bias[i % n] : 0.f);
}
template <typename T>
__device__ void swiglu(const float* gu, T* out, int rows, int f) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * f) return;
    long long r = i / f, c = i % f;
    float g = gu[r * 2 * f + c], u = gu[r * 2 * f + f + c];
    out[i] = from_f<T>(g / (1.f + __expf(-g)) * u);
}

// Greedy choice on the device: the argmax (first index on ties) of one logits row after Hugging
// Face's repetition penalty on the tokens flagged in `seen`; writes the id to `token[0]` and
// flags it. One block of 1024 threads.
extern "C" __global__ void argmax_penalized(const float* logits, int v, unsigned char* seen, float penalty, int* token) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    float best = NEG_INF;
    int at = 0x7fffffff;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        float x = logits[i];
        if (seen[i]) x = x < 0.f ? x * penalty : x / penalty;
        if (x > best || (x == best && i < at)) { best = x; at = i; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, at, o);
        if (ob > best || (ob == best && oi < at)) { best = ob; at = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { bv[warp] = best; bi[warp] = at; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (bv[w] > best || (bv[w] == best && bi[w] < at)) { best = bv[w]; at = bi[w]; }
        if (at == 0x7fffffff) at = 0;
        token[0] = at;
        seen[at] = 1;
    }
}

// Flags ids[0..n] in `seen`.
extern "C" __global__ void flag_tokens(const int* ids, int n, unsigned char* seen) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) seen[ids[i]] = 1;
}

// Beam reordering: dst sequence s gets src sequence rows[s]'s first `len` positions, for every
// layer. Caches are [layers, capacity, cache_len, width] (src and dst capacities may differ, so
// the same kernel grows a cache). Grid (x, layers * seqs); moved in 16-byte words when a
// sequence's span allows, else in elements of `elem` bytes (2 or 4).
extern "C" __global__ void reorder_cache(const char* src, char* dst, const int* rows, int src_cap, int dst_cap, int seqs,
                                         long long seq_bytes, long long span_bytes, int elem) {
    int layer = blockIdx.y / seqs, s = blockIdx.y % seqs;
    const char* from = src + ((long long)layer * src_cap + rows[s]) * seq_bytes;
    char* to = dst + ((long long)layer * dst_cap + s) * seq_bytes;
    long long step = (long long)gridDim.x * blockDim.x;
    long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (span_bytes % 16 == 0 && seq_bytes % 16 == 0) {
        const uint4* f = (const uint4*)from;
        uint4* t = (uint4*)to;
        for (long long i = start; i < span_bytes / 16; i += step) t[i] = f[i];
    } else if (elem == 2) {
        for (long long i = start; i < span_bytes / 2; i += step) ((unsigned short*)to)[i] = ((const unsigned short*)from)[i];
    } else {
        for (long long i = start; i < span_bytes / 4; i += step) ((float*)to)[i] = ((const float*)from)[i];
    }
}

// extern "C" entry points, one per weight type (suffix _h: f16, _f: f32).
#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void embed_##S(const T* t, const int* ids, float* h, int dim) { embed<T>(t, ids, h, dim); } \
    extern "C" __global__ void rmsnorm_##S(const float* x, const float* w, T* o, int dim, float eps) {          \
        rmsnorm<T>(x, w, o, dim, eps);                                                                           \
    }                                                                                                            \
    extern "C" __global__ void rope_kv_##S(const float* qkv, const float* c, const float* s, float* q, T* kc, T* vc, \
                                           int nh, int nkv, int hd, int p0, int ps, int ss, int cl) {            \
        rope_kv<T>(qkv, c, s, q, kc, vc, nh, nkv, hd, p0, ps, ss, cl);                                           \
    }                                                                                                            \
    extern "C" __global__ void attention_split_##S(const float* q, const T* kc, const T* vc, float* part, int nh, \
                                                   int nkv, int hd, int p0, int ps, int ss, int cl, float scale,  \
                                                   int spans) {                                                  \
        attention_split<T>(q, kc, vc, part, nh, nkv, hd, p0, ps, ss, cl, scale, spans);                          \
    }                                                                                                            \
    extern "C" __global__ void attention_merge_##S(const float* part, T* o, int nh, int hd, int spans) {         \
        attention_merge<T>(part, o, nh, hd, spans);                                                              \
    }                                                                                                            \
    extern "C" __global__ void swiglu_##S(const float* gu, T* o, int rows, int f) { swiglu<T>(gu, o, rows, f); }

INSTANTIATE(f16, h)
INSTANTIATE(float, f)

#define GEMV_ONE(T, S, M, MODE, NAME)                                                                            \
    extern "C" __global__ void gemv_##NAME##_##S##_##M(const T* W, const T* W2, const T* x, const float* bias,   \
                                                      float* out_f, T* out_t, int N, int K) {                    \
        gemv<T, M, MODE>(W, W2, x, bias, out_f, out_t, N, K);                                                    \
    }
#define GEMV_M(T, S, M)                         \
    GEMV_ONE(T, S, M, EPI_STORE, store)         \
    GEMV_ONE(T, S, M, EPI_ADD, add)             \
    GEMV_ONE(T, S, M, EPI_SWIGLU, swiglu)
#define GEMV_ALL(T, S) \
    GEMV_M(T, S, 1) GEMV_M(T, S, 2) GEMV_M(T, S, 3) GEMV_M(T, S, 4) GEMV_M(T, S, 5) GEMV_M(T, S, 6) GEMV_M(T, S, 7) GEMV_M(T, S, 8)

GEMV_ALL(f16, h)
GEMV_ALL(float, f)

extern "C" __global__ void add_bias_f(float* x, const float* bias, int rows, int n) { add_bias(x, bias, rows, n); }
extern "C" __global__ void residual_add_f(float* h, const float* y, const float* bias, int rows, int n) {
    residual_add(h, y, bias, rows, n);
}

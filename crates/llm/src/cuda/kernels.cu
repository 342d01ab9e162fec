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

struct Sum {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename T, typename Op> __device__ __forceinline__ T warp_reduce(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, Sum()); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce(v, Max()); }

// `op` over a block of up to 1024 threads (`identity` pads the missing warps); every thread
// gets the result.
template <typename T, typename Op> __device__ T block_reduce(T v, T identity, Op op) {
    __shared__ T part[32];
    __shared__ T total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce(v, op);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T s = lane < (int)((blockDim.x + 31) >> 5) ? part[lane] : identity;
        s = warp_reduce(s, op);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}
__device__ float block_sum(float v) { return block_reduce(v, 0.f, Sum()); }
__device__ float block_max(float v) { return block_reduce(v, NEG_INF, Max()); }
__device__ double block_sum_f64(double v) { return block_reduce(v, 0.0, Sum()); }

// h[r, :] = table[ids[r], :] in f32 and hx[r, :] in T (one block per row).
template <typename T>
__device__ void embed(const T* table, const int* ids, float* h, T* hx, int dim) {
    const T* src = table + (long long)ids[blockIdx.x] * dim;
    float* dst = h + (long long)blockIdx.x * dim;
    T* dst_t = hx + (long long)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        dst[i] = to_f(src[i]);
        dst_t[i] = src[i];
    }
}

// out[i] = T(x[i]) for i < n.
template <typename T>
__device__ void to_t(const float* x, T* out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f<T>(x[i]);
}

// out[r, :] = T(x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w) (one block per row; w null: ones,
// for weights with the norm folded in).
template <typename T>
__device__ void rmsnorm(const float* x, const float* w, T* out, int dim, float eps) {
    const float* row = x + (long long)blockIdx.x * dim;
    T* o = out + (long long)blockIdx.x * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += row[i] * row[i];
    float inv = rsqrtf(block_sum(ss) / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = from_f<T>(row[i] * inv * (w ? w[i] : 1.f));
}

// Matrix-vector products for M <= 8 rows of activations, one warp per output (or per pair of
// outputs), the weight read once for all M rows with 16-byte loads. What happens to each dot:
#define EPI_STORE 0  // out_f[m, n] = dot + bias[n]
#define EPI_ADD 1    // out_f[m, n] += dot + bias[n] (the residual), and out_t[m, n] = T(out_f[m, n])
#define EPI_SWIGLU 2 // out_t[m, n] = T(silu(dot(W[n])) * dot(W[N + n]))
#define EPI_ROPE 3   // q/k/v rows (W[r], W[r + hd/2]) of one head: RoPE, q to `q`, k and v into the cache
// With NORM the input rows are the un-normalised residual stream and the weight has the RMSNorm
// weight folded into its columns: each warp sums the squares of the x values it reads anyway and
// scales its dot products by 1 / rms, so no norm kernel runs before the product.

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
__device__ __forceinline__ void sq_chunk(float* ss, uint4 x, f16) {
    const f16* xp = (const f16*)&x;
#pragma unroll
    for (int i = 0; i < 8; i++) *ss = fmaf(to_f(xp[i]), to_f(xp[i]), *ss);
}
__device__ __forceinline__ void sq_chunk(float* ss, uint4 x, float) {
    const float* xp = (const float*)&x;
#pragma unroll
    for (int i = 0; i < 4; i++) *ss = fmaf(xp[i], xp[i], *ss);
}

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// Where EPI_ROPE writes: RoPE tables [positions, hd], q [M, nh*hd] f32, caches
// [seqs, cache_len, nkv*hd]; row m is position pos0 + m*pos_step of sequence m*seq_step, pos0
// read from `pos_dev` when it is not null (a replayed CUDA graph's position).
template <typename T> struct RopeOut {
    const float* cos_t;
    const float* sin_t;
    float* q;
    T* kc;
    T* vc;
    const int* pos_dev;
    int nh, nkv, hd, pos0, pos_step, seq_step, cache_len;
};

// The lane's partial dot products of rows w1 (and w2 when TWO) with the M rows of x, and with
// NORM the partial sums of x's squares.
template <typename T, int M, bool TWO, bool NORM>
__device__ __forceinline__ void dot_rows(const T* w1, const T* w2, const T* x, int K, float* acc, float* acc2, float* ss) {
    const int VEC = 16 / sizeof(T);
    int lane = threadIdx.x & 31;
    if (K % VEC == 0) {
        const uint4* a4 = (const uint4*)w1;
        const uint4* b4 = (const uint4*)w2;
        int chunks = K / VEC;
#pragma unroll 4
        for (int c = lane; c < chunks; c += 32) {
            uint4 wv = load_stream(a4 + c);
            uint4 wv2;
            if (TWO) wv2 = load_stream(b4 + c);
#pragma unroll
            for (int m = 0; m < M; m++) {
                uint4 xv = __ldg((const uint4*)(x + (long long)m * K) + c);
                fma_chunk(&acc[m], wv, xv, T());
                if (TWO) fma_chunk(&acc2[m], wv2, xv, T());
                if (NORM) sq_chunk(&ss[m], xv, T());
            }
        }
    } else {
        for (int k = lane; k < K; k += 32) {
            float wv = to_f(w1[k]);
            float wv2 = TWO ? to_f(w2[k]) : 0.f;
#pragma unroll
            for (int m = 0; m < M; m++) {
                float xv = to_f(x[(long long)m * K + k]);
                acc[m] = fmaf(wv, xv, acc[m]);
                if (TWO) acc2[m] = fmaf(wv2, xv, acc2[m]);
                if (NORM) ss[m] = fmaf(xv, xv, ss[m]);
            }
        }
    }
}

// The q/k/v pair (i, i + hd/2) of `head` for row m, dot products done: RoPE on q and k, then q
// to `q`, k and v into the cache.
template <typename T>
__device__ __forceinline__ void rope_store(const RopeOut<T>& ro, int m, int head, int i, float y1, float y2) {
    int pos0 = ro.pos_dev ? *ro.pos_dev : ro.pos0;
    int half = ro.hd / 2, pos = pos0 + m * ro.pos_step, seq = m * ro.seq_step;
    if (head < ro.nh + ro.nkv) {
        const float* c = ro.cos_t + (long long)pos * ro.hd;
        const float* s = ro.sin_t + (long long)pos * ro.hd;
        float x1 = y1, x2 = y2;
        y1 = x1 * c[i] - x2 * s[i];
        y2 = x2 * c[i + half] + x1 * s[i + half];
    }
    if (head < ro.nh) {
        float* dst = ro.q + (long long)m * ro.nh * ro.hd + head * ro.hd;
        dst[i] = y1;
        dst[i + half] = y2;
        return;
    }
    int kvh = head < ro.nh + ro.nkv ? head - ro.nh : head - ro.nh - ro.nkv;
    T* cache = head < ro.nh + ro.nkv ? ro.kc : ro.vc;
    long long at = ((long long)seq * ro.cache_len + pos) * ro.nkv * ro.hd + kvh * ro.hd;
    cache[at + i] = from_f<T>(y1);
    cache[at + i + half] = from_f<T>(y2);
}

// Which rows of W a warp's output n reads (r1, and r2 for SwiGLU and RoPE) and, for RoPE, the
// head and the pair index i within it.
struct Target {
    int n, r1, r2, head, i;
};
template <typename T, int MODE> __device__ __forceinline__ Target target(int n, int N, const RopeOut<T>& ro) {
    Target t = {n, n, n + N, 0, 0};
    if (MODE == EPI_ROPE) {
        int half = ro.hd / 2;
        t.head = n / half;
        t.i = n % half;
        t.r1 = t.head * ro.hd + t.i;
        t.r2 = t.r1 + half;
    }
    return t;
}

// The epilogue of output t for row m (lane 0 of the warp), the dot products d (row r1) and d2 (r2) done.
template <typename T, int MODE>
__device__ __forceinline__ void finish(const Target& t, int m, float d, float d2, const float* bias, float* out_f, T* out_t,
                                       int N, const RopeOut<T>& ro) {
    long long at = (long long)m * N + t.n;
    if (MODE == EPI_STORE) out_f[at] = d + (bias ? bias[t.n] : 0.f);
    else if (MODE == EPI_ADD) {
        float v = out_f[at] + d + (bias ? bias[t.n] : 0.f);
        out_f[at] = v;
        out_t[at] = from_f<T>(v);
    } else if (MODE == EPI_SWIGLU) out_t[at] = from_f<T>(d / (1.f + __expf(-d)) * d2);
    else rope_store<T>(ro, m, t.head, t.i, d + (bias ? bias[t.r1] : 0.f), d2 + (bias ? bias[t.r2] : 0.f));
}

// N outputs (EPI_ROPE: N = (nh + 2 nkv) * hd / 2 pairs), 8 warps per block.
template <typename T, int M, int MODE, bool NORM>
__device__ void gemv(const T* W, const T* x, const float* bias, float* out_f, T* out_t, int N, int K, float eps,
                     RopeOut<T> ro) {
    const bool TWO = MODE == EPI_SWIGLU || MODE == EPI_ROPE;
    int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (n >= N) return;
    Target t = target<T, MODE>(n, N, ro);
    float acc[M], acc2[M], ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = acc2[m] = ss[m] = 0.f;
    dot_rows<T, M, TWO, NORM>(W + (long long)t.r1 * K, W + (long long)t.r2 * K, x, K, acc, acc2, ss);
#pragma unroll
    for (int m = 0; m < M; m++) {
        float d = warp_sum(acc[m]);
        float d2 = TWO ? warp_sum(acc2[m]) : 0.f;
        if (NORM) {
            float inv = rsqrtf(warp_sum(ss[m]) / K + eps);
            d *= inv;
            d2 *= inv;
        }
        if ((threadIdx.x & 31) == 0) finish<T, MODE>(t, m, d, d2, bias, out_f, out_t, N, ro);
    }
}

// Tensor-core products for 2 <= M <= 8 rows (f16 weights, K a multiple of 32): one
// mma.m16n8k16 multiplies 16 weight rows by the M input rows (padded to 8) over 16 values of K.
// The dot products do not depend on the order of K, so each lane loads 16 contiguous bytes of
// its two weight rows and of its input row and gives them to the mma as the K positions its
// fragments hold: lane (g = lane / 4, t = lane % 4) holds A rows g and g + 8 and B column
// (input row) g at K positions {2t, 2t+1, 2t+8, 2t+9}, the same four for A and B.
// A block of 8 warps covers 16 weight rows, each warp every 8th step of 32 values of K; warp 0
// sums the warps' results and runs the epilogue. The 16 rows are 16 outputs, or for SwiGLU and
// RoPE 8 outputs whose two rows (r1, r2) are A rows g and g + 8.
__device__ __forceinline__ void mma_16816(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                          unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The lane's part of the 16 × 8 product of weight rows ra (A row g) and rb (A row g + 8) with
// input row g (zeros when g >= M) over the warp's steps of K, and with NORM the sum of squares of
// the input values it loaded.
template <int M, bool NORM>
__device__ __forceinline__ void mma_rows(const uint4* wa, const uint4* wb, const uint4* xr, int K, float* d, float* ss) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int steps = K / 32;
#pragma unroll 4
    for (int s = warp; s < steps; s += 8) {
        int c = s * 4 + t;
        uint4 a = load_stream(wa + c), b = load_stream(wb + c);
        uint4 xv = {0u, 0u, 0u, 0u};
        if (g < M) xv = __ldg(xr + c);
        if (NORM) sq_chunk(ss, xv, f16());
        mma_16816(d, a.x, b.x, a.y, b.y, xv.x, xv.y);
        mma_16816(d, a.z, b.z, a.w, b.w, xv.z, xv.w);
    }
}

// The tensor-core products with quantized weights (2 <= M <= 8 rows, f16 inputs, K a multiple of
// 32): as gemv_mma, but each lane loads a whole block of 32 weights of its two rows (block
// 4s + t of step s) and dequantizes it to f16 in registers, (q - offset) · scale, for eight
// mmas: mma j < 4 takes the block's values 4j..4j+3, mma j + 4 its values 16 + 4j..16 + 4j + 3,
// and the input row's values at the same places. No input quantization: the inputs stay f16.
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned sel) {
    unsigned r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}
// (h - off) * s on two f16 values at once.
__device__ __forceinline__ unsigned dequant_f16x2(unsigned h, unsigned off, unsigned s) {
    unsigned r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(h), "r"(off));
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(r), "r"(s));
    return r;
}
// Four unsigned bytes u (quants, biased to be non-negative) as two f16x2 of (u - off) · s:
// each byte becomes the f16 1024 + u (0x64 as its high byte), less 1024 + off.
__device__ __forceinline__ void dequant4(unsigned u, unsigned off, unsigned s, unsigned* lo, unsigned* hi) {
    *lo = dequant_f16x2(prmt(u, 0x64646464u, 0x4140u), off, s);
    *hi = dequant_f16x2(prmt(u, 0x64646464u, 0x4342u), off, s);
}
// The biased quants of values 4j..4j+3 (half 0) or 16+4j..16+4j+3 (half 1) of a block held in
// w (Q4_0: 16 bytes in w[0]; Q8_0: 32 bytes in w[0], w[1]).
template <int QT> __device__ __forceinline__ unsigned quads(const uint4* w, int j, int half) {
    const unsigned* u = (const unsigned*)&w[QT == 4 ? 0 : half];
    if (QT == 4) return half ? (u[j] >> 4) & 0x0F0F0F0Fu : u[j] & 0x0F0F0F0Fu;
    return u[j] ^ 0x80808080u;
}

template <int QT, int M, bool NORM>
__device__ __forceinline__ void mma_rows_q(const unsigned char* qa, const unsigned char* qb, const f16* da, const f16* db,
                                           const uint4* xr, int K, float* d, float* ss) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int blocks = K / 32, VECS = QT == 4 ? 1 : 2;
    // 1024 + 8 (Q4_0's offset) or 1024 + 128 (Q8_0's bytes, sign bit flipped), twice.
    const unsigned off = QT == 4 ? 0x64086408u : 0x64806480u;
#pragma unroll 2
    for (int s = warp; s * 4 < blocks; s += 8) {
        int b = s * 4 + t;
        uint4 wa[2] = {{0u, 0u, 0u, 0u}, {0u, 0u, 0u, 0u}}, wb[2] = {{0u, 0u, 0u, 0u}, {0u, 0u, 0u, 0u}};
        uint4 xv[4] = {{0u, 0u, 0u, 0u}, {0u, 0u, 0u, 0u}, {0u, 0u, 0u, 0u}, {0u, 0u, 0u, 0u}};
        unsigned sa = 0u, sb = 0u;
        if (b < blocks) {
#pragma unroll
            for (int v = 0; v < VECS; v++) {
                wa[v] = load_stream((const uint4*)(qa + (long long)b * QT * 4) + v);
                wb[v] = load_stream((const uint4*)(qb + (long long)b * QT * 4) + v);
            }
            unsigned ha = __ldg(da + b), hb = __ldg(db + b);
            sa = ha | (ha << 16);
            sb = hb | (hb << 16);
            if (g < M) {
#pragma unroll
                for (int v = 0; v < 4; v++) xv[v] = __ldg(xr + b * 4 + v);
            }
        }
        if (NORM) {
#pragma unroll
            for (int v = 0; v < 4; v++) sq_chunk(ss, xv[v], f16());
        }
#pragma unroll
        for (int half = 0; half < 2; half++) {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                unsigned a01, a23, b01, b23;
                dequant4(quads<QT>(wa, j, half), off, sa, &a01, &a23);
                dequant4(quads<QT>(wb, j, half), off, sb, &b01, &b23);
                const uint4& x = xv[half * 2 + j / 2];
                mma_16816(d, a01, b01, a23, b23, j % 2 ? x.z : x.x, j % 2 ? x.w : x.y);
            }
        }
    }
}

// QT 16: f16 weights W; QT 4 / 8: quantized weights (Wq, Wd as gemv_q reads them).
template <int QT, int M, int MODE, bool NORM>
__device__ void gemv_mma(const void* W, const f16* Wd, const f16* x, const float* bias, float* out_f, f16* out_t, int N,
                         int K, float eps, RopeOut<f16> ro) {
    const bool TWO = MODE == EPI_SWIGLU || MODE == EPI_ROPE;
    __shared__ float4 red[8][32];
    __shared__ float sqs[8][8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int na = blockIdx.x * (TWO ? 8 : 16) + g, nb = TWO ? na : na + 8;
    Target ta = target<f16, MODE>(min(na, N - 1), N, ro), tb = target<f16, MODE>(min(nb, N - 1), N, ro);
    long long ra = ta.r1, rb = TWO ? ta.r2 : tb.r1;
    float d[4] = {0.f, 0.f, 0.f, 0.f}, ss = 0.f;
    const uint4* xr = (const uint4*)(x + (long long)min(g, M - 1) * K);
    if constexpr (QT == 16) {
        const f16* w = (const f16*)W;
        mma_rows<M, NORM>((const uint4*)(w + ra * K), (const uint4*)(w + rb * K), xr, K, d, &ss);
    } else {
        const unsigned char* q = (const unsigned char*)W;
        long long row_bytes = (long long)K * QT / 8, row_blocks = K / 32;
        mma_rows_q<QT, M, NORM>(q + ra * row_bytes, q + rb * row_bytes, Wd + ra * row_blocks, Wd + rb * row_blocks, xr, K, d, &ss);
    }
    red[warp][lane] = make_float4(d[0], d[1], d[2], d[3]);
    if (NORM) {
        ss += __shfl_xor_sync(0xffffffffu, ss, 1);
        ss += __shfl_xor_sync(0xffffffffu, ss, 2);
        if (t == 0) sqs[warp][g] = ss;
    }
    __syncthreads();
    if (warp != 0) return;
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    for (int w = 0; w < 8; w++) {
        float4 p = red[w][lane];
        v[0] += p.x; v[1] += p.y; v[2] += p.z; v[3] += p.w;
    }
    // v[j]: A row g with input row 2t + j; v[2 + j]: A row g + 8 with it.
#pragma unroll
    for (int j = 0; j < 2; j++) {
        int m = 2 * t + j;
        if (m >= M) continue;
        float inv = 1.f;
        if (NORM) {
            float sm = 0.f;
            for (int w = 0; w < 8; w++) sm += sqs[w][m];
            inv = rsqrtf(sm / K + eps);
        }
        if (na < N) finish<f16, MODE>(ta, m, v[j] * inv, v[2 + j] * inv, bias, out_f, out_t, N, ro);
        if (!TWO && nb < N) finish<f16, MODE>(tb, m, v[2 + j] * inv, 0.f, bias, out_f, out_t, N, ro);
    }
}

// Quantized weights, in blocks of 32 along K as GGML's Q4_0 (QT = 4) and Q8_0 (QT = 8) hold
// them but split in two arrays: the quants `Wq` (Q4_0: [N, K/2] bytes, value j of a block in the
// low nibble of byte j and value j + 16 in its high nibble; Q8_0: [N, K] signed bytes) and the
// f16 scales `Wd` [N, K/32]. Their inputs are quantized too, to signed bytes per block of 32
// (quantize_x), so each block's dot product is 8 integer dp4a instructions.
__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// Block b of a quantized row as 8 ints of 4 values each, in the order of the input's values.
template <int QT> __device__ __forceinline__ void load_block(const unsigned char* row, int b, int* w) {
    if (QT == 4) {
        uint4 v = load_stream((const uint4*)(row + (long long)b * 16));
        unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[i] = (int)(u[i] & 0x0F0F0F0Fu);
            w[4 + i] = (int)((u[i] >> 4) & 0x0F0F0F0Fu);
        }
    } else {
        uint4 a = load_stream((const uint4*)(row + (long long)b * 32));
        uint4 c = load_stream((const uint4*)(row + (long long)b * 32) + 1);
        w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
        w[4] = c.x; w[5] = c.y; w[6] = c.z; w[7] = c.w;
    }
}

// One block's contribution for input row m: the weight scale times the dot of the quants with
// the input's (less 8 · the input's block sum for Q4_0, whose quants are offset by 8).
template <int QT>
__device__ __forceinline__ float block_dot(const int* w, float wd, const int* xi, float xd, float xs) {
    int dot = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) dot = dp4a(w[i], xi[i], dot);
    return QT == 4 ? wd * (xd * (float)dot - 8.f * xs) : wd * xd * (float)dot;
}

// Inputs quantized per block of 32: xq [M, K] signed bytes, xd [M, K/32] scales and xs [M, K/32]
// the scale times the block's sum of quants.
struct QuantIn {
    const signed char* q;
    const float* d;
    const float* s;
};

template <int QT, int M, bool TWO>
__device__ __forceinline__ void dot_rows_q(const unsigned char* q1, const unsigned char* q2, const f16* d1, const f16* d2,
                                           QuantIn x, int K, float* acc, float* acc2) {
    int lane = threadIdx.x & 31, blocks = K / 32;
#pragma unroll 2
    for (int b = lane; b < blocks; b += 32) {
        int w[8], w2[8];
        load_block<QT>(q1, b, w);
        float wd = to_f(d1[b]), wd2 = 0.f;
        if (TWO) {
            load_block<QT>(q2, b, w2);
            wd2 = to_f(d2[b]);
        }
#pragma unroll
        for (int m = 0; m < M; m++) {
            const int4* xp = (const int4*)(x.q + (long long)m * K + b * 32);
            int4 lo = __ldg(xp), hi = __ldg(xp + 1);
            int xi[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
            float xd = __ldg(x.d + m * blocks + b), xs = QT == 4 ? __ldg(x.s + m * blocks + b) : 0.f;
            acc[m] += block_dot<QT>(w, wd, xi, xd, xs);
            if (TWO) acc2[m] += block_dot<QT>(w2, wd2, xi, xd, xs);
        }
    }
}

// The quantized counterpart of gemv (K a multiple of 32; the input norm, if any, is in x's scales).
template <int QT, int M, int MODE>
__device__ void gemv_q(const unsigned char* Wq, const f16* Wd, QuantIn x, const float* bias, float* out_f, f16* out_t, int N,
                       int K, RopeOut<f16> ro) {
    const bool TWO = MODE == EPI_SWIGLU || MODE == EPI_ROPE;
    int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (n >= N) return;
    Target t = target<f16, MODE>(n, N, ro);
    long long row_bytes = (long long)K * QT / 8, row_blocks = K / 32;
    float acc[M], acc2[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = acc2[m] = 0.f;
    dot_rows_q<QT, M, TWO>(Wq + t.r1 * row_bytes, Wq + t.r2 * row_bytes, Wd + t.r1 * row_blocks, Wd + t.r2 * row_blocks, x, K,
                           acc, acc2);
#pragma unroll
    for (int m = 0; m < M; m++) {
        float d = warp_sum(acc[m]);
        float d2 = TWO ? warp_sum(acc2[m]) : 0.f;
        if ((threadIdx.x & 31) == 0) finish<f16, MODE>(t, m, d, d2, bias, out_f, out_t, N, ro);
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

// Whether this block is the last of `blocks` counted in `*counter` to get here, every thread's
// writes before it visible to that last block; the last resets the counter for the next launch.
// Every thread of the block gets the answer.
__device__ __forceinline__ bool last_to_finish(int* counter, int blocks) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(counter, 1) == blocks - 1;
        if (last) *counter = 0;
    }
    __syncthreads();
    return last;
}

// Causal attention (flash-decoding) in one launch: a block per (query head, group of R rows,
// span of keys; gridDim.z spans share out the keys of the row that sees
// the most) writes each row's max score, exp-sum and unnormalised output over the span to
// `part`; the last block of a (head, group) to finish (counted in `done`, which it resets)
// merges the spans into `out`. Row r is position pos0 + r*pos_step of sequence r*seq_step and
// sees keys 0..=pos; pos0 comes from `pos_dev` when it is not null. R > 1 (a prompt's rows,
// which read the same keys) needs seq_step 0: the group's rows share each key and value load.
// hd <= 256; softmax in f32. Partials: [rows, nh, spans, hd + 2] floats (max, sum, output).
#define ATT_THREADS 128
// Keys and values go through shared memory a chunk of at most ATT_CHUNK keys at a time, each
// row padded by 16 bytes (fewer bank conflicts): f16, hd 128: 32 keys in ATT_TILE_BYTES.
#define ATT_TILE_BYTES 17408
#define ATT_CHUNK 64
// Vectors of 16 bytes each thread loads before it stores any (loads in flight).
#define ATT_LOADS 8

// q · k for one 16-byte vector of a key row (8 f16 or 4 f32 values) and q's matching values.
__device__ __forceinline__ float dot_vec(uint4 k, const float* q, f16) {
    const f16* kp = (const f16*)&k;
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) s = fmaf(q[i], to_f(kp[i]), s);
    return s;
}
__device__ __forceinline__ float dot_vec(uint4 k, const float* q, float) {
    const float* kp = (const float*)&k;
    return q[0] * kp[0] + q[1] * kp[1] + q[2] * kp[2] + q[3] * kp[3];
}

// Where a chunk of keys and values sits in shared memory: key j's row at kt + j*rs, its value
// row at vt + j*rs (rs elements apart); rows of whole 16-byte vectors (`vec`) move as such.
template <typename T> struct Tile {
    T* kt;
    T* vt;
    int rs, hd;
    bool vec;
};

template <typename T> __device__ __forceinline__ Tile<T> make_tile(uint4* mem, int hd, int* cap) {
    Tile<T> t;
    t.hd = hd;
    t.vec = hd * sizeof(T) % 16 == 0;
    t.rs = t.vec ? hd + 16 / (int)sizeof(T) : hd;
    *cap = min(ATT_CHUNK, ATT_TILE_BYTES / (2 * t.rs * (int)sizeof(T)));
    t.kt = (T*)mem;
    t.vt = t.kt + *cap * t.rs;
    return t;
}

// Copies the key and value rows of keys base[0..n) into the tile, ATT_LOADS independent
// 16-byte loads in flight per thread (a value at a time when rows are not whole vectors).
template <typename T>
__device__ __forceinline__ void load_tile(const T* kc, const T* vc, const long long* base, const Tile<T>& tl, int n) {
    if (!tl.vec) {
        const int per = n * tl.hd;
        for (int i = threadIdx.x; i < 2 * per; i += ATT_THREADS) {
            int which = i >= per, rem = i - which * per, key = rem / tl.hd, e = rem - key * tl.hd;
            (which ? tl.vt : tl.kt)[key * tl.rs + e] = ((which ? vc : kc) + base[key])[e];
        }
        return;
    }
    const int VEC = 16 / sizeof(T), row_vecs = tl.hd / VEC, per = n * row_vecs, total = 2 * per;
    for (int i0 = 0; i0 < total; i0 += ATT_LOADS * ATT_THREADS) {
        uint4 r[ATT_LOADS];
#pragma unroll
        for (int u = 0; u < ATT_LOADS; u++) {
            int i = i0 + u * ATT_THREADS + threadIdx.x;
            if (i < total) {
                int which = i >= per, rem = i - which * per, key = rem / row_vecs;
                r[u] = __ldg((const uint4*)((which ? vc : kc) + base[key]) + (rem - key * row_vecs));
            }
        }
#pragma unroll
        for (int u = 0; u < ATT_LOADS; u++) {
            int i = i0 + u * ATT_THREADS + threadIdx.x;
            if (i < total) {
                int which = i >= per, rem = i - which * per, key = rem / row_vecs;
                *((uint4*)((which ? tl.vt : tl.kt) + key * tl.rs) + (rem - key * row_vecs)) = r[u];
            }
        }
    }
}

// The scores of R query rows (scaled, in qs[r*hd..]) with the n keys of the tile into
// sc[r*ATT_CHUNK + j], -inf where key k0 + j is past row r's position pos[r]: four threads per
// (row, key), each summing every fourth vector (or value) of the row.
template <typename T, int R>
__device__ __forceinline__ void tile_scores(const Tile<T>& tl, const float* qs, float* sc, int n, int k0, const int* pos) {
    const int VEC = 16 / sizeof(T), total = R * n * 4, hd = tl.hd;
    int part = threadIdx.x & 3;
    for (int i0 = 0; i0 < total; i0 += ATT_THREADS) {
        int i = i0 + threadIdx.x, pair = i >> 2, r = pair / n, j = pair - r * n;
        bool on = i < total;
        float s = 0.f;
        if (on) {
            const T* kr = tl.kt + j * tl.rs;
            const float* qr = qs + r * hd;
            if (tl.vec)
                for (int v = part; v < hd / VEC; v += 4) s += dot_vec(*((const uint4*)kr + v), qr + v * VEC, T());
            else
                for (int e = part; e < hd; e += 4) s = fmaf(qr[e], to_f(kr[e]), s);
        }
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        if (on && part == 0) sc[r * ATT_CHUNK + j] = k0 + j <= pos[r] ? s : NEG_INF;
    }
}

// Warp w, for rows w, w + 4, ...: the chunk's scores sc[r*ATT_CHUNK + 0..n) become
// exp(score - max) under the row's running max, and its stat (running max, running sum, factor
// its outputs so far are rescaled by) is updated. A row that has seen no key keeps max -inf.
template <int R> __device__ __forceinline__ void chunk_softmax(float* sc, float* stat, int n) {
    int lane = threadIdx.x & 31;
    for (int r = threadIdx.x >> 5; r < R; r += ATT_THREADS / 32) {
        float* s = sc + r * ATT_CHUNK;
        float* st = stat + r * 3;
        float m_old = st[0], cm = NEG_INF;
        for (int i = lane; i < n; i += 32) cm = fmaxf(cm, s[i]);
        float m = fmaxf(m_old, warp_max(cm)), l = 0.f;
        for (int i = lane; i < n; i += 32) {
            float p = m == NEG_INF ? 0.f : __expf(s[i] - m);
            s[i] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0) {
            float f = m == NEG_INF ? 1.f : __expf(m_old - m);
            st[0] = m;
            st[1] = st[1] * f + l;
            st[2] = f;
        }
    }
}

// The shared memory of attention_span for R rows: scaled queries, a chunk's scores, its keys'
// cache addresses, the key/value tile, each row's softmax state and position.
template <int R> struct AttShared {
    float qs[R * 256];
    float sc[R * ATT_CHUNK];
    long long base[ATT_CHUNK];
    uint4 mem[ATT_TILE_BYTES / 16];
    float stat[R * 3];
    int pos[R];
};

// `path` ([seqs, cache_len]) names the cache slot holding each position of each sequence: beams
// share their common history instead of copying it when they are reordered. Rows r0..r0+R of
// `rows` (the group's rows past `rows` idle), positions pos0 + r*pos_step, keys k0..k1 of
// sequence `seq`; row r's partial goes to out + r * out_stride.
template <typename T, int R>
__device__ void attention_span(AttShared<R>& sm, const float* q, const T* kc, const T* vc, const int* path, float* out,
                               long long out_stride, int nh, int nkv, int hd, int r0, int rows, int pos0, int pos_step,
                               int seq, int cache_len, float scale, int k0, int k1) {
    float* qs = sm.qs;
    float* sc = sm.sc;
    long long* base = sm.base;
    float* stat = sm.stat;
    int* pos = sm.pos;
    int head = blockIdx.x, kvh = head / (nh / nkv);
    if (k0 >= k1) {
        for (int r = 0; r < R && r0 + r < rows; r++) {
            float* o = out + r * out_stride;
            if (threadIdx.x == 0) { o[0] = NEG_INF; o[1] = 0.f; }
            for (int d = threadIdx.x; d < hd; d += ATT_THREADS) o[2 + d] = 0.f;
        }
        return;
    }
    for (int i = threadIdx.x; i < R * hd; i += ATT_THREADS) {
        int r = i / hd, d = i - r * hd;
        qs[i] = r0 + r < rows ? q[(long long)(r0 + r) * nh * hd + head * hd + d] * scale : 0.f;
    }
    const long long stride = (long long)nkv * hd;
    if (threadIdx.x < R) {
        stat[threadIdx.x * 3] = NEG_INF;
        stat[threadIdx.x * 3 + 1] = 0.f;
        // Idle rows see no key.
        pos[threadIdx.x] = r0 + (int)threadIdx.x < rows ? pos0 + (r0 + (int)threadIdx.x) * pos_step : -1;
    }
    int cap;
    Tile<T> tl = make_tile<T>(sm.mem, hd, &cap);
    float acc[R][2];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = 0.f;
    int d0 = threadIdx.x, d1 = threadIdx.x + ATT_THREADS;
    __syncthreads();
    for (int c0 = k0; c0 < k1; c0 += cap) {
        int n = min(cap, k1 - c0);
        for (int t = threadIdx.x; t < n; t += ATT_THREADS)
            base[t] = ((long long)path[(long long)seq * cache_len + c0 + t] * cache_len + c0 + t) * stride + kvh * hd;
        __syncthreads();
        load_tile<T>(kc, vc, base, tl, n);
        __syncthreads();
        tile_scores<T, R>(tl, qs, sc, n, c0, pos);
        __syncthreads();
        chunk_softmax<R>(sc, stat, n);
        __syncthreads();
        // Values: a thread per output dimension (two when hd > ATT_THREADS) of every row.
#pragma unroll
        for (int r = 0; r < R; r++) {
            acc[r][0] *= stat[r * 3 + 2];
            acc[r][1] *= stat[r * 3 + 2];
        }
        for (int t = 0; t < n; t++) {
            float v0 = d0 < hd ? to_f(tl.vt[t * tl.rs + d0]) : 0.f;
            float v1 = d1 < hd ? to_f(tl.vt[t * tl.rs + d1]) : 0.f;
#pragma unroll
            for (int r = 0; r < R; r++) {
                float p = sc[r * ATT_CHUNK + t];
                acc[r][0] = fmaf(p, v0, acc[r][0]);
                acc[r][1] = fmaf(p, v1, acc[r][1]);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (r0 + r >= rows) break;
        float* o = out + r * out_stride;
        if (d0 < hd) o[2 + d0] = acc[r][0];
        if (d1 < hd) o[2 + d1] = acc[r][1];
        if (threadIdx.x == 0) { o[0] = stat[r * 3]; o[1] = stat[r * 3 + 1]; }
    }
}

// Combines the `spans` partials `p` of one (head, row) into its output `o` (L2 reads: other
// blocks wrote them).
template <typename T>
__device__ void attention_merge(const float* p, T* o, int hd, int spans) {
    float gm = NEG_INF;
    for (int s = 0; s < spans; s++) gm = fmaxf(gm, __ldcg(p + s * (hd + 2)));
    float gl = 0.f;
    for (int s = 0; s < spans; s++) {
        float m = __ldcg(p + s * (hd + 2));
        if (m != NEG_INF) gl += __ldcg(p + s * (hd + 2) + 1) * __expf(m - gm);
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < spans; s++) {
            float m = __ldcg(p + s * (hd + 2));
            if (m != NEG_INF) v += __ldcg(p + s * (hd + 2) + 2 + d) * __expf(m - gm);
        }
        o[d] = from_f<T>(v / gl);
    }
}

// Grid (heads, ceil(rows / R), spans); see attention_span.
template <typename T, int R>
__device__ void attention(const float* q, const T* kc, const T* vc, const int* path, float* part, int* done, T* out,
                          const int* pos_dev, int rows, int nh, int nkv, int hd, int pos0, int pos_step, int seq_step,
                          int cache_len, float scale) {
    __shared__ AttShared<R> sm;
    int head = blockIdx.x, r0 = blockIdx.y * R, span = blockIdx.z, spans = gridDim.z;
    if (pos_dev) pos0 = *pos_dev;
    int last_row = min(r0 + R, rows) - 1;
    int len = (pos0 + (rows - 1) * pos_step + spans) / spans;
    int k0 = span * len, k1 = min(k0 + len, pos0 + last_row * pos_step + 1);
    const long long row_stride = (long long)nh * spans * (hd + 2);
    float* base = part + ((long long)r0 * nh + head) * spans * (hd + 2);
    attention_span<T, R>(sm, q, kc, vc, path, base + span * (hd + 2), row_stride, nh, nkv, hd, r0, rows, pos0, pos_step,
                         r0 * seq_step, cache_len, scale, k0, k1);
    if (!last_to_finish(done + (long long)r0 * nh + head, spans)) return;
    for (int r = r0; r <= last_row; r++)
        attention_merge<T>(base + (r - r0) * row_stride, out + (long long)r * nh * hd + head * hd, hd, spans);
}

// Decode attention, warp-parallel: one row per block (a sequence's new position), grid (heads,
// rows, spans) of ATT_THREADS threads, head size hd = 32 E. The span's keys are split into one
// contiguous share per warp, and a warp runs no block-wide step until it is done: lane l holds
// q's values l*E.. (scaled), loads the same E values of up to DEC_KEYS keys' rows and value rows
// at once (E*sizeof(T) bytes each, the slot table read one pass ahead), sums each key's score
// across the warp with shuffles and keeps an online softmax in registers. The warps then combine
// through shared memory, and the spans merge as in `attention` (a single span writes `out`).
// Partials as in `attention`; same parameters (pos_step/seq_step as there).
template <int BYTES> struct RawT;
template <> struct RawT<2> { typedef unsigned short type; };
template <> struct RawT<4> { typedef unsigned int type; };
template <> struct RawT<8> { typedef uint2 type; };
template <> struct RawT<16> { typedef uint4 type; };

// E values of T held in a raw load, as floats.
template <typename T, int E>
__device__ __forceinline__ void unpack(const typename RawT<E * (int)sizeof(T)>::type& r, float* f) {
    const T* p = (const T*)&r;
#pragma unroll
    for (int i = 0; i < E; i++) f[i] = to_f(p[i]);
}

// Spans' weights kept in shared memory by merge_spans (more spans recompute theirs).
#define MERGE_SPANS 256

// The `spans` partials `p` of one (head, row) into its output `o`: the global max and exp-sum by
// the whole block, then each output value from every span's partial (independent L2 reads).
template <typename T>
__device__ void merge_spans(const float* p, T* o, int hd, int spans) {
    __shared__ float w[MERGE_SPANS];
    const int st = hd + 2;
    float gm = NEG_INF;
    for (int s = threadIdx.x; s < spans; s += blockDim.x) gm = fmaxf(gm, __ldcg(p + s * st));
    gm = block_max(gm);
    float gl = 0.f;
    for (int s = threadIdx.x; s < spans; s += blockDim.x) {
        float m = __ldcg(p + s * st);
        float ws = m == NEG_INF ? 0.f : __expf(m - gm);
        gl += __ldcg(p + s * st + 1) * ws;
        if (s < MERGE_SPANS) w[s] = ws;
    }
    gl = block_sum(gl);  // its barrier also publishes w
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < spans; s++) {
            float ws;
            if (s < MERGE_SPANS) ws = w[s];
            else {
                float m = __ldcg(p + s * st);
                ws = m == NEG_INF ? 0.f : __expf(m - gm);
            }
            v = fmaf(__ldcg(p + s * st + 2 + d), ws, v);
        }
        o[d] = from_f<T>(v / gl);
    }
}

template <typename T, int E>
__device__ void attention_dec(const float* q, const T* kc, const T* vc, const int* path, float* part, int* done, T* out,
                              const int* pos_dev, int rows, int nh, int nkv, int pos0, int pos_step, int seq_step,
                              int cache_len, float scale) {
    constexpr int BYTES = E * (int)sizeof(T);
    // Keys a warp loads at once: 8 rows (of keys and of values) of 8 or 16 bytes a lane (hd 128
    // in f16 or f32), 16 of narrower rows; at 8 rows about 70 registers, so a single row's 512
    // blocks (32 heads, 16 spans) all fit an H200 at once.
    constexpr int DEC_KEYS = BYTES >= 8 ? 8 : 16;
    constexpr int NW = ATT_THREADS / 32;
    constexpr int hd = 32 * E;
    typedef typename RawT<BYTES>::type Raw;
    __shared__ float wstat[NW][2];
    __shared__ float wacc[NW][hd];
    const unsigned FULL = 0xffffffffu;
    int head = blockIdx.x, r = blockIdx.y, span = blockIdx.z, spans = gridDim.z;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, kvh = head / (nh / nkv);
    // q before the position: both loads in flight at once.
    float qv[E];
    const float* qr = q + ((long long)r * nh + head) * hd + lane * E;
#pragma unroll
    for (int e = 0; e < E; e++) qv[e] = qr[e] * scale;
    if (pos_dev) pos0 = *pos_dev;
    int pos = pos0 + r * pos_step, seq = r * seq_step;
    int len = (pos0 + (rows - 1) * pos_step + spans) / spans;
    int k0 = span * len, k1 = min(k0 + len, pos + 1);
    int per = (max(k1 - k0, 0) + NW - 1) / NW;
    int w0 = k0 + warp * per, w1 = min(w0 + per, k1);
    const long long stride = (long long)nkv * hd;
    const int* prow = path + (long long)seq * cache_len;
    const T* kb = kc + kvh * hd + lane * E;
    const T* vb = vc + kvh * hd + lane * E;
    float m = NEG_INF, l = 0.f, acc[E];
#pragma unroll
    for (int e = 0; e < E; e++) acc[e] = 0.f;
    int slot = lane < DEC_KEYS && w0 + lane < w1 ? __ldg(prow + w0 + lane) : 0;
    for (int c = w0; c < w1; c += DEC_KEYS) {
        int n = min(DEC_KEYS, w1 - c);
        int next = lane < DEC_KEYS && c + DEC_KEYS + lane < w1 ? __ldg(prow + c + DEC_KEYS + lane) : 0;
        Raw kr[DEC_KEYS] = {}, vr[DEC_KEYS] = {};
#pragma unroll
        for (int j = 0; j < DEC_KEYS; j++) {
            int sj = __shfl_sync(FULL, slot, j);
            if (j < n) {
                long long at = ((long long)sj * cache_len + c + j) * stride;
                kr[j] = __ldg((const Raw*)(kb + at));
                vr[j] = __ldg((const Raw*)(vb + at));
            }
        }
        float s[DEC_KEYS];
#pragma unroll
        for (int j = 0; j < DEC_KEYS; j++) {
            float kf[E];
            unpack<T, E>(kr[j], kf);
            float d = 0.f;
#pragma unroll
            for (int e = 0; e < E; e++) d = fmaf(qv[e], kf[e], d);
            s[j] = d;
        }
#pragma unroll
        for (int j = 0; j < DEC_KEYS; j++) s[j] = warp_sum(s[j]);
        float cm = NEG_INF;
#pragma unroll
        for (int j = 0; j < DEC_KEYS; j++)
            if (j < n) cm = fmaxf(cm, s[j]);
        // A row that has seen only -inf scores keeps max -inf (as chunk_softmax does).
        float mn = fmaxf(m, cm), f = mn == NEG_INF ? 1.f : __expf(m - mn);
        l *= f;
#pragma unroll
        for (int e = 0; e < E; e++) acc[e] *= f;
#pragma unroll
        for (int j = 0; j < DEC_KEYS; j++) {
            if (j < n) {
                float p = mn == NEG_INF ? 0.f : __expf(s[j] - mn), vf[E];
                unpack<T, E>(vr[j], vf);
                l += p;
#pragma unroll
                for (int e = 0; e < E; e++) acc[e] = fmaf(p, vf[e], acc[e]);
            }
        }
        m = mn;
        slot = next;
    }
    if (lane == 0) {
        wstat[warp][0] = m;
        wstat[warp][1] = l;
    }
#pragma unroll
    for (int e = 0; e < E; e++) wacc[warp][lane * E + e] = acc[e];
    __syncthreads();
    float gm = NEG_INF, gl = 0.f, wf[NW];
#pragma unroll
    for (int w = 0; w < NW; w++) gm = fmaxf(gm, wstat[w][0]);
#pragma unroll
    for (int w = 0; w < NW; w++) {
        wf[w] = wstat[w][0] == NEG_INF ? 0.f : __expf(wstat[w][0] - gm);
        gl += wstat[w][1] * wf[w];
    }
    T* o = out + ((long long)r * nh + head) * hd;
    float* base = part + ((long long)r * nh + head) * spans * (hd + 2);
    float* pp = base + span * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += ATT_THREADS) {
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < NW; w++) v = fmaf(wacc[w][d], wf[w], v);
        if (spans == 1) o[d] = from_f<T>(v / gl);
        else pp[2 + d] = v;
    }
    if (spans == 1) return;
    if (threadIdx.x == 0) {
        pp[0] = gm;
        pp[1] = gl;
    }
    if (last_to_finish(done + (long long)r * nh + head, spans)) merge_spans<T>(base, o, hd, spans);
}

// Input rows of the quantized products: row r of x ([rows, K], T) into blocks of 32 signed bytes
// (xq [rows, K]) with a scale (xd [rows, K/32]) and the scale times the block's sum of quants
// (xs), as ggml's Q8_1. With NORM the scales also carry the row's 1 / rms (the RMSNorm weight is
// folded into the weights), which every thread block works out from the whole row. K a multiple
// of 32; grid (K/32 / warps per block, rows), a warp per block of 32.
template <typename T, bool NORM>
__device__ void quantize_x(const T* x, signed char* xq, float* xd, float* xs, int K, float eps) {
    const T* row = x + (long long)blockIdx.y * K;
    float inv = 1.f;
    if (NORM) {
        const int VEC = 16 / sizeof(T);
        float ss = 0.f;
        for (int c = threadIdx.x; c < K / VEC; c += blockDim.x) sq_chunk(&ss, __ldg((const uint4*)row + c), T());
        inv = rsqrtf(block_sum(ss) / K + eps);
    }
    int lane = threadIdx.x & 31, blocks = K / 32;
    int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (b >= blocks) return;
    float v = to_f(row[b * 32 + lane]);
    float d = warp_max(fabsf(v)) / 127.f;
    int q = d != 0.f ? (int)roundf(v / d) : 0;
    xq[(long long)blockIdx.y * K + b * 32 + lane] = (signed char)q;
    int sum = warp_reduce(q, Sum());
    if (lane == 0) {
        xd[(long long)blockIdx.y * blocks + b] = d * inv;
        xs[(long long)blockIdx.y * blocks + b] = d * inv * (float)sum;
    }
}

// The integer level a stored quant stands for: a Q4_0 nibble less 8, a Q8_0 byte as signed.
template <int QT> __device__ __forceinline__ int quant_level(int stored) {
    return QT == 4 ? stored - 8 : (int)(signed char)stored;
}

// The value of element i of a quantized matrix (blocks numbered across rows: K is a multiple of 32).
template <int QT> __device__ __forceinline__ float quant_value(const unsigned char* q, const f16* d, long long i) {
    long long b = i / 32;
    int j = (int)(i % 32);
    int byte = QT == 4 ? (q[b * 16 + (j & 15)] >> (j < 16 ? 0 : 4)) & 15 : q[i];
    return (float)quant_level<QT>(byte) * to_f(d[b]);
}

// The first `blocks` blocks of 32 of a quantized matrix expanded to f16 (for cuBLAS in prefill),
// a thread per block: one 16- or 32-byte load in, four 16-byte stores out.
template <int QT> __device__ void dequantize(const unsigned char* q, const f16* d, f16* out, long long blocks) {
    long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= blocks) return;
    int w[8];
    load_block<QT>(q + b * (QT * 4), 0, w);
    float scale = to_f(d[b]);
    uint4 o[4];
    f16* op = (f16*)o;
#pragma unroll
    for (int i = 0; i < 8; i++) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int byte = (w[i] >> (8 * j)) & 0xFF;
            op[4 * i + j] = from_f<f16>((float)quant_level<QT>(byte) * scale);
        }
    }
    uint4* dst = (uint4*)(out + b * 32);
#pragma unroll
    for (int i = 0; i < 4; i++) dst[i] = o[i];
}

// embed from a quantized table (dim a multiple of 32).
template <int QT> __device__ void embed_q(const unsigned char* q, const f16* d, const int* ids, float* h, f16* hx, int dim) {
    long long first = (long long)ids[blockIdx.x] * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = quant_value<QT>(q, d, first + i);
        h[(long long)blockIdx.x * dim + i] = v;
        hx[(long long)blockIdx.x * dim + i] = from_f<f16>(v);
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

// Entry points: compiled once without XC_GEMV_ROWS for everything but the matrix-vector
// kernels, and once per row count M with -DXC_GEMV_ROWS=M for those (NVRTC runs the programs in
// parallel).
#ifndef XC_GEMV_ROWS

// The best (value, index) pair of a block (higher value, then lower index) into thread 0's.
__device__ __forceinline__ void block_argmax(float* best, int* at) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, *best, o);
        int oi = __shfl_xor_sync(0xffffffffu, *at, o);
        if (ob > *best || (ob == *best && oi < *at)) { *best = ob; *at = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { bv[warp] = *best; bi[warp] = *at; }
    __syncthreads();
    if (threadIdx.x == 0)
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (bv[w] > *best || (bv[w] == *best && bi[w] < *at)) { *best = bv[w]; *at = bi[w]; }
}

// Greedy choice on the device: the argmax (first index on ties) of one logits row after Hugging
// Face's repetition penalty on the tokens flagged in `seen`; writes the id to `token[0]` and
// flags it. Each block (at most 1024 of them) finds the best of its share of the row into
// bv[block]/bi[block]; the last to finish (counted in `done`, which it resets) the best of those.
extern "C" __global__ void argmax_penalized(const float* logits, int v, unsigned char* seen, float penalty, int* token,
                                            float* bv, int* bi, int* done) {
    float best = NEG_INF;
    int at = 0x7fffffff;
    int per = (v + gridDim.x - 1) / gridDim.x, i1 = min((int)(blockIdx.x + 1) * per, v);
    for (int i = blockIdx.x * per + threadIdx.x; i < i1; i += blockDim.x) {
        float x = logits[i];
        if (seen[i]) x = x < 0.f ? x * penalty : x / penalty;
        if (x > best || (x == best && i < at)) { best = x; at = i; }
    }
    block_argmax(&best, &at);
    if (threadIdx.x == 0) {
        bv[blockIdx.x] = best;
        bi[blockIdx.x] = at;
    }
    if (!last_to_finish(done, gridDim.x)) return;
    best = NEG_INF;
    at = 0x7fffffff;
    for (int b = threadIdx.x; b < (int)gridDim.x; b += blockDim.x) {
        float x = __ldcg(bv + b);
        int i = __ldcg(bi + b);
        if (x > best || (x == best && i < at)) { best = x; at = i; }
    }
    __syncthreads();  // block_argmax's shared arrays are reused
    block_argmax(&best, &at);
    if (threadIdx.x == 0) {
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

// Beam search's candidates (beam_lse, then beam_topk): the k <= TOPK_MAX best of each row
// (value descending, lower id first).
#define TOPK_MAX 16
__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

// Keeps a thread's best TOPK_MAX (value, index) pairs, best first, with (p, i) offered.
__device__ __forceinline__ void topk_insert(float* bv, int* bi, float p, int i) {
    if (!ranks_before(p, i, bv[TOPK_MAX - 1], bi[TOPK_MAX - 1])) return;
    bv[TOPK_MAX - 1] = p;
    bi[TOPK_MAX - 1] = i;
#pragma unroll
    for (int j = TOPK_MAX - 1; j > 0; j--) {
        if (ranks_before(bv[j], bi[j], bv[j - 1], bi[j - 1])) {
            float tv = bv[j]; bv[j] = bv[j - 1]; bv[j - 1] = tv;
            int ti = bi[j]; bi[j] = bi[j - 1]; bi[j - 1] = ti;
        }
    }
}

// The block's k best of its threads' lists (each best first) into out_v/out_i[0..k): k rounds,
// each taking the best list head (block_argmax ranks as ranks_before does).
__device__ void topk_block(float* bv, int* bi, int k, float* out_v, int* out_i) {
    __shared__ int win_i;
    for (int j = 0; j < k; j++) {
        float best = bv[0];
        int at = bi[0];
        block_argmax(&best, &at);
        if (threadIdx.x == 0) {
            win_i = at;
            out_v[j] = best;
            out_i[j] = at;
        }
        __syncthreads();
        if (bi[0] == win_i) {
#pragma unroll
            for (int q = 0; q < TOPK_MAX - 1; q++) { bv[q] = bv[q + 1]; bi[q] = bi[q + 1]; }
            bv[TOPK_MAX - 1] = NEG_INF;
            bi[TOPK_MAX - 1] = 0x7fffffff;
        }
        __syncthreads();
    }
}

// Beam search's candidates in three launches, grid (shares, rows): a block per share of a row.
// beam_max: the share's max into bm[r, share].
extern "C" __global__ void beam_max(const float* logits, int v, float* bm) {
    const float* row = logits + (long long)blockIdx.y * v;
    int per = (v + gridDim.x - 1) / gridDim.x, i1 = min((int)(blockIdx.x + 1) * per, v);
    float m = NEG_INF;
    for (int i = blockIdx.x * per + threadIdx.x; i < i1; i += blockDim.x) m = fmaxf(m, row[i]);
    m = block_max(m);
    if (threadIdx.x == 0) bm[blockIdx.y * gridDim.x + blockIdx.x] = m;
}

// The row's max from every share's bm (warp 0 reads them; every thread gets it).
__device__ float row_max(const float* bm) {
    __shared__ float gm_s;
    if (threadIdx.x < 32) {
        float gm = NEG_INF;
        for (int b = threadIdx.x; b < (int)gridDim.x; b += 32) gm = fmaxf(gm, bm[blockIdx.y * gridDim.x + b]);
        gm = warp_max(gm);
        if (threadIdx.x == 0) gm_s = gm;
    }
    __syncthreads();
    return gm_s;
}

// beam_lse: the share's sum of exp(x - the row's max) in f64 (as the host sums them) into
// bs[r, share].
extern "C" __global__ void beam_lse(const float* logits, int v, const float* bm, double* bs) {
    const float* row = logits + (long long)blockIdx.y * v;
    float gm = row_max(bm);
    int per = (v + gridDim.x - 1) / gridDim.x, i1 = min((int)(blockIdx.x + 1) * per, v);
    double s = 0.0;
    for (int i = blockIdx.x * per + threadIdx.x; i < i1; i += blockDim.x) s += exp((double)(row[i] - gm));
    s = block_sum_f64(s);
    if (threadIdx.x == 0) bs[blockIdx.y * gridDim.x + blockIdx.x] = s;
}

// beam_topk: the row's log-softmax (log-sum-exp from every share's bm/bs), Hugging Face's
// repetition penalty on the tokens flagged in seen[r, :], the share's k <= TOPK_MAX best (value
// descending, lower id first) into cv/ci[r, share, :k]; the last share of the row to finish
// (counted in done[r], which it resets) merges them all into out_v/out_i[r, :k].
extern "C" __global__ void beam_topk(const float* logits, int v, const unsigned char* seen, float penalty, int k,
                                     const float* bm, const double* bs, float* cv, int* ci, int* done, float* out_v,
                                     int* out_i) {
    int r = blockIdx.y, shares = gridDim.x;
    const float* row = logits + (long long)r * v;
    const unsigned char* flags = seen + (long long)r * v;
    // The row's log-sum-exp: its max and every share's exp-sum.
    float gm = row_max(bm);
    double lse = (double)gm + log(block_sum_f64(threadIdx.x < shares ? bs[r * shares + threadIdx.x] : 0.0));
    float bv[TOPK_MAX];
    int bi[TOPK_MAX];
#pragma unroll
    for (int j = 0; j < TOPK_MAX; j++) { bv[j] = NEG_INF; bi[j] = 0x7fffffff; }
    int per = (v + shares - 1) / shares, i1 = min((int)(blockIdx.x + 1) * per, v);
    for (int i = blockIdx.x * per + threadIdx.x; i < i1; i += blockDim.x) {
        float p = (float)((double)row[i] - lse);
        if (flags[i]) p = p < 0.f ? p * penalty : p / penalty;
        topk_insert(bv, bi, p, i);
    }
    long long at = ((long long)r * shares + blockIdx.x) * k;
    topk_block(bv, bi, k, cv + at, ci + at);
    if (!last_to_finish(done + r, shares)) return;
#pragma unroll
    for (int j = 0; j < TOPK_MAX; j++) { bv[j] = NEG_INF; bi[j] = 0x7fffffff; }
    for (int c = threadIdx.x; c < shares * k; c += blockDim.x)
        topk_insert(bv, bi, __ldcg(cv + (long long)r * shares * k + c), __ldcg(ci + (long long)r * shares * k + c));
    topk_block(bv, bi, k, out_v + r * k, out_i + r * k);
}

// Cache slots of beams ([seqs, len] int tables, see attention): dst[s, t] = src[rows[s], t] for
// t < len, and s for t >= len (a sequence's new positions go to its own slot). rows null: the
// identity (every sequence in its own slot).
extern "C" __global__ void reorder_paths(const int* src, int* dst, const int* rows, int seqs, int len, int cache_len) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)seqs * cache_len) return;
    int s = (int)(i / cache_len), t = (int)(i % cache_len);
    dst[i] = rows && t < len ? src[(long long)rows[s] * cache_len + t] : s;
}

// Beam reordering: dst sequence s gets src sequence rows[s]'s first `len` positions, for every
// layer. Caches are [layers, capacity, cache_len, width] (src and dst capacities may differ, so
// the same kernel grows a cache). Grid (x, layers * seqs); moved in 16-byte words when a
// sequence's span allows, else in elements of `elem` bytes (2 or 4).
extern "C" __global__ void reorder_cache(const char* src, char* dst, const int* rows, int src_cap, int dst_cap, int seqs,
                                         long long src_seq_bytes, long long dst_seq_bytes, long long span_bytes, int elem) {
    int layer = blockIdx.y / seqs, s = blockIdx.y % seqs;
    const char* from = src + ((long long)layer * src_cap + rows[s]) * src_seq_bytes;
    char* to = dst + ((long long)layer * dst_cap + s) * dst_seq_bytes;
    long long step = (long long)gridDim.x * blockDim.x;
    long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (span_bytes % 16 == 0 && src_seq_bytes % 16 == 0 && dst_seq_bytes % 16 == 0) {
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
    extern "C" __global__ void embed_##S(const T* t, const int* ids, float* h, T* hx, int dim) {                 \
        embed<T>(t, ids, h, hx, dim);                                                                            \
    }                                                                                                            \
    extern "C" __global__ void to_t_##S(const float* x, T* o, long long n) { to_t<T>(x, o, n); }                \
    extern "C" __global__ void rmsnorm_##S(const float* x, const float* w, T* o, int dim, float eps) {          \
        rmsnorm<T>(x, w, o, dim, eps);                                                                           \
    }                                                                                                            \
    extern "C" __global__ void rope_kv_##S(const float* qkv, const float* c, const float* s, float* q, T* kc, T* vc, \
                                           int nh, int nkv, int hd, int p0, int ps, int ss, int cl) {            \
        rope_kv<T>(qkv, c, s, q, kc, vc, nh, nkv, hd, p0, ps, ss, cl);                                           \
    }                                                                                                            \
    extern "C" __global__ void attention_##S(const float* q, const T* kc, const T* vc, const int* path, float* part, \
                                             int* done, T* o, const int* pd, int rows, int nh, int nkv, int hd, int p0, \
                                             int ps, int ss, int cl, float scale) {                                  \
        attention<T, 1>(q, kc, vc, path, part, done, o, pd, rows, nh, nkv, hd, p0, ps, ss, cl, scale);               \
    }                                                                                                                \
    extern "C" __global__ void attention_rows8_##S(const float* q, const T* kc, const T* vc, const int* path,         \
                                                   float* part, int* done, T* o, const int* pd, int rows, int nh,     \
                                                   int nkv, int hd, int p0, int ps, int ss, int cl, float scale) {    \
        attention<T, 8>(q, kc, vc, path, part, done, o, pd, rows, nh, nkv, hd, p0, ps, ss, cl, scale);               \
    }                                                                                                                \
    extern "C" __global__ void swiglu_##S(const float* gu, T* o, int rows, int f) { swiglu<T>(gu, o, rows, f); }

INSTANTIATE(f16, h)
INSTANTIATE(float, f)

// attention_dec{E}_{S}: head size 32 E, at most 16 bytes a lane.
#define ATTENTION_DEC(T, S, E)                                                                                   \
    extern "C" __global__ void attention_dec##E##_##S(const float* q, const T* kc, const T* vc, const int* path,     \
                                                      float* part, int* done, T* o, const int* pd, int rows, int nh,   \
                                                      int nkv, int hd, int p0, int ps, int ss, int cl, float scale) {  \
        attention_dec<T, E>(q, kc, vc, path, part, done, o, pd, rows, nh, nkv, p0, ps, ss, cl, scale);             \
    }
ATTENTION_DEC(f16, h, 1)
ATTENTION_DEC(f16, h, 2)
ATTENTION_DEC(f16, h, 4)
ATTENTION_DEC(f16, h, 8)
ATTENTION_DEC(float, f, 1)
ATTENTION_DEC(float, f, 2)
ATTENTION_DEC(float, f, 4)

extern "C" __global__ void quantize_x_h(const f16* x, signed char* xq, float* xd, float* xs, int K, float eps) {
    quantize_x<f16, false>(x, xq, xd, xs, K, eps);
}
extern "C" __global__ void quantize_x_norm_h(const f16* x, signed char* xq, float* xd, float* xs, int K, float eps) {
    quantize_x<f16, true>(x, xq, xd, xs, K, eps);
}
extern "C" __global__ void dequantize_q4(const unsigned char* q, const f16* d, f16* out, long long blocks) {
    dequantize<4>(q, d, out, blocks);
}
extern "C" __global__ void dequantize_q8(const unsigned char* q, const f16* d, f16* out, long long blocks) {
    dequantize<8>(q, d, out, blocks);
}
extern "C" __global__ void embed_q4_h(const unsigned char* q, const f16* d, const int* ids, float* h, f16* hx, int dim) {
    embed_q<4>(q, d, ids, h, hx, dim);
}
extern "C" __global__ void embed_q8_h(const unsigned char* q, const f16* d, const int* ids, float* h, f16* hx, int dim) {
    embed_q<8>(q, d, ids, h, hx, dim);
}
extern "C" __global__ void add_bias_f(float* x, const float* bias, int rows, int n) { add_bias(x, bias, rows, n); }
extern "C" __global__ void residual_add_f(float* h, const float* y, const float* bias, int rows, int n) {
    residual_add(h, y, bias, rows, n);
}

#else

#define GEMV_ONE(T, S, M, MODE, NORM, NAME)                                                                      \
    extern "C" __global__ void gemv_##NAME##_##S##_##M(const T* W, const T* x, const float* bias, float* out_f,        \
                                                      T* out_t, int N, int K, float eps, const float* c,               \
                                                      const float* s, float* q, T* kc, T* vc, const int* pd, int nh,   \
                                                      int nkv, int hd, int p0, int ps, int ss, int cl) {               \
        RopeOut<T> ro = {c, s, q, kc, vc, pd, nh, nkv, hd, p0, ps, ss, cl};                                           \
        gemv<T, M, MODE, NORM>(W, x, bias, out_f, out_t, N, K, eps, ro);                                               \
    }
#define GEMV_M(T, S, M)                                \
    GEMV_ONE(T, S, M, EPI_STORE, false, store)         \
    GEMV_ONE(T, S, M, EPI_ADD, false, add)             \
    GEMV_ONE(T, S, M, EPI_SWIGLU, true, swiglu)        \
    GEMV_ONE(T, S, M, EPI_ROPE, true, rope)

GEMV_M(f16, h, XC_GEMV_ROWS)
GEMV_M(float, f, XC_GEMV_ROWS)

// The tensor-core products (f16 inputs, 2 <= M <= 8): gemvt_{mode}_h_{M} (f16 weights) and
// gemvtq_{mode}_q{4,8}_{M} (quantized weights).
#if XC_GEMV_ROWS >= 2
#define GEMVTQ_ONE(QT, M, MODE, NORM, NAME)                                                                     \
    extern "C" __global__ void gemvtq_##NAME##_q##QT##_##M(const unsigned char* Wq, const f16* Wd, const f16* x,       \
                                                          const float* bias, float* out_f, f16* out_t, int N, int K,   \
                                                          float eps, const float* c, const float* s, float* q,         \
                                                          f16* kc, f16* vc, const int* pd, int nh, int nkv, int hd,    \
                                                          int p0, int ps, int ss, int cl) {                            \
        RopeOut<f16> ro = {c, s, q, kc, vc, pd, nh, nkv, hd, p0, ps, ss, cl};                                         \
        gemv_mma<QT, M, MODE, NORM>(Wq, Wd, x, bias, out_f, out_t, N, K, eps, ro);                                     \
    }
#define GEMVT_ONE(M, MODE, NORM, NAME)                                                                          \
    extern "C" __global__ void gemvt_##NAME##_h_##M(const f16* W, const f16* x, const float* bias, float* out_f,      \
                                                    f16* out_t, int N, int K, float eps, const float* c,             \
                                                    const float* s, float* q, f16* kc, f16* vc, const int* pd, int nh, \
                                                    int nkv, int hd, int p0, int ps, int ss, int cl) {               \
        RopeOut<f16> ro = {c, s, q, kc, vc, pd, nh, nkv, hd, p0, ps, ss, cl};                                         \
        gemv_mma<16, M, MODE, NORM>(W, nullptr, x, bias, out_f, out_t, N, K, eps, ro);                                \
    }                                                                                                                 \
    GEMVTQ_ONE(4, M, MODE, NORM, NAME)                                                                            \
    GEMVTQ_ONE(8, M, MODE, NORM, NAME)
#define GEMVT_M(M)                             \
    GEMVT_ONE(M, EPI_STORE, false, store)      \
    GEMVT_ONE(M, EPI_ADD, false, add)          \
    GEMVT_ONE(M, EPI_SWIGLU, true, swiglu)     \
    GEMVT_ONE(M, EPI_ROPE, true, rope)

GEMVT_M(XC_GEMV_ROWS)
#endif

// The quantized products (f16 engine only): gemvq_{mode}_q{4,8}_{M}.
#define GEMVQ_ONE(QT, M, MODE, NAME)                                                                            \
    extern "C" __global__ void gemvq_##NAME##_q##QT##_##M(const unsigned char* Wq, const f16* Wd, const signed char* xq, \
                                                        const float* xd, const float* xs, const float* bias,           \
                                                        float* out_f, f16* out_t, int N, int K, const float* c,        \
                                                        const float* s, float* q, f16* kc, f16* vc, const int* pd,     \
                                                        int nh, int nkv, int hd, int p0, int ps, int ss, int cl) {     \
        RopeOut<f16> ro = {c, s, q, kc, vc, pd, nh, nkv, hd, p0, ps, ss, cl};                                         \
        QuantIn x = {xq, xd, xs};                                                                                     \
        gemv_q<QT, M, MODE>(Wq, Wd, x, bias, out_f, out_t, N, K, ro);                                                 \
    }
#define GEMVQ_M(QT, M)                        \
    GEMVQ_ONE(QT, M, EPI_STORE, store)        \
    GEMVQ_ONE(QT, M, EPI_ADD, add)            \
    GEMVQ_ONE(QT, M, EPI_SWIGLU, swiglu)      \
    GEMVQ_ONE(QT, M, EPI_ROPE, rope)

GEMVQ_M(4, XC_GEMV_ROWS)
GEMVQ_M(8, XC_GEMV_ROWS)

#endif

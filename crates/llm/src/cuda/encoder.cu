
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

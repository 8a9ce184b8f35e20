// moshi-rs CUDA kernels: single-query (decode) attention over the ring KV cache, in bf16 or
// 8-bit; the streaming step's QKV split + RoPE + cache write; the gated FFN's activation. Compiled to PTX by build.rs (feature `cuda`), loaded through
// Candle's device at first use. See nn/cuda/mod.rs for the layouts and the host side.
#include <cuda_bf16.h>
#include <stdint.h>

#define WARPS 4

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// 16 bytes of cache row widened to f32: 16 8-bit values (stored q + 128) or 8 bf16.
template <typename T> struct Vec16;
template <> struct Vec16<uint8_t> {
    static constexpr int N = 16;
    __device__ static __forceinline__ void load(const uint8_t* p, float* f) {
        const uint4 u = *reinterpret_cast<const uint4*>(p);
        const unsigned char* c = reinterpret_cast<const unsigned char*>(&u);
#pragma unroll
        for (int i = 0; i < 16; i++) f[i] = (float)c[i] - 128.f;
    }
};
template <> struct Vec16<__nv_bfloat16> {
    static constexpr int N = 8;
    __device__ static __forceinline__ void load(const __nv_bfloat16* p, float* f) {
        const uint4 u = *reinterpret_cast<const uint4*>(p);
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 x = __bfloat1622float2(h[i]);
            f[2 * i] = x.x;
            f[2 * i + 1] = x.y;
        }
    }
};

// Block-wide reductions (blockDim.x = 32 · WARPS); every thread gets the result.
__device__ __forceinline__ float block_reduce_max(float v, float* scratch) {
    v = warp_max(v);
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < WARPS; w++) m = fmaxf(m, scratch[w]);
    return m;
}
__device__ __forceinline__ float block_reduce_sum(float v, float* scratch) {
    v = warp_sum(v);
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; w++) s += scratch[w];
    return s;
}

#define CHUNK_MAX 256  // slots per block: the host's CHUNK (nn/cuda/mod.rs) must not exceed it

// Partial attention of one (row, head) over one chunk of ≤ CHUNK_MAX cache slots. Layouts:
//   q      [B, H, D] bf16 (the step's single query per row and head)
//   kc, vc [B, H, cap, D] (bf16, or 8-bit (u8 = q + 128) with per-slot scales ks, vs [B, H, cap]
//          f32; null for bf16)
//   starts [B] i64: first position each row may see (its stream's start)
//   part   [B*H, nsplit, D + 2] f32: the chunk's max score, sum of exponentials, unnormalised output
// Slot s (< filled) holds position last - ((last - s) mod cap): the ring of RingKVCache.
// Each cache row is read by G lanes with 16-byte loads (a warp covers 32 / G rows at once), in
// three phases: scores into shared memory, their softmax statistics, then the weighted values.
template <typename T, int D>
__device__ void attn_partial(const __nv_bfloat16* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                             const float* __restrict__ ks, const float* __restrict__ vs,
                             const int64_t* __restrict__ starts, float* __restrict__ part, int H, int cap,
                             int filled, long long last, int chunk, float scale) {
    constexpr int EPL = Vec16<T>::N;  // elements per lane
    constexpr int G = D / EPL;        // lanes per cache row
    constexpr int RPW = 32 / G;       // rows per warp and pass
    constexpr int RPB = RPW * WARPS;  // rows per block and pass
    __shared__ float sc[CHUNK_MAX];
    __shared__ float red[WARPS][D];
    __shared__ float scratch[WARPS];
    const int bh = blockIdx.x, split = blockIdx.y, nsplit = gridDim.y;
    const int b = bh / H;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / G, lig = lane % G;
    const long long start = starts[b];
    const int s0 = split * chunk, n = min(filled, s0 + chunk) - s0;
    const size_t base = (size_t)bh * cap;
    const int last_slot = (int)(last % cap);
    float qf[EPL];
#pragma unroll
    for (int e = 0; e < EPL; e++) qf[e] = __bfloat162float(q[(size_t)bh * D + lig * EPL + e]) * scale;

    // 1. Scores (−inf before the row's start). The loop is uniform across a warp (shuffles).
    for (int r0 = warp * RPW; r0 < n; r0 += RPB) {
        const int r = r0 + g;
        float dot = 0.f;
        if (r < n) {
            float kf[EPL];
            Vec16<T>::load(kc + (base + s0 + r) * D + lig * EPL, kf);
#pragma unroll
            for (int e = 0; e < EPL; e++) dot += qf[e] * kf[e];
        }
#pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (r < n && lig == 0) {
            const int s = s0 + r;
            const int d = last_slot >= s ? last_slot - s : last_slot - s + cap;  // steps back from the newest
            sc[r] = last - d >= start ? dot * (ks ? ks[base + s] : 1.f) : -INFINITY;
        }
    }
    __syncthreads();

    // 2. Softmax statistics of the chunk; sc becomes the unnormalised weights.
    float m = -INFINITY;
    for (int r = threadIdx.x; r < n; r += blockDim.x) m = fmaxf(m, sc[r]);
    m = block_reduce_max(m, scratch);
    float l = 0.f;
    for (int r = threadIdx.x; r < n; r += blockDim.x) {
        const float p = m == -INFINITY ? 0.f : expf(sc[r] - m);
        sc[r] = p;
        l += p;
    }
    l = block_reduce_sum(l, scratch);  // its __syncthreads also publishes sc

    // 3. Weighted values: each group of G lanes accumulates its rows' D values.
    float acc[EPL];
#pragma unroll
    for (int e = 0; e < EPL; e++) acc[e] = 0.f;
    for (int r = warp * RPW + g; r < n; r += RPB) {
        const float p = sc[r];
        if (p == 0.f) continue;
        const int s = s0 + r;
        const float w = p * (vs ? vs[base + s] : 1.f);
        float vf[EPL];
        Vec16<T>::load(vc + (base + s) * D + lig * EPL, vf);
#pragma unroll
        for (int e = 0; e < EPL; e++) acc[e] += w * vf[e];
    }
#pragma unroll
    for (int o = G; o < 32; o <<= 1) {
#pragma unroll
        for (int e = 0; e < EPL; e++) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], o);
    }
    if (g == 0) {
#pragma unroll
        for (int e = 0; e < EPL; e++) red[warp][lig * EPL + e] = acc[e];
    }
    __syncthreads();
    float* out = part + ((size_t)bh * nsplit + split) * (D + 2);
    for (int t = threadIdx.x; t < D; t += blockDim.x) {
        float a = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) a += red[w][t];
        out[2 + t] = a;
    }
    if (threadIdx.x == 0) {
        out[0] = m;
        out[1] = l;
    }
}

// Combine the chunks of each (row, head) into y [B, H, D] bf16.
template <int D>
__device__ void attn_combine(const float* __restrict__ part, __nv_bfloat16* __restrict__ y, int nsplit) {
    const int bh = blockIdx.x;
    const float* p = part + (size_t)bh * nsplit * (D + 2);
    float M = -INFINITY;
    for (int i = 0; i < nsplit; i++) M = fmaxf(M, p[i * (D + 2)]);
    for (int t = threadIdx.x; t < D; t += blockDim.x) {
        float L = 0.f, a = 0.f;
        if (M != -INFINITY) {
            for (int i = 0; i < nsplit; i++) {
                const float mi = p[i * (D + 2)];
                if (mi == -INFINITY) continue;
                const float w = expf(mi - M);
                L += p[i * (D + 2) + 1] * w;
                a += p[i * (D + 2) + 2 + t] * w;
            }
        }
        y[(size_t)bh * D + t] = __float2bfloat16(L > 0.f ? a / L : 0.f);
    }
}

#define PARTIAL(NAME, T, D)                                                                                        \
    extern "C" __global__ void __launch_bounds__(32 * WARPS) NAME(                                                 \
        const __nv_bfloat16* q, const T* kc, const T* vc, const float* ks, const float* vs, const int64_t* starts, \
        float* part, int H, int cap, int filled, long long last, int chunk, float scale) {                         \
        attn_partial<T, D>(q, kc, vc, ks, vs, starts, part, H, cap, filled, last, chunk, scale);                   \
    }

PARTIAL(attn_partial_bf16_d64, __nv_bfloat16, 64)
PARTIAL(attn_partial_bf16_d128, __nv_bfloat16, 128)
PARTIAL(attn_partial_i8_d64, uint8_t, 64)
PARTIAL(attn_partial_i8_d128, uint8_t, 128)

extern "C" __global__ void attn_combine_d64(const float* part, __nv_bfloat16* y, int nsplit) { attn_combine<64>(part, y, nsplit); }
extern "C" __global__ void attn_combine_d128(const float* part, __nv_bfloat16* y, int nsplit) { attn_combine<128>(part, y, nsplit); }

// Block-wide max of one value per thread (blockDim.x ≤ 1024, a multiple of 32).
__device__ __forceinline__ float block_max(float v, float* scratch) {
    v = warp_max(v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = 0.f;
    for (int w = 0; w < nw; w++) m = fmaxf(m, scratch[w]);
    return m;
}

// One streaming step's in_proj output qkv [B, 3·H·D] bf16 ("(p h d)": queries, keys, values)
// → the rotated queries q [B, H, D] bf16, and the rotated keys and the values written into slot
// `slot` of the ring (bf16 [B, H, cap, D], or 8-bit with scales as kv_write_i8). RoPE is the
// interleaved form computed in f32 and rounded to bf16 (as the reference), with tables cos, sin
// [R, D/2] f32 (R = 1: shared by the rows, R = B: per row); cos null: no rotation.
// Grid B·H, block D/2 threads (one rotation pair each).
template <int D, bool I8>
__device__ void qkv_rope_write(const __nv_bfloat16* __restrict__ qkv, const float* __restrict__ cos_t,
                               const float* __restrict__ sin_t, int rows_t, __nv_bfloat16* __restrict__ q_out,
                               void* __restrict__ kc, void* __restrict__ vc, float* __restrict__ ks,
                               float* __restrict__ vs, int H, int cap, int slot) {
    __shared__ float scratch[32];
    const int bh = blockIdx.x, b = bh / H, h = bh % H, i = threadIdx.x;
    const __nv_bfloat16* base = qkv + (size_t)b * 3 * H * D;
    const __nv_bfloat162 qp = *reinterpret_cast<const __nv_bfloat162*>(base + (size_t)h * D + 2 * i);
    const __nv_bfloat162 kp = *reinterpret_cast<const __nv_bfloat162*>(base + (size_t)(H + h) * D + 2 * i);
    const __nv_bfloat162 vp = *reinterpret_cast<const __nv_bfloat162*>(base + (size_t)(2 * H + h) * D + 2 * i);
    float2 qf = __bfloat1622float2(qp), kf = __bfloat1622float2(kp);
    if (cos_t) {
        const int r = rows_t == 1 ? 0 : b;
        const float c = cos_t[r * (D / 2) + i], s = sin_t[r * (D / 2) + i];
        qf = make_float2(qf.x * c - qf.y * s, qf.x * s + qf.y * c);
        kf = make_float2(kf.x * c - kf.y * s, kf.x * s + kf.y * c);
    }
    const __nv_bfloat162 qr = __floats2bfloat162_rn(qf.x, qf.y), kr = __floats2bfloat162_rn(kf.x, kf.y);
    *reinterpret_cast<__nv_bfloat162*>(q_out + (size_t)bh * D + 2 * i) = qr;
    const size_t at = ((size_t)bh * cap + slot) * D + 2 * i;
    if (!I8) {
        *reinterpret_cast<__nv_bfloat162*>(reinterpret_cast<__nv_bfloat16*>(kc) + at) = kr;
        *reinterpret_cast<__nv_bfloat162*>(reinterpret_cast<__nv_bfloat16*>(vc) + at) = vp;
        return;
    }
    // 8-bit: quantise the bf16-rounded keys (what the unfused path stores) and the values.
    const float2 k2 = __bfloat1622float2(kr), v2 = __bfloat1622float2(vp);
    const float kmax = block_max(fmaxf(fabsf(k2.x), fabsf(k2.y)), scratch);
    const float vmax = block_max(fmaxf(fabsf(v2.x), fabsf(v2.y)), scratch);
    const float kinv = kmax > 0.f ? 127.f / kmax : 0.f, vinv = vmax > 0.f ? 127.f / vmax : 0.f;
    uint8_t* k8 = reinterpret_cast<uint8_t*>(kc) + at;
    uint8_t* v8 = reinterpret_cast<uint8_t*>(vc) + at;
    k8[0] = (uint8_t)(fminf(127.f, fmaxf(-127.f, rintf(k2.x * kinv))) + 128.f);
    k8[1] = (uint8_t)(fminf(127.f, fmaxf(-127.f, rintf(k2.y * kinv))) + 128.f);
    v8[0] = (uint8_t)(fminf(127.f, fmaxf(-127.f, rintf(v2.x * vinv))) + 128.f);
    v8[1] = (uint8_t)(fminf(127.f, fmaxf(-127.f, rintf(v2.y * vinv))) + 128.f);
    if (i == 0) {
        ks[(size_t)bh * cap + slot] = kmax / 127.f;
        vs[(size_t)bh * cap + slot] = vmax / 127.f;
    }
}

#define QKV(NAME, D, I8)                                                                                          \
    extern "C" __global__ void NAME(const __nv_bfloat16* qkv, const float* cos_t, const float* sin_t, int rows_t, \
                                    __nv_bfloat16* q_out, void* kc, void* vc, float* ks, float* vs, int H, int cap, \
                                    int slot) {                                                                   \
        qkv_rope_write<D, I8>(qkv, cos_t, sin_t, rows_t, q_out, kc, vc, ks, vs, H, cap, slot);                    \
    }

QKV(qkv_rope_bf16_d64, 64, false)
QKV(qkv_rope_bf16_d128, 128, false)
QKV(qkv_rope_i8_d64, 64, true)
QKV(qkv_rope_i8_d128, 128, true)

// The gated FFN's activation: h [N, 2F] bf16 → silu(h[:, :F]) · h[:, F:] [N, F] bf16, rounded as
// the reference's two bf16 ops are (silu rounded to bf16, then the product).
extern "C" __global__ void silu_gate_bf16(const __nv_bfloat16* __restrict__ h, __nv_bfloat16* __restrict__ out,
                                          int n, int f) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * f) return;
    const size_t row = idx / f, col = idx % f;
    const float a = __bfloat162float(h[row * 2 * f + col]);
    const float g = __bfloat162float(h[row * 2 * f + f + col]);
    const float s = __bfloat162float(__float2bfloat16(a / (1.f + expf(-a))));
    out[idx] = __float2bfloat16(s * g);
}

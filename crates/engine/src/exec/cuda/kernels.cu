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
// The maximum over a block of NW warps (every thread gets it).
template <int NW>
__device__ __forceinline__ float block_reduce_max_n(float v, float* scratch) {
    v = warp_max(v);
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; w++) m = fmaxf(m, scratch[w]);
    return m;
}
__device__ __forceinline__ float block_reduce_max(float v, float* scratch) {
    return block_reduce_max_n<WARPS>(v, scratch);
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
//   pos    [1] i64: the newest position written (on the device: a CUDA graph replays it); the
//          ring holds filled = min(cap, pos + 1) slots; chunks past them are empty (m = -inf)
//   part   [B*H, nsplit, D + 2] f32: the chunk's max score, sum of exponentials, unnormalised output
// Slot s (< filled) holds position last - ((last - s) mod cap): the ring of RingKVCache.
// Each cache row is read by G lanes with 16-byte loads (a warp covers 32 / G rows at once), in
// three phases: scores into shared memory, their softmax statistics, then the weighted values.
template <typename T, int D>
__device__ void attn_partial(const __nv_bfloat16* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                             const float* __restrict__ ks, const float* __restrict__ vs,
                             const int64_t* __restrict__ starts, const int64_t* __restrict__ pos,
                             float* __restrict__ part, int H, int cap, int chunk, float scale) {
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
    const long long start = starts[b], last = pos[0];
    const int filled = (int)min((long long)cap, last + 1);
    const int s0 = split * chunk, n = min(filled, s0 + chunk) - s0;  // ≤ 0: an empty chunk
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
        const int64_t* pos, float* part, int H, int cap, int chunk, float scale) {                                 \
        attn_partial<T, D>(q, kc, vc, ks, vs, starts, pos, part, H, cap, chunk, scale);                            \
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
// pos mod cap of the ring (bf16 [B, H, cap, D], or 8-bit with scales as kv_write_i8); `pos`
// [1] i64 on the device is the step's position (read there, so that a CUDA graph replays it). RoPE is the
// interleaved form computed in f32 and rounded to bf16 (as the reference), with tables cos, sin
// [R, D/2] f32 (R = 1: shared by the rows, R = B: per row); cos null: no rotation.
// Grid B·H, block D/2 threads (one rotation pair each).
template <int D, bool I8>
__device__ void qkv_rope_write(const __nv_bfloat16* __restrict__ qkv, const float* __restrict__ cos_t,
                               const float* __restrict__ sin_t, int rows_t, __nv_bfloat16* __restrict__ q_out,
                               void* __restrict__ kc, void* __restrict__ vc, float* __restrict__ ks,
                               float* __restrict__ vs, int H, int cap, const int64_t* __restrict__ pos) {
    __shared__ float scratch[32];
    const int slot = (int)(pos[0] % cap);
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
                                    const int64_t* pos) {                                                         \
        qkv_rope_write<D, I8>(qkv, cos_t, sin_t, rows_t, q_out, kc, vc, ks, vs, H, cap, pos);                     \
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

// ---------------------------------------------------------------------------------------------
// The residual add and the RMSNorm after it, in one launch (the pre-norm transformer's
// x + f(x) followed by the next norm): s = x + r rounded to bf16 as Candle's add rounds it (one
// bf16 addition, `__hadd`), then y = s · rsqrt(mean(s²) + eps) · alpha in f32, rounded once, as
// Candle's rms_norm computes it from the stored s. One block of ADD_NORM_THREADS per row, each
// thread 8 values a pass (16-byte loads; d a multiple of 8, the host checks).
#define ADD_NORM_THREADS 256
extern "C" __global__ void __launch_bounds__(ADD_NORM_THREADS) add_rms_norm_bf16(
    const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ r, const __nv_bfloat16* __restrict__ alpha,
    __nv_bfloat16* __restrict__ s_out, __nv_bfloat16* __restrict__ y, int d, float eps) {
    __shared__ float warp_sums[ADD_NORM_THREADS / 32];
    const size_t row = blockIdx.x;
    const uint4* xr = reinterpret_cast<const uint4*>(x + row * d);
    const uint4* rr = reinterpret_cast<const uint4*>(r + row * d);
    uint4* sr = reinterpret_cast<uint4*>(s_out + row * d);
    const int n8 = d / 8;
    float ss = 0.f;
    for (int i = threadIdx.x; i < n8; i += ADD_NORM_THREADS) {
        uint4 a = xr[i];
        const uint4 b = rr[i];
        __nv_bfloat162* ah = reinterpret_cast<__nv_bfloat162*>(&a);
        const __nv_bfloat162* bh = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            ah[j] = __hadd2(ah[j], bh[j]);
            const float2 f = __bfloat1622float2(ah[j]);
            ss = fmaf(f.x, f.x, ss);
            ss = fmaf(f.y, f.y, ss);
        }
        sr[i] = a;
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = ss;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < ADD_NORM_THREADS / 32; w++) total += warp_sums[w];
    const float scale = rsqrtf(total / d + eps);
    const uint4* ar = reinterpret_cast<const uint4*>(alpha);
    uint4* yr = reinterpret_cast<uint4*>(y + row * d);
    // Each thread reads back the sums it stored itself (same thread, same addresses: ordered).
    for (int i = threadIdx.x; i < n8; i += ADD_NORM_THREADS) {
        uint4 v = sr[i];
        const uint4 al = __ldg(ar + i);
        __nv_bfloat162* vh = reinterpret_cast<__nv_bfloat162*>(&v);
        const __nv_bfloat162* alh = reinterpret_cast<const __nv_bfloat162*>(&al);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 f = __bfloat1622float2(vh[j]);
            const float2 g = __bfloat1622float2(alh[j]);
            vh[j] = __floats2bfloat162_rn(scale * f.x * g.x, scale * f.y * g.y);
        }
        yr[i] = v;
    }
}

// ---------------------------------------------------------------------------------------------
// The device sampler: one block per batch row, the host sampler's arithmetic (lm/sampling.rs)
// reproduced operation for operation, so that the same logits and noise give the same token:
// softmax(logits / T) in f32 with `moshi_exp` (the host's `exp_f32`), its sum in token order by
// one warp adding in order (a tree sum would round differently), the top k by (probability desc, index asc),
// and the token at rank argmax(p_r / q_r), first rank on ties, NaN ratios skipped unless at
// rank 0 (the host's sequential argmax). Every rounding is spelled out (__f*_rn, __d*_rn) so that
// nvcc cannot fuse a multiply and an add where the host does not.

#define SAMPLE_THREADS 512
#define SAMPLE_KMAX 1024

__device__ __forceinline__ float moshi_exp(float x) {
    if (isnan(x)) return x;
    if (x < -104.f) return 0.f;
    if (x > 89.f) return INFINITY;
    const double xd = (double)x;
    const double n = round(__dmul_rn(xd, 1.4426950408889634));
    const double r = __dsub_rn(__dsub_rn(xd, __dmul_rn(n, 0.6931467056274414)), __dmul_rn(n, 4.7493250387997676e-07));
    const double c[12] = {1.0, 1.0, 0.5, 0.16666666666666666, 0.041666666666666664, 0.008333333333333333,
                          0.001388888888888889, 0.0001984126984126984, 2.48015873015873e-05, 2.7557319223985893e-06,
                          2.755731922398589e-07, 2.505210838544172e-08};
    double p = c[11];
#pragma unroll
    for (int k = 10; k >= 0; k--) p = __dadd_rn(__dmul_rn(p, r), c[k]);
    const double scale = __longlong_as_double((long long)((int)n + 1023) << 52);
    return __double2float_rn(__dmul_rn(p, scale));
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

// (value, position) pairs: is a better than b? Larger value, then smaller position; `valid`
// false loses to anything valid.
struct Best {
    float v;
    int pos;
    int valid;
};
__device__ __forceinline__ bool better(const Best& a, const Best& b) {
    if (a.valid != b.valid) return a.valid > b.valid;
    return a.v > b.v || (a.v == b.v && a.pos < b.pos);
}
__device__ __forceinline__ Best block_best(Best x, Best* scratch) {
    for (int o = 16; o > 0; o >>= 1) {
        Best y;
        y.v = __shfl_xor_sync(0xffffffffu, x.v, o);
        y.pos = __shfl_xor_sync(0xffffffffu, x.pos, o);
        y.valid = __shfl_xor_sync(0xffffffffu, x.valid, o);
        if (better(y, x)) x = y;
    }
    __syncthreads();
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
    __syncthreads();
    Best b = scratch[0];
    for (int w = 1; w < SAMPLE_THREADS / 32; w++)
        if (better(scratch[w], b)) b = scratch[w];
    return b;
}


// Sort key of token i with probability p >= 0: larger = earlier in the top-k order.
__device__ __forceinline__ unsigned long long topk_key(float p, int i) {
    return ((unsigned long long)__float_as_uint(p) << 16) | (unsigned long long)(0xFFFF - i);
}

// logits [B, V] (row stride V); per row: temps[row] (<= 0: greedy) and topks[row] (0: the whole
// vocabulary in token order); noise row r at noise + r * noise_stride (the row's Exponential(1)
// draws, one per rank); scratch [B, V] f32. Writes the token to tokens[row * out_stride + col]
// and 1 to flags[...] (token 0) when the row holds a non-finite logit; next[row] = token + 1 (the
// next depformer step's shifted input).
template <typename T>
__device__ void sample_row(const T* __restrict__ logits, int V, const float* __restrict__ temps,
                           const float* __restrict__ topks, const float* __restrict__ noise, int noise_stride,
                           float* __restrict__ scratch, unsigned* __restrict__ tokens, unsigned* __restrict__ flags,
                           int out_stride, int col, unsigned* __restrict__ next) {
    __shared__ Best red[SAMPLE_THREADS / 32];
    __shared__ unsigned hist[256];
    __shared__ float redf[SAMPLE_THREADS / 32];
    __shared__ unsigned long long cand[SAMPLE_KMAX];
    __shared__ int by_rank[SAMPLE_KMAX];
    __shared__ float sh_f;
    __shared__ unsigned long long sh_prefix;
    __shared__ int sh_remain, sh_count, sh_nan0;
    const int row = blockIdx.x, tid = threadIdx.x;
    const T* x = logits + (size_t)row * V;
    float* p = scratch + (size_t)row * V;
    const float temp = temps[row];
    const int topk = (int)topks[row];
    const float* q = noise + (size_t)row * noise_stride;

    // Finite check and the greedy argmax (first index of the largest logit) in one pass.
    Best g = {-INFINITY, 0x7fffffff, 0};
    int bad = 0;
    for (int i = tid; i < V; i += SAMPLE_THREADS) {
        const float v = to_f32(x[i]);
        if (!isfinite(v)) bad = 1;
        Best c = {v, i, 1};
        if (better(c, g)) g = c;
    }
    bad = __syncthreads_or(bad);
    const size_t o = (size_t)row * out_stride + col;
    if (bad) {
        if (tid == 0) { tokens[o] = 0; flags[o] = 1; next[row] = 1; }
        return;
    }
    g = block_best(g, red);
    int token = g.pos;
    if (temp > 0.f) {
        float m = -INFINITY;
        for (int i = tid; i < V; i += SAMPLE_THREADS) m = fmaxf(m, __fdiv_rn(to_f32(x[i]), temp));
        m = block_reduce_max_n<SAMPLE_THREADS / 32>(m, redf);
        // logits / T overflowed (a tiny positive T): the distribution's limit, the argmax.
        if (!isinf(m)) {
            for (int i = tid; i < V; i += SAMPLE_THREADS) p[i] = moshi_exp(__fsub_rn(__fdiv_rn(to_f32(x[i]), temp), m));
            __syncthreads();
            if (tid < 32) {
                // The sum in token order, one add after another as on the host, but with the
                // loads off the chain: warp 0 reads 128 values at a time (the next 128 in flight
                // while these are added), and every lane adds all of them, broadcast by shuffles
                // in order (the same sum in every lane). One thread reading p itself left each
                // add waiting on a load: 0.6 ms for the 32 000 text logits.
                float s = 0.f;
                float cur[4], nxt[4];
#pragma unroll
                for (int u = 0; u < 4; u++) cur[u] = u * 32 + tid < V ? p[u * 32 + tid] : 0.f;
                for (int base = 0; base < V; base += 128) {
#pragma unroll
                    for (int u = 0; u < 4; u++) {
                        const int i = base + 128 + u * 32 + tid;
                        nxt[u] = i < V ? p[i] : 0.f;
                    }
#pragma unroll
                    for (int u = 0; u < 4; u++)
#pragma unroll
                        for (int j = 0; j < 32; j++) {
                            const float y = __shfl_sync(0xffffffffu, cur[u], j);
                            if (base + u * 32 + j < V) s = __fadd_rn(s, y);
                        }
#pragma unroll
                    for (int u = 0; u < 4; u++) cur[u] = nxt[u];
                }
                if (tid == 0) sh_f = s;
            }
            __syncthreads();
            const float sum = sh_f;
            for (int i = tid; i < V; i += SAMPLE_THREADS) p[i] = __fdiv_rn(p[i], sum);
            if (tid == 0) sh_nan0 = 0;
            __syncthreads();
            Best b = {-INFINITY, 0x7fffffff, 0};
            if (topk <= 0) {
                // The whole vocabulary, rank = token index.
                for (int i = tid; i < V; i += SAMPLE_THREADS) {
                    const float r = __fdiv_rn(p[i], q[i]);
                    if (isnan(r)) { if (i == 0) sh_nan0 = 1; continue; }
                    Best c = {r, i, 1};
                    if (better(c, b)) b = c;
                }
                b = block_best(b, red);
                token = sh_nan0 ? 0 : b.pos;
            } else {
                const int k = min(topk, V);
                // Radix select of the k-th largest key (keys are unique: 32 bits of p, 16 of index).
                unsigned long long prefix = 0, mask = 0;
                int remain = k;
                for (int shift = 40; shift >= 0; shift -= 8) {
                    for (int j = tid; j < 256; j += SAMPLE_THREADS) hist[j] = 0;
                    __syncthreads();
                    for (int i = tid; i < V; i += SAMPLE_THREADS) {
                        const unsigned long long key = topk_key(p[i], i);
                        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1u);
                    }
                    __syncthreads();
                    if (tid == 0) {
                        int cum = 0;
                        for (int d = 255; d >= 0; d--) {
                            if (cum + (int)hist[d] >= remain) {
                                prefix |= (unsigned long long)d << shift;
                                remain -= cum;
                                break;
                            }
                            cum += hist[d];
                        }
                        sh_prefix = prefix;
                        sh_remain = remain;
                        sh_count = 0;
                    }
                    __syncthreads();
                    prefix = sh_prefix;
                    remain = sh_remain;
                    mask |= 255ull << shift;
                }
                // The k keys >= the k-th, in any order; each one's rank is how many are larger.
                for (int i = tid; i < V; i += SAMPLE_THREADS) {
                    const unsigned long long key = topk_key(p[i], i);
                    if (key >= prefix) cand[atomicAdd(&sh_count, 1)] = key;
                }
                __syncthreads();
                for (int c = tid; c < k; c += SAMPLE_THREADS) {
                    const unsigned long long key = cand[c];
                    int rank = 0;
                    for (int j = 0; j < k; j++) rank += cand[j] > key;
                    by_rank[rank] = 0xFFFF - (int)(key & 0xFFFF);
                    const float r = __fdiv_rn(__uint_as_float((unsigned)(key >> 16)), q[rank]);
                    if (isnan(r)) { if (rank == 0) sh_nan0 = 1; continue; }
                    Best cb = {r, rank, 1};
                    if (better(cb, b)) b = cb;
                }
                b = block_best(b, red);
                token = by_rank[sh_nan0 ? 0 : b.pos];
            }
        }
    }
    if (tid == 0) { tokens[o] = (unsigned)token; flags[o] = 0; next[row] = (unsigned)token + 1; }
}

#define SAMPLE_KERNEL(NAME, T)                                                                                    \
    extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) NAME(                                           \
        const T* logits, int V, const float* temps, const float* topks, const float* noise, int noise_stride,     \
        float* scratch, unsigned* tokens, unsigned* flags, int out_stride, int col, unsigned* next) {             \
        sample_row<T>(logits, V, temps, topks, noise, noise_stride, scratch, tokens, flags, out_stride, col, next); \
    }
SAMPLE_KERNEL(sample_tokens_f32, float)
SAMPLE_KERNEL(sample_tokens_bf16, __nv_bfloat16)

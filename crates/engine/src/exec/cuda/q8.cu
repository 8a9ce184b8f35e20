// moshi-rs CUDA kernels for 8-bit weights (issue 17): y = x · Wᵀ with W in Q8_0 values (a scale
// per block of 32 along a row), re-packed at load into two aligned arrays (exec/quant.rs):
//   qs [N, K] int8, row-major (K a multiple of 32, so every row starts 16-byte aligned)
//   d  [N, K/32] f16: the scale of each block of 32 along a row
// and activations x [M, K] in bf16 or f32. The products are exact in f32 (an f16 scale times an
// int8 is exact, times a bf16 value too) and accumulate in f32; only the output is rounded to x's
// dtype. Unlike Candle's MMVQ, the activations are not quantized.
//
// - q8_matvec_{bf16,f32}_m{1..8}: M ≤ 8 rows (batch-1 decode, the depformer): one pass over the
//   weight bytes for all M rows (the host launches it per 8 rows up to 16). A block of Q8_THREADS threads owns R consecutive output rows
//   (4; 2 for M = 2, `q8_matvec_r2_*_m2`: measured faster there, slower at 4 and 8 rows);
//   each thread reads 16 weight bytes per row (one 16-byte load) at k = 16·tid, 16·(tid + T), …,
//   multiplies them with the M activation rows, and the block reduces in shared memory.
// - q8_dequantize_{bf16,f32}: W as floats (for M > 16, where a GEMM on the dequantized weight
//   takes over; exec/quant.rs).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define Q8_THREADS 128

template <typename T> struct X16;
template <> struct X16<__nv_bfloat16> {
    __device__ static __forceinline__ void load(const __nv_bfloat16* p, float* f) {
        const uint4* u = reinterpret_cast<const uint4*>(p);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint4 v = u[h];
            const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float2 x = __bfloat1622float2(b[i]);
                f[8 * h + 2 * i] = x.x;
                f[8 * h + 2 * i + 1] = x.y;
            }
        }
    }
    __device__ static __forceinline__ __nv_bfloat16 out(float v) { return __float2bfloat16(v); }
};
template <> struct X16<float> {
    __device__ static __forceinline__ void load(const float* p, float* f) {
        const float4* u = reinterpret_cast<const float4*>(p);
#pragma unroll
        for (int h = 0; h < 4; h++) {
            const float4 v = u[h];
            f[4 * h] = v.x;
            f[4 * h + 1] = v.y;
            f[4 * h + 2] = v.z;
            f[4 * h + 3] = v.w;
        }
    }
    __device__ static __forceinline__ float out(float v) { return v; }
};

// 16 int8 weights of one 16-byte load, widened to f32 without the int → float converter (a
// quarter-rate unit): each byte, made unsigned (u = q + 128), is placed by one byte permute into
// the low bits of the float 2²³ (bits 0x4B000000 | u, the float 2²³ + u exactly), and one
// subtraction of 2²³ + 128 leaves q, exactly.
__device__ __forceinline__ void widen16(const uint4 u, float* w) {
    const uint32_t v[4] = {u.x ^ 0x80808080u, u.y ^ 0x80808080u, u.z ^ 0x80808080u, u.w ^ 0x80808080u};
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int b = 0; b < 4; b++) w[4 * j + b] = __int_as_float(__byte_perm(v[j], 0x4B000000u, 0x7440 + b)) - 8388736.f;
}

template <typename TX, int M, int Q8_R>
__device__ void q8_matvec(const int8_t* __restrict__ qs, const __half* __restrict__ d, const TX* __restrict__ x,
                          TX* __restrict__ y, int N, int K) {
    __shared__ float red[Q8_THREADS / 32][M * Q8_R];
    const int n0 = blockIdx.x * Q8_R;
    const int nb = K / 32;
    float acc[M][Q8_R];
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int r = 0; r < Q8_R; r++) acc[m][r] = 0.f;

    for (int k = threadIdx.x * 16; k < K; k += Q8_THREADS * 16) {
        uint4 raw[Q8_R];
        float s[Q8_R];
#pragma unroll
        for (int r = 0; r < Q8_R; r++) {
            const int n = min(n0 + r, N - 1);  // rows past N repeat the last one; never written
            raw[r] = __ldg(reinterpret_cast<const uint4*>(qs + (size_t)n * K + k));
            s[r] = __half2float(d[(size_t)n * nb + k / 32]);
        }
        // The weights widened once, then used by every activation row.
        float w[Q8_R][16];
#pragma unroll
        for (int r = 0; r < Q8_R; r++) widen16(raw[r], w[r]);
#pragma unroll
        for (int m = 0; m < M; m++) {
            float xf[16];
            X16<TX>::load(x + (size_t)m * K + k, xf);
#pragma unroll
            for (int r = 0; r < Q8_R; r++) {
                float dot = 0.f;
#pragma unroll
                for (int i = 0; i < 16; i++) dot = fmaf(w[r][i], xf[i], dot);
                acc[m][r] = fmaf(s[r], dot, acc[m][r]);
            }
        }
    }

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int r = 0; r < Q8_R; r++) {
            float v = acc[m][r];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) red[warp][m * Q8_R + r] = v;
        }
    __syncthreads();
    for (int i = threadIdx.x; i < M * Q8_R; i += Q8_THREADS) {
        const int m = i / Q8_R, n = n0 + i % Q8_R;
        if (n < N) {
            float v = 0.f;
#pragma unroll
            for (int w = 0; w < Q8_THREADS / 32; w++) v += red[w][i];
            y[(size_t)m * N + n] = X16<TX>::out(v);
        }
    }
}

#define Q8_MATVEC(TX, NAME, M)                                                                                 \
    extern "C" __global__ void __launch_bounds__(Q8_THREADS) q8_matvec_##NAME##_m##M(                          \
        const int8_t* qs, const __half* d, const TX* x, TX* y, int N, int K) {                                 \
        q8_matvec<TX, M, 4>(qs, d, x, y, N, K);                                                                \
    }
#define Q8_MATVEC_ALL(TX, NAME)                                                                                \
    Q8_MATVEC(TX, NAME, 1) Q8_MATVEC(TX, NAME, 2) Q8_MATVEC(TX, NAME, 3) Q8_MATVEC(TX, NAME, 4)                 \
    Q8_MATVEC(TX, NAME, 5) Q8_MATVEC(TX, NAME, 6) Q8_MATVEC(TX, NAME, 7) Q8_MATVEC(TX, NAME, 8)                 \
    extern "C" __global__ void __launch_bounds__(Q8_THREADS) q8_matvec_r2_##NAME##_m2(                         \
        const int8_t* qs, const __half* d, const TX* x, TX* y, int N, int K) {                                 \
        q8_matvec<TX, 2, 2>(qs, d, x, y, N, K);                                                                \
    }
Q8_MATVEC_ALL(__nv_bfloat16, bf16)
Q8_MATVEC_ALL(float, f32)

// W [N, K] as floats: thread i writes the 16 values of qs[16 i .. 16 i + 16), in 16-byte stores.
template <typename TX> struct Store16;
template <> struct Store16<__nv_bfloat16> {
    __device__ static __forceinline__ void put(__nv_bfloat16* p, const float* v) {
        uint4 u[2];
        __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(u);
#pragma unroll
        for (int i = 0; i < 8; i++) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
        reinterpret_cast<uint4*>(p)[0] = u[0];
        reinterpret_cast<uint4*>(p)[1] = u[1];
    }
};
template <> struct Store16<float> {
    __device__ static __forceinline__ void put(float* p, const float* v) {
#pragma unroll
        for (int i = 0; i < 4; i++) reinterpret_cast<float4*>(p)[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
    }
};

template <typename TX>
__device__ void q8_dequantize(const int8_t* __restrict__ qs, const __half* __restrict__ d, TX* __restrict__ w,
                              long long n16) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n16) return;
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(qs) + i);
    const float s = __half2float(d[i / 2]);  // 2 loads of 16 per block of 32
    float v[16];
    widen16(u, v);
#pragma unroll
    for (int j = 0; j < 16; j++) v[j] *= s;
    Store16<TX>::put(w + i * 16, v);
}
extern "C" __global__ void q8_dequantize_bf16(const int8_t* qs, const __half* d, __nv_bfloat16* w, long long n16) {
    q8_dequantize<__nv_bfloat16>(qs, d, w, n16);
}
extern "C" __global__ void q8_dequantize_f32(const int8_t* qs, const __half* d, float* w, long long n16) {
    q8_dequantize<float>(qs, d, w, n16);
}

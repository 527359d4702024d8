// jax_flash3: helpers of the portable fallback kernels (fp32 SIMT, any head dim <= 256, % 8).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>

#include "kernels/params.h"

namespace jax_flash3::simple {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = 2;
constexpr int kRows = kWarps * kRowsPerWarp;  // rows of the "own" side per block
constexpr int kTile = 32;                     // rows of the streamed side per tile (one per lane)
constexpr int kMaxPerLane = 256 / 32;         // head-dim slots per lane

__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_fp8_e4m3 x) { return float(x); }
template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half(x);
}

__device__ __forceinline__ float WarpMax(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// The mask rule of params.h: query i sees key j.
__device__ __forceinline__ bool Visible(const MaskParams& m, int i, int j, int sq, int sk) {
  if (j < 0 || j >= sk) return false;
  const int diag = i + sk - sq;
  if (m.window_right >= 0 && j > diag + m.window_right) return false;
  if (m.window_left >= 0 && j < diag - m.window_left) return false;
  return true;
}

// Keys [*kmin, *kmax) that any query of [i0, i1) can see.
__host__ __device__ inline void KeyRange(const MaskParams& m, int i0, int i1, int sq, int sk,
                                         int* kmin, int* kmax) {
  int lo = 0, hi = sk;
  if (m.window_left >= 0) lo = max(0, i0 + sk - sq - m.window_left);
  if (m.window_right >= 0) hi = min(sk, (i1 - 1) + sk - sq + m.window_right + 1);
  *kmin = lo;
  *kmax = hi;
}

// Queries [*qmin, *qmax) that can see any key of [j0, j1).
__host__ __device__ inline void QueryRange(const MaskParams& m, int j0, int j1, int sq, int sk,
                                           int* qmin, int* qmax) {
  int lo = 0, hi = sq;
  if (m.window_right >= 0) lo = max(0, j0 - m.window_right - (sk - sq));
  if (m.window_left >= 0) hi = min(sq, (j1 - 1) + m.window_left - (sk - sq) + 1);
  *qmin = lo;
  *qmax = hi;
}

// Scaled, soft-capped logit; *tanh_out gets tanh(s/cap) (for the backward's 1 - tanh^2).
__device__ __forceinline__ float Logit(float dot, float scale, float softcap, float* tanh_out) {
  float s = dot * scale;
  if (softcap > 0.f) {
    const float t = tanhf(s / softcap);
    *tanh_out = t;
    return softcap * t;
  }
  *tanh_out = 0.f;
  return s;
}

}  // namespace jax_flash3::simple

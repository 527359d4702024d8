// jax_flash3: portable attention backward (fp32 SIMT), the fallback behind run_bwd.
//
// Three kernels, no atomics (so it is deterministic by construction):
//   1. delta = rowsum(dO * O) - dlse                 (one warp per query row)
//   2. dQ: blocks over query rows, keys streamed     (the forward's structure)
//   3. dK/dV: blocks over key rows, the queries of every head of the GQA group streamed
#include "kernels/kernels.h"
#include "kernels/simple/common.cuh"

namespace jax_flash3 {
namespace simple {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads) DeltaKernel(BwdParams p, float* delta) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_id = int64_t(blockIdx.x) * kWarps + warp;  // over (b, h, i)
  const int64_t rows = int64_t(p.batch) * p.heads_q * p.seqlen_q;
  if (row_id >= rows) return;
  const int i = row_id % p.seqlen_q;
  const int h = (row_id / p.seqlen_q) % p.heads_q;
  const int b = row_id / (int64_t(p.seqlen_q) * p.heads_q);
  const int64_t off = b * p.o_batch_stride + h * p.o_head_stride + i * p.o_row_stride;
  const T* o = static_cast<const T*>(p.out) + off;
  const T* d_o = static_cast<const T*>(p.dout) + off;
  float sum = 0.f;
  for (int d = lane; d < p.head_dim_v; d += 32) sum += ToFloat(o[d]) * ToFloat(d_o[d]);
  sum = WarpSum(sum);
  if (lane == 0) delta[row_id] = sum - p.dlse[row_id];
}

// P and dS of one (query row, key) pair; dS already carries softmax_scale.
struct Grad {
  float p, ds;
};

__device__ __forceinline__ Grad PairGrad(const BwdParams& p, float qk, float dp, float lse,
                                         float delta, bool visible) {
  float t;
  const float s = Logit(qk, p.softmax_scale, p.mask.softcap, &t);
  // lse == -inf: the row saw nothing, so every P of it is 0.
  const float prob = (visible && lse != -INFINITY) ? __expf(s - lse) : 0.f;
  float ds = prob * (dp - delta);
  if (p.mask.softcap > 0.f) ds *= 1.f - t * t;
  return {prob, ds * p.softmax_scale};
}

template <typename T>
__global__ void __launch_bounds__(kThreads) DqKernel(BwdParams p, const float* delta_all) {
  extern __shared__ float smem[];
  const int D = p.head_dim, Dv = p.head_dim_v, ldk = D + 1, ldv = Dv + 1;
  const int sq = p.seqlen_q, sk = p.seqlen_k;
  const int m0 = blockIdx.x * kRows, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (p.heads_q / p.heads_k);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
  const T* d_o = static_cast<const T*>(p.dout) + b * p.o_batch_stride + h * p.o_head_stride;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;
  T* dq = static_cast<T*>(p.dq) + b * p.q_batch_stride + h * p.q_head_stride;
  const int64_t stat = (int64_t(b) * p.heads_q + h) * sq;

  float* sQ = smem;                // [kRows][D]
  float* sdO = sQ + kRows * D;     // [kRows][Dv]
  float* sK = sdO + kRows * Dv;    // [kTile][D + 1]
  float* sV = sK + kTile * ldk;    // [kTile][Dv + 1]

  for (int idx = tid; idx < kRows * D; idx += kThreads) {
    const int r = idx / D, d = idx % D, row = m0 + r;
    sQ[idx] = row < sq ? ToFloat(q[row * p.q_row_stride + d]) : 0.f;
  }
  for (int idx = tid; idx < kRows * Dv; idx += kThreads) {
    const int r = idx / Dv, d = idx % Dv, row = m0 + r;
    sdO[idx] = row < sq ? ToFloat(d_o[row * p.o_row_stride + d]) : 0.f;
  }
  float lse[kRowsPerWarp], delta[kRowsPerWarp], acc[kRowsPerWarp][kMaxPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = m0 + warp * kRowsPerWarp + r;
    lse[r] = row < sq ? p.lse[stat + row] : -INFINITY;
    delta[r] = row < sq ? delta_all[stat + row] : 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) acc[r][i] = 0.f;
  }

  int kmin, kmax;
  KeyRange(p.mask, m0, min(m0 + kRows, sq), sq, sk, &kmin, &kmax);
  for (int n0 = kmin; n0 < kmax; n0 += kTile) {
    __syncthreads();
    for (int idx = tid; idx < kTile * D; idx += kThreads) {
      const int r = idx / D, d = idx % D, j = n0 + r;
      sK[r * ldk + d] = j < sk ? ToFloat(k[j * p.k_row_stride + d]) : 0.f;
    }
    for (int idx = tid; idx < kTile * Dv; idx += kThreads) {
      const int r = idx / Dv, d = idx % Dv, j = n0 + r;
      sV[r * ldv + d] = j < sk ? ToFloat(v[j * p.v_row_stride + d]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int local = warp * kRowsPerWarp + r, row = m0 + local;
      if (row >= sq) continue;  // warp-uniform
      float qk = 0.f, dp = 0.f;
      for (int d = 0; d < D; ++d) qk += sQ[local * D + d] * sK[lane * ldk + d];
      for (int d = 0; d < Dv; ++d) dp += sdO[local * Dv + d] * sV[lane * ldv + d];
      const Grad g = PairGrad(p, qk, dp, lse[r], delta[r], Visible(p.mask, row, n0 + lane, sq, sk));
      for (int jj = 0; jj < kTile; ++jj) {
        const float ds = __shfl_sync(0xffffffffu, g.ds, jj);
#pragma unroll
        for (int i = 0; i < kMaxPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < D) acc[r][i] += ds * sK[jj * ldk + d];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = m0 + warp * kRowsPerWarp + r;
    if (row >= sq) continue;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D) dq[row * p.q_row_stride + d] = FromFloat<T>(acc[r][i]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) DkvKernel(BwdParams p, const float* delta_all) {
  extern __shared__ float smem[];
  const int D = p.head_dim, Dv = p.head_dim_v, ldq = D + 1, ldo = Dv + 1;
  const int sq = p.seqlen_q, sk = p.seqlen_k;
  const int n0 = blockIdx.x * kRows, hk = blockIdx.y, b = blockIdx.z;
  const int group = p.heads_q / p.heads_k;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;
  T* dk = static_cast<T*>(p.dk) + b * p.k_batch_stride + hk * p.k_head_stride;
  T* dv = static_cast<T*>(p.dv) + b * p.v_batch_stride + hk * p.v_head_stride;

  float* sK = smem;                 // [kRows][D]
  float* sV = sK + kRows * D;       // [kRows][Dv]
  float* sQ = sV + kRows * Dv;      // [kTile][D + 1]
  float* sdO = sQ + kTile * ldq;    // [kTile][Dv + 1]
  float* sLse = sdO + kTile * ldo;  // [kTile]
  float* sDelta = sLse + kTile;     // [kTile]

  for (int idx = tid; idx < kRows * D; idx += kThreads) {
    const int r = idx / D, d = idx % D, j = n0 + r;
    sK[idx] = j < sk ? ToFloat(k[j * p.k_row_stride + d]) : 0.f;
  }
  for (int idx = tid; idx < kRows * Dv; idx += kThreads) {
    const int r = idx / Dv, d = idx % Dv, j = n0 + r;
    sV[idx] = j < sk ? ToFloat(v[j * p.v_row_stride + d]) : 0.f;
  }
  float acc_k[kRowsPerWarp][kMaxPerLane], acc_v[kRowsPerWarp][kMaxPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) acc_k[r][i] = acc_v[r][i] = 0.f;
  }

  int qmin, qmax;
  QueryRange(p.mask, n0, min(n0 + kRows, sk), sq, sk, &qmin, &qmax);
  for (int g = 0; g < group; ++g) {
    const int h = hk * group + g;
    const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
    const T* d_o = static_cast<const T*>(p.dout) + b * p.o_batch_stride + h * p.o_head_stride;
    const int64_t stat = (int64_t(b) * p.heads_q + h) * sq;
    for (int m0 = qmin; m0 < qmax; m0 += kTile) {
      __syncthreads();
      for (int idx = tid; idx < kTile * D; idx += kThreads) {
        const int r = idx / D, d = idx % D, i = m0 + r;
        sQ[r * ldq + d] = i < sq ? ToFloat(q[i * p.q_row_stride + d]) : 0.f;
      }
      for (int idx = tid; idx < kTile * Dv; idx += kThreads) {
        const int r = idx / Dv, d = idx % Dv, i = m0 + r;
        sdO[r * ldo + d] = i < sq ? ToFloat(d_o[i * p.o_row_stride + d]) : 0.f;
      }
      if (tid < kTile) {
        const int i = m0 + tid;
        sLse[tid] = i < sq ? p.lse[stat + i] : -INFINITY;
        sDelta[tid] = i < sq ? delta_all[stat + i] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int local = warp * kRowsPerWarp + r, j = n0 + local;
        if (j >= sk) continue;  // warp-uniform
        const int i = m0 + lane;
        float qk = 0.f, dp = 0.f;
        for (int d = 0; d < D; ++d) qk += sQ[lane * ldq + d] * sK[local * D + d];
        for (int d = 0; d < Dv; ++d) dp += sdO[lane * ldo + d] * sV[local * Dv + d];
        const Grad gr =
            PairGrad(p, qk, dp, sLse[lane], sDelta[lane], i < sq && Visible(p.mask, i, j, sq, sk));
        for (int ii = 0; ii < kTile; ++ii) {
          const float pi = __shfl_sync(0xffffffffu, gr.p, ii);
          const float dsi = __shfl_sync(0xffffffffu, gr.ds, ii);
#pragma unroll
          for (int c = 0; c < kMaxPerLane; ++c) {
            const int d = lane + 32 * c;
            if (d < Dv) acc_v[r][c] += pi * sdO[ii * ldo + d];
            if (d < D) acc_k[r][c] += dsi * sQ[ii * ldq + d];
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int j = n0 + warp * kRowsPerWarp + r;
    if (j >= sk) continue;
#pragma unroll
    for (int c = 0; c < kMaxPerLane; ++c) {
      const int d = lane + 32 * c;
      if (d < D) dk[j * p.k_row_stride + d] = FromFloat<T>(acc_k[r][c]);
      if (d < Dv) dv[j * p.v_row_stride + d] = FromFloat<T>(acc_v[r][c]);
    }
  }
}

template <typename T>
cudaError_t Launch(const BwdParams& p, cudaStream_t stream) {
  float* delta = static_cast<float*>(p.workspace);
  const int64_t rows = int64_t(p.batch) * p.heads_q * p.seqlen_q;
  DeltaKernel<T><<<(rows + kWarps - 1) / kWarps, kThreads, 0, stream>>>(p, delta);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  const int D = p.head_dim, Dv = p.head_dim_v;
  const size_t smem_dq = sizeof(float) * (kRows * (D + Dv) + kTile * (D + 1 + Dv + 1));
  err = cudaFuncSetAttribute(DqKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_dq));
  if (err != cudaSuccess) return err;
  DqKernel<T><<<dim3((p.seqlen_q + kRows - 1) / kRows, p.heads_q, p.batch), kThreads, smem_dq,
                stream>>>(p, delta);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  const size_t smem_dkv = sizeof(float) * (kRows * (D + Dv) + kTile * (D + 1 + Dv + 1) + 2 * kTile);
  err = cudaFuncSetAttribute(DkvKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(smem_dkv));
  if (err != cudaSuccess) return err;
  DkvKernel<T><<<dim3((p.seqlen_k + kRows - 1) / kRows, p.heads_k, p.batch), kThreads, smem_dkv,
                 stream>>>(p, delta);
  return cudaGetLastError();
}

}  // namespace
}  // namespace simple

size_t bwd_simple_workspace_bytes(const BwdParams& p) {
  return sizeof(float) * size_t(p.batch) * p.heads_q * p.seqlen_q;
}

cudaError_t run_bwd_simple(const BwdParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kBF16: return simple::Launch<__nv_bfloat16>(p, stream);
    case DType::kFP16: return simple::Launch<__half>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace jax_flash3

// jax_flash3: portable attention forward (fp32 SIMT online softmax). The fallback for
// configurations the Hopper kernels do not cover; correct for every mask, GQA ratio and length.
//
// Block = 8 warps over 16 query rows of one (batch, head); each warp owns 2 rows. Keys stream in
// tiles of 32, one key per lane for the logits; each lane owns head-dim slots lane + 32*i of the
// output accumulator.
// FP8 (e4m3 in, bfloat16 out): the same kernel with the block descales applied on load.
#include "kernels/kernels.h"
#include "kernels/simple/common.cuh"

namespace jax_flash3 {
namespace simple {
namespace {

// TIn: q/k/v element, TOut: out element. kFp8: multiply by p's descales while loading.
template <typename TIn, typename TOut, bool kFp8>
__global__ void __launch_bounds__(kThreads) FwdKernel(Fp8FwdParams p) {
  using T = TIn;
  extern __shared__ float smem[];
  const int D = p.head_dim, Dv = p.head_dim_v, ldk = D + 1;
  const int sq = p.seqlen_q, sk = p.seqlen_k;
  const int m0 = blockIdx.x * kRows, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (p.heads_q / p.heads_k);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;
  TOut* out = static_cast<TOut*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride;
  const int q_blocks = (sq + kFp8ScaleBlock - 1) / kFp8ScaleBlock;
  const int k_blocks = (sk + kFp8ScaleBlock - 1) / kFp8ScaleBlock;
  const float* q_descale = kFp8 ? p.q_descale + (int64_t(b) * p.heads_q + h) * q_blocks : nullptr;
  const float* k_descale = kFp8 ? p.k_descale + (int64_t(b) * p.heads_k + hk) * k_blocks : nullptr;
  const float v_descale = kFp8 ? p.v_descale[int64_t(b) * p.heads_k + hk] : 1.f;
  float* lse = p.lse + (int64_t(b) * p.heads_q + h) * sq;

  float* sQ = smem;               // [kRows][D]
  float* sK = sQ + kRows * D;     // [kTile][D + 1] (odd stride: lanes hit distinct banks)
  float* sV = sK + kTile * ldk;   // [kTile][Dv]

  for (int idx = tid; idx < kRows * D; idx += kThreads) {
    const int r = idx / D, d = idx % D, row = m0 + r;
    float x = row < sq ? ToFloat(q[row * p.q_row_stride + d]) : 0.f;
    if (kFp8 && row < sq) x *= q_descale[row / kFp8ScaleBlock];
    sQ[idx] = x;
  }

  float acc[kRowsPerWarp][kMaxPerLane];
  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) acc[r][i] = 0.f;
  }

  int kmin, kmax;
  KeyRange(p.mask, m0, min(m0 + kRows, sq), sq, sk, &kmin, &kmax);
  for (int n0 = kmin; n0 < kmax; n0 += kTile) {
    __syncthreads();
    for (int idx = tid; idx < kTile * D; idx += kThreads) {
      const int r = idx / D, d = idx % D, j = n0 + r;
      float x = j < sk ? ToFloat(k[j * p.k_row_stride + d]) : 0.f;
      if (kFp8 && j < sk) x *= k_descale[j / kFp8ScaleBlock];
      sK[r * ldk + d] = x;
    }
    for (int idx = tid; idx < kTile * Dv; idx += kThreads) {
      const int r = idx / Dv, d = idx % Dv, j = n0 + r;
      sV[idx] = j < sk ? ToFloat(v[j * p.v_row_stride + d]) * v_descale : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int local = warp * kRowsPerWarp + r, row = m0 + local;
      if (row >= sq) continue;  // warp-uniform
      const float* qrow = sQ + local * D;
      const float* krow = sK + lane * ldk;
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot += qrow[d] * krow[d];
      float t;
      float s = Logit(dot, p.softmax_scale, p.mask.softcap, &t);
      if (!Visible(p.mask, row, n0 + lane, sq, sk)) s = -INFINITY;
      const float m_new = fmaxf(row_max[r], WarpMax(s));
      const float m_safe = m_new == -INFINITY ? 0.f : m_new;
      const float prob = __expf(s - m_safe);
      const float alpha = __expf(row_max[r] - m_safe);
      row_sum[r] = row_sum[r] * alpha + WarpSum(prob);
      row_max[r] = m_new;
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i) acc[r][i] *= alpha;
      for (int jj = 0; jj < kTile; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, prob, jj);
#pragma unroll
        for (int i = 0; i < kMaxPerLane; ++i) {
          const int d = lane + 32 * i;
          if (d < Dv) acc[r][i] += pj * sV[jj * Dv + d];
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = m0 + warp * kRowsPerWarp + r;
    if (row >= sq) continue;
    const bool seen = row_sum[r] != 0.f;  // (a NaN sum, from NaN or inf inputs, stays NaN)
    const float inv = seen ? 1.f / row_sum[r] : 0.f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < Dv) out[row * p.o_row_stride + d] = FromFloat<TOut>(acc[r][i] * inv);
    }
    if (lane == 0) lse[row] = seen ? row_max[r] + logf(row_sum[r]) : -INFINITY;
  }
}

template <typename TIn, typename TOut, bool kFp8>
cudaError_t Launch(const Fp8FwdParams& p, cudaStream_t stream) {
  auto kernel = FwdKernel<TIn, TOut, kFp8>;
  const size_t smem =
      sizeof(float) * (kRows * p.head_dim + kTile * (p.head_dim + 1) + kTile * p.head_dim_v);
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  dim3 grid((p.seqlen_q + kRows - 1) / kRows, p.heads_q, p.batch);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace
}  // namespace simple

size_t fwd_simple_workspace_bytes(const FwdParams&) { return 0; }

cudaError_t run_fwd_simple(const FwdParams& p, cudaStream_t stream) {
  Fp8FwdParams p8;
  static_cast<FwdParams&>(p8) = p;
  switch (p.dtype) {
    case DType::kBF16: return simple::Launch<__nv_bfloat16, __nv_bfloat16, false>(p8, stream);
    case DType::kFP16: return simple::Launch<__half, __half, false>(p8, stream);
    default: return cudaErrorInvalidValue;
  }
}

size_t fwd_fp8_simple_workspace_bytes(const Fp8FwdParams&) { return 0; }

cudaError_t run_fwd_fp8_simple(const Fp8FwdParams& p, cudaStream_t stream) {
  if (p.dtype != DType::kFP8E4M3 || p.q_descale == nullptr || p.k_descale == nullptr ||
      p.v_descale == nullptr)
    return cudaErrorInvalidValue;
  return simple::Launch<__nv_fp8_e4m3, __nv_bfloat16, true>(p, stream);
}

}  // namespace jax_flash3

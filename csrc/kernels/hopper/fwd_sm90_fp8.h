// jax_flash3: Hopper FP8 forward, the seam between the dispatcher (fwd_sm90_fp8.cu) and the
// per-head-dim instantiation files (csrc/kernels/instantiations/fwd_sm90_fp8_hdim*.cu).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/params.h"

namespace jax_flash3::sm90 {

// Native head dims of the FP8 kernel; a smaller D (multiple of 16: TMA needs 16-byte rows of
// e4m3) runs in the next one, TMA zero-filling the missing columns.
inline int fwd_fp8_native_head_dim(int d) {
  if (d <= 64) return 64;
  if (d <= 128) return 128;
  if (d <= 256) return 256;
  return 0;
}

// Every FP8 tile is kFp8ScaleBlock (128) keys wide, so a K block has exactly one k_descale.
constexpr int kFp8BlockN = kFp8ScaleBlock;

// V reaches the PV GEMM K-major (Vt: d x keys) one of two ways (see fwd_sm90_fp8_kernel.h):
//   * in the kernel: the producer warpgroup transposes each TMA-loaded V tile in shared memory;
//   * by a pre-pass: a small bandwidth-bound kernel writes Vt into the workspace first, and the
//     attention kernel TMA-loads it.
// The in-kernel transpose costs producer issue slots and shared-memory bandwidth per (query
// block, key block) tile; the pre-pass costs one read and one write of V per call. So the
// transpose runs in the kernel when few queries share each key (the pre-pass would be a large
// share of the call), and the pre-pass runs otherwise. Crossovers measured on an H100
// (benchmarks/RESULTS.md, "FP8 in-kernel V transpose"): in the kernel while the queries per KV
// head (Sq times the GQA group) are at most 2048 (d <= 128) or 512 (d 256); 1024 at d 128
// without a mask since its pre-pass kernel has 3 consumer warpgroups (H200, "FP8 v5").
// JAX_FLASH3_FP8_V_TRANSPOSE=kernel|prepass overrides the choice (benchmarks); unset or auto:
// the rule above.
bool fwd_fp8_transpose_in_kernel(const Fp8FwdParams& p);

// Workspace: [0, 16) the dynamic scheduler's tile counter; with the pre-pass, Vt at kFp8VtOffset:
// e4m3 (B, Hk, Dv, Sk_pad), Sk_pad = Sk rounded up to kFp8BlockN, key order permuted within each
// 16-key group (fp8_key_of_slot) so P's accumulator registers are directly the PV A fragment.
constexpr size_t kFp8VtOffset = 256;

inline int64_t fwd_fp8_seqlen_k_padded(int seqlen_k) {
  return (int64_t(seqlen_k) + kFp8BlockN - 1) / kFp8BlockN * kFp8BlockN;
}

// The key stored at K-slot `slot` of a 16-wide group of a Vt row (in shared memory, and in the
// pre-pass's workspace copy). WGMMA's f32 accumulator gives thread quad q the columns
// {2q, 2q+1, 2q+8, 2q+9} of each 16 columns; the e4m3 A operand expects K indices {4q .. 4q+3}.
// Storing key 2q + (i & 1) + 8 * (i >> 1) at slot 4q + i makes them agree.
__host__ __device__ inline int fp8_key_of_slot(int slot) {
  const int g = slot & ~15, k = slot & 15;
  return g + 2 * (k >> 2) + (k & 1) + 8 * ((k >> 1) & 1);
}

// Launches the attention kernel; without vt_in_kernel, Vt must already be in the workspace.
template <int kHeadDim>
cudaError_t run_fwd_sm90_fp8_hdim(const Fp8FwdParams& p, bool vt_in_kernel, cudaStream_t stream);

}  // namespace jax_flash3::sm90

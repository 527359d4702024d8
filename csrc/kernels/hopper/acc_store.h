// jax_flash3 Hopper kernels: an fp32 WGMMA accumulator to 16-bit pairs and into shared memory
// (stmatrix), the first half of a registers -> smem -> TMA store epilogue. Shared by the forward
// (O) and the backward (dK, dV).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/tensor.hpp>
#include <cute/arch/copy_sm90.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cutlass/numeric_types.h>

namespace jax_flash3 {

template <typename Element>
CUTE_DEVICE uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (cute::is_same_v<Element, cutlass::bfloat16_t>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    r = reinterpret_cast<uint32_t&>(v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    r = reinterpret_cast<uint32_t&>(v);
  }
  return r;
}

// acc (the C fragment of `mma` for thread `tid`) times `scale`, rounded to OutElement, into the
// smem tile `s` (the C tile's shape, any GMMA-compatible swizzle) through stmatrix.
template <class OutElement, class TiledMma, class TAcc, class TS>
CUTE_DEVICE void stage_acc_to_smem(TiledMma const& mma, TAcc const& acc, TS& s, int tid, float scale = 1.f) {
  using namespace cute;
  Tensor r = make_tensor_like<OutElement>(acc);
  Tensor r32 = recast<uint32_t>(r);
  CUTE_UNROLL
  for (int i = 0; i < size(r32); ++i) r32(i) = pack2<OutElement>(acc(2 * i) * scale, acc(2 * i + 1) * scale);
  auto smem_copy = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, OutElement>{}, mma);
  auto thr_copy = smem_copy.get_thread_slice(tid);
  copy(smem_copy, thr_copy.retile_S(r), thr_copy.partition_D(s));
}

}  // namespace jax_flash3

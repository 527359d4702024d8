// jax_flash3: Hopper forward, the seam between the dispatcher (fwd_sm90.cu) and the per-(dtype,
// head dim) instantiation files (csrc/kernels/instantiations/fwd_sm90_*.cu). The dispatcher only
// needs this declaration, so it compiles without the CuTe kernel headers.
#pragma once

#include <cuda_runtime.h>

#include "kernels/params.h"

namespace jax_flash3::sm90 {

// Native head dims: the kernel is compiled for these; a smaller D that is a multiple of 8 runs in
// the next one (TMA zero-fills the missing columns on load and clips them on store).
inline int fwd_native_head_dim(int d) {
  if (d <= 64) return 64;
  if (d <= 96) return 96;
  if (d <= 128) return 128;
  if (d <= 192) return 192;
  if (d <= 256) return 256;
  return 0;
}

// Element is cutlass::bfloat16_t or cutlass::half_t; defined in fwd_sm90_kernel.h and explicitly
// instantiated once per instantiation file.
template <typename Element, int kHeadDim>
cudaError_t run_fwd_sm90_hdim(const FwdParams& p, cudaStream_t stream);

}  // namespace jax_flash3::sm90

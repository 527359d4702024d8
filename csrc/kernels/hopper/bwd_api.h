// jax_flash3 Hopper backward: the per-(dtype, head dim) entry points that the instantiation files
// (csrc/kernels/instantiations/bwd_sm90_<dtype>_hdim<D>.cu) define and bwd_sm90.cu dispatches to.
#pragma once

#include <cuda_runtime.h>

#include "../params.h"

namespace jax_flash3 {

template <DType kDType, int kHeadDim>
cudaError_t run_bwd_sm90_hdim(const BwdParams& p, cudaStream_t stream);

}  // namespace jax_flash3

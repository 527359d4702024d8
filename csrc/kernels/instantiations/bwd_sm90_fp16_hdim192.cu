// jax_flash3 Hopper backward instantiation: fp16, head dim 192 (serves D <= 192).
#include "kernels/hopper/bwd_api.h"
#include "kernels/hopper/bwd_kernel.h"

namespace jax_flash3 {

template <>
cudaError_t run_bwd_sm90_hdim<DType::kFP16, 192>(const BwdParams& p, cudaStream_t stream) {
  return bwd_sm90::launch_bwd<cutlass::half_t, 192>(p, stream);
}

}  // namespace jax_flash3

// jax_flash3 Hopper backward instantiation: bf16, head dim 128 (serves D <= 128).
#include "kernels/hopper/bwd_api.h"
#include "kernels/hopper/bwd_kernel.h"

namespace jax_flash3 {

template <>
cudaError_t run_bwd_sm90_hdim<DType::kBF16, 128>(const BwdParams& p, cudaStream_t stream) {
  return bwd_sm90::launch_bwd<cutlass::bfloat16_t, 128>(p, stream);
}

}  // namespace jax_flash3

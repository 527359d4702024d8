// jax_flash3: Hopper forward instantiation, bf16, head dim 64 (pruned from the build by
// -DJAX_FLASH3_DTYPES / -DJAX_FLASH3_HEAD_DIMS; CMake then leaves JAX_FLASH3_HAS_FWD_SM90_BF16_HDIM64 undefined).
#include "kernels/hopper/fwd_sm90_kernel.h"

namespace jax_flash3::sm90 {
template cudaError_t run_fwd_sm90_hdim<cutlass::bfloat16_t, 64>(const FwdParams&, cudaStream_t);
}  // namespace jax_flash3::sm90

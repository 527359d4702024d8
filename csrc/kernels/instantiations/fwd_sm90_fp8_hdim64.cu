// jax_flash3: Hopper FP8 (e4m3, bf16 out) forward instantiation, head dim 64 (pruned from the build
// by -DJAX_FLASH3_FP8_HEAD_DIMS; CMake then leaves JAX_FLASH3_HAS_FWD_SM90_FP8_HDIM64 undefined).
#include "kernels/hopper/fwd_sm90_fp8_kernel.h"

namespace jax_flash3::sm90 {
template cudaError_t run_fwd_sm90_fp8_hdim<64>(const Fp8FwdParams&, bool, const Fp8SplitPlan&,
                                                 size_t, cudaStream_t);
}  // namespace jax_flash3::sm90

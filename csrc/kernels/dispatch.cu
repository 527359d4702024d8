// jax_flash3: pick the kernel family for a call. The Hopper kernels live in files that a build
// may prune; their entry points are weak here so a pruned build still links and falls back.
#include <algorithm>

#include "kernels/kernels.h"

namespace jax_flash3 {

__attribute__((weak)) bool fwd_sm90_supported(const FwdParams&);
__attribute__((weak)) size_t fwd_sm90_workspace_bytes(const FwdParams&);
__attribute__((weak)) cudaError_t run_fwd_sm90(const FwdParams&, cudaStream_t);
__attribute__((weak)) bool fwd_sm90_fp8_supported(const Fp8FwdParams&);
__attribute__((weak)) size_t fwd_sm90_fp8_workspace_bytes(const Fp8FwdParams&);
__attribute__((weak)) cudaError_t run_fwd_sm90_fp8(const Fp8FwdParams&, cudaStream_t);
__attribute__((weak)) bool bwd_sm90_supported(const BwdParams&);
__attribute__((weak)) size_t bwd_sm90_workspace_bytes(const BwdParams&);
__attribute__((weak)) cudaError_t run_bwd_sm90(const BwdParams&, cudaStream_t);

namespace {

bool UseFwdSm90(const FwdParams& p) {
  return fwd_sm90_supported != nullptr && run_fwd_sm90 != nullptr && fwd_sm90_supported(p);
}

bool UseFwdSm90Fp8(const Fp8FwdParams& p) {
  return fwd_sm90_fp8_supported != nullptr && run_fwd_sm90_fp8 != nullptr &&
         fwd_sm90_fp8_supported(p);
}

bool UseBwdSm90(const BwdParams& p) {
  return bwd_sm90_supported != nullptr && run_bwd_sm90 != nullptr && bwd_sm90_supported(p);
}

}  // namespace

size_t fwd_workspace_bytes(const FwdParams& p) {
  size_t n = fwd_simple_workspace_bytes(p);
  if (UseFwdSm90(p) && fwd_sm90_workspace_bytes != nullptr) {
    n = std::max(n, fwd_sm90_workspace_bytes(p));
  }
  return n;
}

size_t fwd_fp8_workspace_bytes(const Fp8FwdParams& p) {
  size_t n = fwd_fp8_simple_workspace_bytes(p);
  if (UseFwdSm90Fp8(p) && fwd_sm90_fp8_workspace_bytes != nullptr) {
    n = std::max(n, fwd_sm90_fp8_workspace_bytes(p));
  }
  return n;
}

size_t bwd_workspace_bytes(const BwdParams& p) {
  size_t n = bwd_simple_workspace_bytes(p);
  if (UseBwdSm90(p) && bwd_sm90_workspace_bytes != nullptr) {
    n = std::max(n, bwd_sm90_workspace_bytes(p));
  }
  return n;
}

cudaError_t run_fwd(const FwdParams& p, cudaStream_t stream) {
  return UseFwdSm90(p) ? run_fwd_sm90(p, stream) : run_fwd_simple(p, stream);
}

cudaError_t run_fwd_fp8(const Fp8FwdParams& p, cudaStream_t stream) {
  return UseFwdSm90Fp8(p) ? run_fwd_sm90_fp8(p, stream) : run_fwd_fp8_simple(p, stream);
}

cudaError_t run_bwd(const BwdParams& p, cudaStream_t stream) {
  return UseBwdSm90(p) ? run_bwd_sm90(p, stream) : run_bwd_simple(p, stream);
}

}  // namespace jax_flash3

// jax_flash3: the kernel families behind run_fwd / run_bwd (csrc/kernels/dispatch.cu picks one).
#pragma once

#include "params.h"

namespace jax_flash3 {

// Portable path (plain CUDA, fp32 SIMT): any head dim <= 256 that is a multiple of 8, any mask.
// Slow; it is the fallback for configurations the Hopper kernels do not cover.
size_t fwd_simple_workspace_bytes(const FwdParams& p);
size_t bwd_simple_workspace_bytes(const BwdParams& p);
cudaError_t run_fwd_simple(const FwdParams& p, cudaStream_t stream);
cudaError_t run_bwd_simple(const BwdParams& p, cudaStream_t stream);
// FP8 inputs (descales applied on load), bfloat16 out.
size_t fwd_fp8_simple_workspace_bytes(const Fp8FwdParams& p);
cudaError_t run_fwd_fp8_simple(const Fp8FwdParams& p, cudaStream_t stream);

// Hopper path (sm_90a: TMA, WGMMA, warp specialization). *_supported is false when this build
// lacks the instantiation (pruned by a build option) or the config is outside what it handles.
bool fwd_sm90_supported(const FwdParams& p);
size_t fwd_sm90_workspace_bytes(const FwdParams& p);
cudaError_t run_fwd_sm90(const FwdParams& p, cudaStream_t stream);

// FP8 forward (e4m3 WGMMA); V transposed in the kernel or by a pre-pass into the workspace.
bool fwd_sm90_fp8_supported(const Fp8FwdParams& p);
size_t fwd_sm90_fp8_workspace_bytes(const Fp8FwdParams& p);
cudaError_t run_fwd_sm90_fp8(const Fp8FwdParams& p, cudaStream_t stream);

bool bwd_sm90_supported(const BwdParams& p);
size_t bwd_sm90_workspace_bytes(const BwdParams& p);
cudaError_t run_bwd_sm90(const BwdParams& p, cudaStream_t stream);

}  // namespace jax_flash3

// jax_flash3: XLA FFI handlers for attention forward and backward (bound in csrc/jax_flash3.cc).
#pragma once

#include <cuda_runtime.h>

#include "xla/ffi/api/ffi.h"

namespace jax_flash3 {

namespace ffi = xla::ffi;

// q (..., Sq, Hq, D), k (..., Sk, Hk, D), v (..., Sk, Hk, Dv): leading dims fold into the batch
// (vmap adds them). out (..., Sq, Hq, Dv), lse f32 (..., Hq, Sq), workspace u8 scratch.
// sm_margin: SMs the persistent forward grid leaves idle, so a collective running beside it (ring
// attention's K/V transfer) gets SMs for its kernel at once instead of after the forward.
ffi::Error FwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   float softmax_scale, int32_t window_left, int32_t window_right, float softcap,
                   int32_t sm_margin, ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                   ffi::Result<ffi::Buffer<ffi::U8>> workspace);

// FP8: q/k/v float8_e4m3fn, q_descale f32 (..., Hq, ceil(Sq/128)), k_descale f32
// (..., Hk, ceil(Sk/128)), v_descale f32 (..., Hk); out bfloat16 (..., Sq, Hq, Dv), D == Dv.
ffi::Error FwdFp8Impl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                      ffi::Buffer<ffi::F32> q_descale, ffi::Buffer<ffi::F32> k_descale,
                      ffi::Buffer<ffi::F32> v_descale, bool exact_lse, float softmax_scale,
                      int32_t window_left, int32_t window_right, float softcap,
                      ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                      ffi::Result<ffi::Buffer<ffi::U8>> workspace);

ffi::Error BwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse, ffi::AnyBuffer dout,
                   ffi::Buffer<ffi::F32> dlse, bool deterministic, float softmax_scale,
                   int32_t window_left, int32_t window_right, float softcap,
                   ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                   ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::Buffer<ffi::U8>> workspace);

}  // namespace jax_flash3

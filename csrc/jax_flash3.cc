// jax_flash3: the binding. Exports the XLA FFI handler symbols (registered from Python by
// jax_flash3/_ffi.py via ctypes + jax.ffi.register_ffi_target) and the workspace-size queries.
// Plain C symbols, no Python ABI: one library serves every Python version.
#include <cstddef>
#include <cstdint>

#include "ffi/attention_ffi.h"
#include "kernels/params.h"

namespace ffi = xla::ffi;

#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_flash3_fwd, jax_flash3::FwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // q
                                  .Arg<ffi::AnyBuffer>()  // k
                                  .Arg<ffi::AnyBuffer>()  // v
                                  .Attr<float>("softmax_scale")
                                  .Attr<int32_t>("window_left")
                                  .Attr<int32_t>("window_right")
                                  .Attr<float>("softcap")
                                  .Attr<int32_t>("sm_margin")  // SMs the persistent grid leaves free
                                  .Ret<ffi::AnyBuffer>()           // out
                                  .Ret<ffi::Buffer<ffi::F32>>()    // lse
                                  .Ret<ffi::Buffer<ffi::U8>>(),    // workspace
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_flash3_fwd_fp8, jax_flash3::FwdFp8Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()         // q (float8_e4m3fn)
                                  .Arg<ffi::AnyBuffer>()         // k (float8_e4m3fn)
                                  .Arg<ffi::AnyBuffer>()         // v (float8_e4m3fn)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q_descale (..., Hq, ceil(Sq/128))
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k_descale (..., Hk, ceil(Sk/128))
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v_descale (..., Hk)
                                  .Attr<bool>("exact_lse")  // false: row sums may be approximate
                                  .Attr<float>("softmax_scale")
                                  .Attr<int32_t>("window_left")
                                  .Attr<int32_t>("window_right")
                                  .Attr<float>("softcap")
                                  .Ret<ffi::AnyBuffer>()           // out (bfloat16)
                                  .Ret<ffi::Buffer<ffi::F32>>()    // lse
                                  .Ret<ffi::Buffer<ffi::U8>>(),    // workspace
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_flash3_bwd, jax_flash3::BwdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()         // q
                                  .Arg<ffi::AnyBuffer>()         // k
                                  .Arg<ffi::AnyBuffer>()         // v
                                  .Arg<ffi::AnyBuffer>()         // out
                                  .Arg<ffi::Buffer<ffi::F32>>()  // lse
                                  .Arg<ffi::AnyBuffer>()         // dout
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dlse
                                  .Attr<bool>("deterministic")
                                  .Attr<float>("softmax_scale")
                                  .Attr<int32_t>("window_left")
                                  .Attr<int32_t>("window_right")
                                  .Attr<float>("softcap")
                                  .Ret<ffi::AnyBuffer>()         // dq
                                  .Ret<ffi::AnyBuffer>()         // dk
                                  .Ret<ffi::AnyBuffer>()         // dv
                                  .Ret<ffi::Buffer<ffi::U8>>(),  // workspace
                              {ffi::Traits::kCmdBufferCompatible});

namespace {

jax_flash3::BwdParams ShapeOnlyParams(int b, int sq, int sk, int hq, int hk, int d, int dv,
                                      int window_left, int window_right, int dtype,
                                      int deterministic) {
  jax_flash3::BwdParams p;
  p.batch = b;
  p.seqlen_q = sq;
  p.seqlen_k = sk;
  p.heads_q = hq;
  p.heads_k = hk;
  p.head_dim = d;
  p.head_dim_v = dv;
  p.mask.window_left = window_left;
  p.mask.window_right = window_right;
  p.mask.causal = window_right == 0 && window_left < 0;
  p.dtype = static_cast<jax_flash3::DType>(dtype);
  p.deterministic = deterministic != 0;
  return p;
}

}  // namespace

extern "C" size_t jax_flash3_fwd_workspace_bytes(int b, int sq, int sk, int hq, int hk, int d,
                                                 int dv, int window_left, int window_right,
                                                 int dtype, int deterministic) {
  jax_flash3::BwdParams p =
      ShapeOnlyParams(b, sq, sk, hq, hk, d, dv, window_left, window_right, dtype, deterministic);
  return jax_flash3::fwd_workspace_bytes(p);
}

// The fp8 handler's dense strides matter here: whether the Hopper kernel (whose workspace holds
// its tile counter and, when V is transposed by a pre-pass, Vt) or the fallback runs depends on them.
extern "C" size_t jax_flash3_fwd_fp8_workspace_bytes(int b, int sq, int sk, int hq, int hk, int d,
                                                     int dv, int window_left, int window_right) {
  jax_flash3::Fp8FwdParams p;
  static_cast<jax_flash3::FwdParams&>(p) =
      ShapeOnlyParams(b, sq, sk, hq, hk, d, dv, window_left, window_right,
                      static_cast<int>(jax_flash3::DType::kFP8E4M3), 0);
  p.mask.window_left = window_left < 0 ? -1 : window_left;
  p.mask.window_right = window_right < 0 ? -1 : window_right;
  p.mask.causal = p.mask.window_right == 0 && p.mask.window_left < 0;
  p.q_head_stride = d;
  p.q_row_stride = int64_t(hq) * d;
  p.q_batch_stride = p.q_row_stride * sq;
  p.k_head_stride = d;
  p.k_row_stride = int64_t(hk) * d;
  p.k_batch_stride = p.k_row_stride * sk;
  p.v_head_stride = dv;
  p.v_row_stride = int64_t(hk) * dv;
  p.v_batch_stride = p.v_row_stride * sk;
  p.o_head_stride = dv;
  p.o_row_stride = int64_t(hq) * dv;
  p.o_batch_stride = p.o_row_stride * sq;
  return jax_flash3::fwd_fp8_workspace_bytes(p);
}

extern "C" size_t jax_flash3_bwd_workspace_bytes(int b, int sq, int sk, int hq, int hk, int d,
                                                 int dv, int window_left, int window_right,
                                                 int dtype, int deterministic) {
  return jax_flash3::bwd_workspace_bytes(
      ShapeOnlyParams(b, sq, sk, hq, hk, d, dv, window_left, window_right, dtype, deterministic));
}

#pragma GCC visibility pop

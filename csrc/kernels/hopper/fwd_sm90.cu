// jax_flash3: Hopper forward dispatch. Picks the (dtype, native head dim) instantiation; each one
// lives in its own file under csrc/kernels/instantiations/ and is present only when the build
// defines JAX_FLASH3_HAS_FWD_SM90_<DTYPE>_HDIM<D>.
#include <cstdint>
#include <type_traits>

#include <cutlass/bfloat16.h>
#include <cutlass/half.h>

#include "kernels/hopper/fwd_sm90.h"
#include "kernels/kernels.h"

namespace jax_flash3 {
namespace {

// Calls fn(Element tag, native head dim) for a compiled instantiation; false if none matches.
template <class Fn>
bool with_instantiation(const FwdParams& p, Fn&& fn) {
  const int d = sm90::fwd_native_head_dim(p.head_dim);
#define JF3_CASE(DT_ENUM, ELEM, D)                 \
  if (p.dtype == DType::DT_ENUM && d == D) {       \
    fn(static_cast<ELEM*>(nullptr), std::integral_constant<int, D>{}); \
    return true;                                   \
  }
#ifdef JAX_FLASH3_HAS_FWD_SM90_BF16_HDIM64
  JF3_CASE(kBF16, cutlass::bfloat16_t, 64)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_BF16_HDIM96
  JF3_CASE(kBF16, cutlass::bfloat16_t, 96)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_BF16_HDIM128
  JF3_CASE(kBF16, cutlass::bfloat16_t, 128)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_BF16_HDIM192
  JF3_CASE(kBF16, cutlass::bfloat16_t, 192)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_BF16_HDIM256
  JF3_CASE(kBF16, cutlass::bfloat16_t, 256)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_FP16_HDIM64
  JF3_CASE(kFP16, cutlass::half_t, 64)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_FP16_HDIM96
  JF3_CASE(kFP16, cutlass::half_t, 96)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_FP16_HDIM128
  JF3_CASE(kFP16, cutlass::half_t, 128)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_FP16_HDIM192
  JF3_CASE(kFP16, cutlass::half_t, 192)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_FP16_HDIM256
  JF3_CASE(kFP16, cutlass::half_t, 256)
#endif
#undef JF3_CASE
  (void)fn;
  return false;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

bool fwd_sm90_supported(const FwdParams& p) {
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16) return false;
  if (p.head_dim <= 0 || p.head_dim > 256 || p.head_dim % 8 != 0) return false;
  if (p.head_dim_v != p.head_dim) return false;
  if (p.batch < 1 || p.seqlen_q < 1 || p.seqlen_k < 1 || p.heads_q < 1 || p.heads_k < 1) return false;
  if (p.heads_q % p.heads_k != 0) return false;
  // TMA: 16-byte aligned base addresses and strides (8 elements of a 16-bit type).
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v) || !aligned16(p.out)) return false;
  const int64_t strides[] = {p.q_batch_stride, p.q_row_stride, p.q_head_stride,
                             p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                             p.v_batch_stride, p.v_row_stride, p.v_head_stride,
                             p.o_batch_stride, p.o_row_stride, p.o_head_stride};
  for (int64_t s : strides)
    if (s % 8 != 0 || s < 0 || s >= (int64_t(1) << 39)) return false;
  // The softcap path computes tanh(s * scale / cap) * cap; the handler passes cap > 0 or 0.
  if (p.mask.softcap < 0.f) return false;
  return with_instantiation(p, [](auto, auto) {});
}

// Every launch uses a zeroed int tile counter: the dynamic scheduler (longest-first for
// causal/local, index order otherwise; see fill_fwd_params).
size_t fwd_sm90_workspace_bytes(const FwdParams&) { return 16; }

cudaError_t run_fwd_sm90(const FwdParams& p, cudaStream_t stream) {
  if (!fwd_sm90_supported(p)) return cudaErrorNotSupported;
  cudaError_t err = cudaErrorNotSupported;
  with_instantiation(p, [&](auto elem_tag, auto d) {
    using Element = std::remove_pointer_t<decltype(elem_tag)>;
    err = sm90::run_fwd_sm90_hdim<Element, decltype(d)::value>(p, stream);
  });
  return err;
}

}  // namespace jax_flash3

// jax_flash3 Hopper backward: support check, workspace size and dispatch to the compiled
// (dtype, head dim) instantiations. The kernels live in bwd_kernel.h.
#include <algorithm>

#include "../kernels.h"
#include "bwd_api.h"
#include "bwd_tile.h"

namespace jax_flash3 {

namespace {

// Whether this build compiled the instantiation that serves (dtype, padded head dim).
bool bwd_sm90_compiled(DType dtype, int hd) {
  (void)hd;
#define JF3_CASE(DT, HD, MACRO) \
  if (dtype == DType::DT && hd == HD) return MACRO;
#ifdef JAX_FLASH3_HAS_BWD_SM90_BF16_HDIM64
  JF3_CASE(kBF16, 64, true)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_BF16_HDIM96
  JF3_CASE(kBF16, 96, true)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_BF16_HDIM128
  JF3_CASE(kBF16, 128, true)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_BF16_HDIM192
  JF3_CASE(kBF16, 192, true)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_BF16_HDIM256
  JF3_CASE(kBF16, 256, true)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_FP16_HDIM64
  JF3_CASE(kFP16, 64, true)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_FP16_HDIM96
  JF3_CASE(kFP16, 96, true)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_FP16_HDIM128
  JF3_CASE(kFP16, 128, true)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_FP16_HDIM192
  JF3_CASE(kFP16, 192, true)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_FP16_HDIM256
  JF3_CASE(kFP16, 256, true)
#endif
#undef JF3_CASE
  return false;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

bool bwd_sm90_supported(const BwdParams& p) {
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16) return false;
  if (p.head_dim != p.head_dim_v) return false;  // dK/dV tiles assume one head dim
  if (p.head_dim <= 0 || p.head_dim % 8 != 0) return false;
  const int hd = bwd_sm90::padded_head_dim(p.head_dim);
  if (hd < 0 || !bwd_sm90_compiled(p.dtype, hd)) return false;
  if (p.heads_k <= 0 || p.heads_q % p.heads_k != 0) return false;
  if (p.batch <= 0 || p.seqlen_q <= 0 || p.seqlen_k <= 0) return false;
  // Grid y/z carry the heads and the batch (at most 65535 each); larger runs the fallback.
  if (p.batch > 65535 || p.heads_q > 65535) return false;
  // 16-byte cp.async / vector loads: every row start must be 16-byte aligned.
  for (int64_t s : {p.q_batch_stride, p.q_row_stride, p.q_head_stride, p.k_batch_stride,
                    p.k_row_stride, p.k_head_stride, p.v_batch_stride, p.v_row_stride,
                    p.v_head_stride, p.o_batch_stride, p.o_row_stride, p.o_head_stride}) {
    if (s % 8 != 0) return false;
  }
  for (const void* ptr : {p.q, p.k, p.v, static_cast<const void*>(p.out), p.dout,
                          static_cast<const void*>(p.dq), static_cast<const void*>(p.dk),
                          static_cast<const void*>(p.dv)}) {
    if (ptr != nullptr && !aligned16(ptr)) return false;
  }
  return true;
}

size_t bwd_sm90_workspace_bytes(const BwdParams& p) {
  const int hd = bwd_sm90::padded_head_dim(p.head_dim);
  if (hd < 0) return 0;
  // Enough for either query-block height this head dim runs with: the size query from Python
  // (jax_flash3_bwd_workspace_bytes) does not see the softcap, which picks the height.
  size_t bytes = 0;
  for (bool softcap : {false, true}) {
    const int bm = bwd_sm90::block_m_for(hd, softcap);
    bytes = std::max(bytes, bwd_sm90::WorkspaceLayout(p.batch, p.heads_q, p.seqlen_q, hd, bm).total);
  }
  return bytes;
}

cudaError_t run_bwd_sm90(const BwdParams& p, cudaStream_t stream) {
  if (!bwd_sm90_supported(p)) return cudaErrorNotSupported;
  if (p.workspace_bytes < bwd_sm90_workspace_bytes(p)) return cudaErrorInvalidValue;
  const int hd = bwd_sm90::padded_head_dim(p.head_dim);
#define JF3_DISPATCH(DT, HD, MACRO)                                       \
  if (p.dtype == DType::DT && hd == HD) return run_bwd_sm90_hdim<DType::DT, HD>(p, stream);
#ifdef JAX_FLASH3_HAS_BWD_SM90_BF16_HDIM64
  JF3_DISPATCH(kBF16, 64, _)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_BF16_HDIM96
  JF3_DISPATCH(kBF16, 96, _)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_BF16_HDIM128
  JF3_DISPATCH(kBF16, 128, _)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_BF16_HDIM192
  JF3_DISPATCH(kBF16, 192, _)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_BF16_HDIM256
  JF3_DISPATCH(kBF16, 256, _)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_FP16_HDIM64
  JF3_DISPATCH(kFP16, 64, _)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_FP16_HDIM96
  JF3_DISPATCH(kFP16, 96, _)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_FP16_HDIM128
  JF3_DISPATCH(kFP16, 128, _)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_FP16_HDIM192
  JF3_DISPATCH(kFP16, 192, _)
#endif
#ifdef JAX_FLASH3_HAS_BWD_SM90_FP16_HDIM256
  JF3_DISPATCH(kFP16, 256, _)
#endif
#undef JF3_DISPATCH
  return cudaErrorNotSupported;
}

}  // namespace jax_flash3

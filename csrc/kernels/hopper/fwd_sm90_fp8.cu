// jax_flash3: Hopper FP8 forward dispatch, plus the V-transpose pre-pass it runs first when V is
// not transposed inside the kernel (fwd_sm90_fp8.h: fwd_fp8_transpose_in_kernel says when).
// Each native head dim's kernel lives in csrc/kernels/instantiations/fwd_sm90_fp8_hdim<D>.cu and
// is present only when the build defines JAX_FLASH3_HAS_FWD_SM90_FP8_HDIM<D>.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/hopper/fwd_sm90_fp8.h"
#include "kernels/kernels.h"

namespace jax_flash3 {
namespace {

// Calls fn(native head dim) for a compiled instantiation; false if none matches.
template <class Fn>
bool with_fp8_instantiation(const Fp8FwdParams& p, Fn&& fn) {
  const int d = sm90::fwd_fp8_native_head_dim(p.head_dim);
#define JF3_CASE(D)                                  \
  if (d == D) {                                      \
    fn(std::integral_constant<int, D>{});            \
    return true;                                     \
  }
#ifdef JAX_FLASH3_HAS_FWD_SM90_FP8_HDIM64
  JF3_CASE(64)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_FP8_HDIM128
  JF3_CASE(128)
#endif
#ifdef JAX_FLASH3_HAS_FWD_SM90_FP8_HDIM256
  JF3_CASE(256)
#endif
#undef JF3_CASE
  (void)fn;
  return false;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

// Vt[b, h, d, slot] = V[b, fp8_key_of_slot(slot), h, d], 0 for keys >= Sk. A block transposes 64
// keys x 64 dims through smem; 16-byte loads along d, 16-byte stores along the key slots.
constexpr int kTrKeys = 64, kTrDims = 64, kTrThreads = 256;

__global__ void __launch_bounds__(kTrThreads) transpose_v_fp8_kernel(
    const uint8_t* __restrict__ v, int64_t v_batch_stride, int64_t v_row_stride,
    int64_t v_head_stride, int seqlen_k, int heads_k, int dv, int64_t sk_pad,
    uint8_t* __restrict__ vt) {
  __shared__ alignas(16) uint8_t tile[kTrKeys][kTrDims + 16];
  const int key0 = blockIdx.y * kTrKeys, d0 = blockIdx.z * kTrDims;
  const int bh = blockIdx.x, b = bh / heads_k, h = bh % heads_k;
  const int tid = threadIdx.x;
  {
    const int r = tid / 4, c = (tid % 4) * 16;  // 64 rows x 4 chunks of 16 B
    const int key = key0 + r, d = d0 + c;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (key < seqlen_k && d < dv)
      val = *reinterpret_cast<const uint4*>(v + b * v_batch_stride + int64_t(key) * v_row_stride +
                                            h * v_head_stride + d);
    *reinterpret_cast<uint4*>(&tile[r][c]) = val;
  }
  __syncthreads();
  {
    const int dl = tid / 4, s0 = (tid % 4) * 16;  // 64 dims x 4 chunks of 16 slots
    const int d = d0 + dl;
    if (d < dv) {
      uint32_t w[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint32_t x = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) x |= uint32_t(tile[sm90::fp8_key_of_slot(s0 + 4 * q + i)][dl]) << (8 * i);
        w[q] = x;
      }
      *reinterpret_cast<uint4*>(vt + ((int64_t(b) * heads_k + h) * dv + d) * sk_pad + key0 + s0) =
          make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

// JAX_FLASH3_FP8_V_TRANSPOSE: 0 auto, 1 kernel, 2 pre-pass (read once).
int transpose_override() {
  static const int mode = [] {
    const char* e = std::getenv("JAX_FLASH3_FP8_V_TRANSPOSE");
    if (e == nullptr) return 0;
    if (std::strcmp(e, "kernel") == 0) return 1;
    if (std::strcmp(e, "prepass") == 0) return 2;
    return 0;
  }();
  return mode;
}

// JAX_FLASH3_FP8_SPLIT=0: no split tail (read once).
bool split_disabled() {
  static const bool off = [] {
    const char* e = std::getenv("JAX_FLASH3_FP8_SPLIT");
    return e != nullptr && std::strcmp(e, "0") == 0;
  }();
  return off;
}

int fp8_num_tiles(const Fp8FwdParams& p, bool vt_in_kernel) {
  const int bm = sm90::fwd_fp8_block_m(p.head_dim, vt_in_kernel);
  return (p.seqlen_q + bm - 1) / bm * p.heads_q * p.batch;
}

// The most pieces a tile of this call may be cut into (1: none). The plan needs every tile to
// see the same key blocks: true without a mask, and with one (causal, window) when there is only
// one query block per (batch, head), e.g. decoding or a short chunk against a long cache.
int split_max_pieces(const Fp8FwdParams& p, bool vt_in_kernel) {
  if (split_disabled()) return 1;
  const int64_t bn = sm90::kFp8BlockN;
  int64_t n_min = 0, n_max = (p.seqlen_k + bn - 1) / bn;
  const bool masked = p.mask.window_left >= 0 || p.mask.window_right >= 0;
  if (masked) {
    const int bm = sm90::fwd_fp8_block_m(p.head_dim, vt_in_kernel);
    if (p.seqlen_q > bm) return 1;
    // block_range (fwd_sm90_kernel.h) of query block 0, in 64-bit (windows may be huge).
    const int64_t off = int64_t(p.seqlen_k) - p.seqlen_q;
    if (p.mask.window_right >= 0) {
      const int64_t last_col = p.seqlen_q - 1 + off + p.mask.window_right;
      n_max = std::min(n_max, last_col < 0 ? 0 : last_col / bn + 1);
    }
    if (p.mask.window_left >= 0) {
      const int64_t first_col = off - p.mask.window_left;
      n_min = first_col <= 0 ? 0 : first_col / bn;
    }
  }
  const int64_t blocks = n_max - n_min;
  return int(std::min<int64_t>(sm90::kFp8MaxPieces, std::max<int64_t>(1, blocks / sm90::kFp8MinPieceBlocks)));
}

// Piece slots a workspace reserves for any grid size: rem * k <= min(G, T * k_max).
int split_slots_bound(const Fp8FwdParams& p, bool vt_in_kernel) {
  const int kmax = split_max_pieces(p, vt_in_kernel);
  if (kmax < 2) return 0;
  const int64_t bound = int64_t(fp8_num_tiles(p, vt_in_kernel)) * kmax;
  return int(std::min<int64_t>(sm90::kFp8MaxPieceSlots, bound));
}

size_t split_region_bytes(const Fp8FwdParams& p, bool vt_in_kernel, size_t base) {
  const int slots = split_slots_bound(p, vt_in_kernel);
  if (slots == 0) return 0;
  return sm90::fwd_fp8_split_offset(base) - base + sm90::kFp8SplitFlagBytes +
         size_t(slots) * sm90::fwd_fp8_piece_bytes(p.head_dim, vt_in_kernel);
}

}  // namespace

namespace sm90 {
Fp8SplitPlan fwd_fp8_split_plan(const Fp8FwdParams& p, bool vt_in_kernel, int num_sms, int max_slots) {
  const int tiles = fp8_num_tiles(p, vt_in_kernel);
  Fp8SplitPlan plan{tiles, tiles, 1};
  const int kmax = split_max_pieces(p, vt_in_kernel);
  if (kmax < 2 || num_sms <= 0) return plan;
  const int rem = tiles % num_sms;  // the last round's tiles (all of them when tiles < SMs)
  if (rem == 0) return plan;
  const int k = std::min({kmax, num_sms / rem, max_slots / rem});
  if (k < 2) return plan;
  plan.first = tiles - rem;
  plan.pieces = k;
  return plan;
}

bool fwd_fp8_transpose_in_kernel(const Fp8FwdParams& p) {
  const int mode = transpose_override();
  if (mode != 0) return mode == 1;
  const int d = fwd_fp8_native_head_dim(p.head_dim);
  // d 128 without a mask: its pre-pass kernel (3 consumer warpgroups) already wins at 2048
  // queries per key (H200, 16k tokens: 782-785 vs 713-715 TFLOPs/s) but not at 1024 (597-599 vs
  // 623-626); causal at 2048 stays in the kernel (524-531 vs 536-556).
  const bool unmasked = p.mask.window_left < 0 && p.mask.window_right < 0;
  const int64_t limit = d == 128 && unmasked ? 1024 : d <= 128 ? 2048 : 512;
  // Queries that share each key: the pre-pass is amortized over them.
  return int64_t(p.seqlen_q) * (p.heads_q / p.heads_k) <= limit;
}
}  // namespace sm90

bool fwd_sm90_fp8_supported(const Fp8FwdParams& p) {
  if (p.dtype != DType::kFP8E4M3) return false;
  // TMA rows of e4m3 must be 16-byte multiples.
  if (p.head_dim <= 0 || p.head_dim > 256 || p.head_dim % 16 != 0) return false;
  if (p.head_dim_v != p.head_dim) return false;
  if (p.batch < 1 || p.seqlen_q < 1 || p.seqlen_k < 1 || p.heads_q < 1 || p.heads_k < 1) return false;
  if (p.heads_q % p.heads_k != 0) return false;
  if (sm90::fwd_fp8_seqlen_k_padded(p.seqlen_k) / kTrKeys > 65535) return false;
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v) || !aligned16(p.out) ||
      !aligned16(p.workspace))
    return false;
  const int64_t strides[] = {p.q_batch_stride, p.q_row_stride, p.q_head_stride,
                             p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                             p.v_batch_stride, p.v_row_stride, p.v_head_stride};
  for (int64_t s : strides)
    if (s % 16 != 0 || s < 0 || s >= (int64_t(1) << 39)) return false;
  const int64_t out_strides[] = {p.o_batch_stride, p.o_row_stride, p.o_head_stride};
  for (int64_t s : out_strides)
    if (s % 8 != 0 || s < 0 || s >= (int64_t(1) << 38)) return false;
  if (p.mask.softcap < 0.f) return false;
  return with_fp8_instantiation(p, [](auto) {});
}

namespace {
size_t prepass_workspace_bytes(const Fp8FwdParams& p) {
  return sm90::kFp8VtOffset + size_t(p.batch) * p.heads_k * p.head_dim_v *
                                  size_t(sm90::fwd_fp8_seqlen_k_padded(p.seqlen_k));
}
}  // namespace

size_t fwd_sm90_fp8_workspace_bytes(const Fp8FwdParams& p) {
  const bool in_kernel = sm90::fwd_fp8_transpose_in_kernel(p);
  const size_t base = in_kernel ? sm90::kFp8VtOffset : prepass_workspace_bytes(p);
  return base + split_region_bytes(p, in_kernel, base);
}

cudaError_t run_fwd_sm90_fp8(const Fp8FwdParams& p, cudaStream_t stream) {
  if (!fwd_sm90_fp8_supported(p)) return cudaErrorNotSupported;
  if (p.workspace == nullptr || p.workspace_bytes < sm90::kFp8VtOffset) return cudaErrorInvalidValue;
  // A workspace sized for the in-kernel transpose (under another JAX_FLASH3_FP8_V_TRANSPOSE, say)
  // keeps it: the pre-pass would not fit.
  const bool in_kernel =
      sm90::fwd_fp8_transpose_in_kernel(p) || p.workspace_bytes < prepass_workspace_bytes(p);
  if (!in_kernel) {
    const int64_t sk_pad = sm90::fwd_fp8_seqlen_k_padded(p.seqlen_k);
    dim3 grid(unsigned(p.batch * p.heads_k), unsigned(sk_pad / kTrKeys),
              unsigned((p.head_dim_v + kTrDims - 1) / kTrDims));
    transpose_v_fp8_kernel<<<grid, kTrThreads, 0, stream>>>(
        static_cast<const uint8_t*>(p.v), p.v_batch_stride, p.v_row_stride, p.v_head_stride,
        p.seqlen_k, p.heads_k, p.head_dim_v, sk_pad,
        static_cast<uint8_t*>(p.workspace) + sm90::kFp8VtOffset);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  // The split tail, as far as this workspace holds its pieces.
  const size_t base = in_kernel ? sm90::kFp8VtOffset : prepass_workspace_bytes(p);
  const size_t split_offset = sm90::fwd_fp8_split_offset(base);
  int slots = 0;
  if (p.workspace_bytes >= split_offset + sm90::kFp8SplitFlagBytes) {
    const size_t n = (p.workspace_bytes - split_offset - sm90::kFp8SplitFlagBytes) /
                     sm90::fwd_fp8_piece_bytes(p.head_dim, in_kernel);
    slots = int(std::min<size_t>(n, sm90::kFp8MaxPieceSlots));
  }
  int num_sms = p.num_sms;
  if (num_sms <= 0) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess) return e;
  }
  const sm90::Fp8SplitPlan plan = sm90::fwd_fp8_split_plan(p, in_kernel, num_sms, slots);
  cudaError_t err = cudaErrorNotSupported;
  with_fp8_instantiation(p, [&](auto d) {
    err = sm90::run_fwd_sm90_fp8_hdim<decltype(d)::value>(p, in_kernel, plan, split_offset, stream);
  });
  return err;
}

}  // namespace jax_flash3

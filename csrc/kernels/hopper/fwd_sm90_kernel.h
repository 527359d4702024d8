// jax_flash3: FlashAttention-3-class forward kernel for Hopper (sm_90a), BF16/FP16.
//
// CTA = 1 producer warpgroup (one thread issues TMA) + kNumMmaWG consumer warpgroups, each owning
// 64 query rows (the WGMMA M). Per (m_block, head, batch) tile:
//   producer:  K(n_max-1), Q, then K(n) and V(n+1) per step (V lags K by one), then V(n_min);
//              K and V each sit in a kStages-deep smem ring guarded by full/empty mbarriers.
//   consumers: S = Q K^T from smem (SS WGMMA), online exp2 softmax in fp32, O += P V with P kept in
//              registers (RS WGMMA). Intra-warpgroup overlap: QK^T of block n and PV of block n+1
//              are in flight together while the softmax of block n waits only for the QK^T.
//              Pingpong: a ring of named barriers makes the consumer warpgroups take turns issuing
//              their GEMMs, so one warpgroup's softmax runs under the other's GEMMs.
//   epilogue:  O -> bf16/fp16 -> stmatrix into sO -> one TMA store (not waited on, so it overlaps
//              the next tile); LSE (natural log, fp32) straight from registers. sO has its own
//              buffer where smem allows (hdim <= 128); at hdim 192/256 it aliases sQ (Q is dead
//              after the tile's last QK^T) and the next Q waits for the store to read it.
// Blocks are walked right to left so the masked blocks (seqlen_k tail, causal diagonal) come first;
// only blocks a mask limit cuts through pay for the elementwise mask.
// The grid is persistent (one CTA per SM); tiles are visited head-major and handed out through an
// atomic counter in the workspace (the producer fetches, consumers read the index from a 2-slot
// smem ring): causal/local m-blocks longest-first, the rest in index order. Without a workspace
// (the harness can ask for that) the schedule is static round-robin.
// head_dim < kHeadDim (any multiple of 8) runs in the next native kernel: TMA zero-fills the
// missing columns of Q/K/V and clips them from the O store.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/tensor.hpp>
#include <cute/arch/copy_sm90.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cutlass.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>

#include "kernels/hopper/acc_store.h"
#include "kernels/hopper/fwd_sm90.h"
#include "kernels/params.h"

namespace jax_flash3::sm90 {

using namespace cute;

// ---------------------------------------------------------------------------------------------
// Tile traits
// ---------------------------------------------------------------------------------------------

// Largest GMMA swizzle atom whose row (the contiguous K extent, in elements) divides kK.
template <typename T, int kK>
constexpr auto k_major_smem_atom() {
  if constexpr (kK % 64 == 0) return GMMA::Layout_K_SW128_Atom<T>{};
  else if constexpr (kK % 32 == 0) return GMMA::Layout_K_SW64_Atom<T>{};
  else if constexpr (kK % 16 == 0) return GMMA::Layout_K_SW32_Atom<T>{};
  else return GMMA::Layout_K_INTER_Atom<T>{};
}

// The Params fields both forward kernels (this one and the FP8 one) share; fill_fwd_params fills
// them on the host.
template <typename OutElement>
struct FwdParamsBase {
  OutElement* o;  // plain stores for tiles with no visible key
  int64_t o_row_stride, o_head_stride, o_batch_stride;
  float* lse;  // (B, Hq, Sq) or null
  int seqlen_q, seqlen_k, heads_q, heads_k, batch, head_dim;
  int group;  // heads_q / heads_k
  int num_m_blocks, num_tiles;
  int window_left, window_right;  // < 0: unbounded
  bool longest_first;
  bool rotate_blocks;  // see BlockOrder
  int* tile_counter;  // zeroed before launch; null: static round-robin schedule
  float scale_log2;     // log2(e) * softmax_scale, or log2(e) * softcap with softcap
  float softcap_scale;  // softmax_scale / softcap (softcap only)
};

template <typename Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kNumMmaWG = kBlockM / 64;
  // Pin each block's softmax before the wait for the PV GEMM (softmax_before_wait): measured
  // +2-7% at head dim 128 (H200, harness, 1k-8k tokens), neutral at 64, -3-5% at 256 (1k-4k).
  static constexpr bool kSoftmaxBeforeWait = kHeadDim_ <= 128;
  static constexpr int kNumMmaThreads = kNumMmaWG * 128;
  static constexpr int kNumThreads = kNumMmaThreads + 128;
  static_assert(kBlockM % 64 == 0 && (kNumMmaWG == 2 || kNumMmaWG == 3));
  static_assert(kBlockN % 16 == 0 && kHeadDim % 16 == 0);
  // setmaxnreg budgets: 128*24 + 256*240 = 64512 and 128*32 + 384*160 = 65536, both <= 64K.
  static constexpr int kProducerRegs = kNumMmaWG == 2 ? 24 : 32;
  static constexpr int kConsumerRegs = kNumMmaWG == 2 ? 240 : 160;

  using AtomLayoutMma = Layout<Shape<Int<kNumMmaWG>, _1, _1>>;  // warpgroups split M
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(),
      AtomLayoutMma{}));
  // P (registers, K-major) x V (smem, d-contiguous = MN-major for this GEMM).
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      AtomLayoutMma{}));

  using SmemAtom = decltype(k_major_smem_atom<Element, kHeadDim>());
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutK =
      decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutV = SmemLayoutK;
  // V viewed as (d, n, stage) for the PV GEMM's B operand; same bytes as SmemLayoutV.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{},
      make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  using SmemLayoutO = SmemLayoutQ;

  // Global tensors as (seqlen, d, head, batch); d is contiguous.
  using GShape = Shape<int32_t, int32_t, int32_t, int32_t>;
  using GStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GLayout = Layout<GShape, GStride>;
  using GTensorIn = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GLayout{}));
  using GTensorOut = decltype(make_tensor(make_gmem_ptr(static_cast<Element*>(nullptr)), GLayout{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensorIn{}, SmemLayoutQ{},
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensorIn{}, take<0, 2>(SmemLayoutK{}),
                                       Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  using TmaO = decltype(make_tma_copy(SM90_TMA_STORE{}, GTensorOut{}, SmemLayoutO{},
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  // A TMA box always lands in full (out-of-bounds elements are zero-filled and still counted).
  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesKV = kBlockN * kHeadDim * sizeof(Element);

  struct Barriers {
    uint64_t q_full;
    uint64_t q_empty;  // sQ free again (and, when sO aliases sQ, the previous O store has read it)
    uint64_t k_full[kStages], k_empty[kStages];
    uint64_t v_full[kStages], v_empty[kStages];
    // Dynamic scheduler: the producer publishes each next tile index through a 2-slot ring.
    uint64_t sched_full[2], sched_empty[2];
    int sched_tile[2];
    float softmax_sink;  // softmax_before_wait's slot (never read)
  };
  // 1024 B alignment: the period of the 128 B swizzle, which TMA and WGMMA both assume.
  struct StorageAliasO {  // sO is sQ: Q is dead after the tile's last QK^T
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>> smem_q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>> smem_k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutV>> smem_v;
    alignas(16) Barriers bar;
    CUTE_DEVICE Element* smem_o() { return smem_q.data(); }
  };
  struct StorageSeparateO {  // the next tile's Q loads while this tile's O is stored
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>> smem_q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>> smem_k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutV>> smem_v;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutO>> smem_o_;
    alignas(16) Barriers bar;
    CUTE_DEVICE Element* smem_o() { return smem_o_.data(); }
  };
  static constexpr bool kSeparateO = sizeof(StorageSeparateO) <= 227 * 1024;
  using SharedStorage = cute::conditional_t<kSeparateO, StorageSeparateO, StorageAliasO>;
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit in shared memory");

  struct Params : FwdParamsBase<Element> {
    TmaQ tma_q;
    TmaKV tma_k;
    TmaKV tma_v;
    TmaO tma_o;
    bool separate_o;  // sO has its own buffer (Traits::kSeparateO and not switched off)
  };
};

// Tile choices (smem: Q + kStages * (K + V), O aliases Q; limit 227 KB):
//   d 64 : 192 x 128, 3 WGs: 24 + 2*(16+16) = 88 KB; S 64 + P 32 + O 32 regs fits the 160 budget.
//   d 96 : 128 x 128, 2 WGs: 24 + 2*(24+24) = 120 KB.
//   d 128: 128 x 128, 2 WGs: 32 + 2*(32+32) = 160 KB.
//   d 192: 128 x 112, 2 WGs: 48 + 2*(42+42) = 216 KB.
//   d 256: 128 x 80,  2 WGs: 64 + 2*(40+40) = 224 KB (128 x 96 would need 256 KB).
// d 64 also has a 128 x 128, 2-WG tile (MaskedTraits) for masked calls over short keys: where a
// mask limit cuts through most tiles, 192-row tiles compute up to 1.5x the visible area (seq 1k
// causal: 67% of the computed scores are visible at 192 rows, 89% at 128). H200 A/B (RESULTS.md,
// forward v6): causal 512/1k/2k +20%/+20%/+3% at 128 rows, 4k equal, 8k/16k -8%; non-causal 192
// rows win at every length. So: 128 rows when a window limit (causal included) cuts the key range
// and Sk <= 2048 (use_masked_tile).
template <typename Element, int kHeadDim>
struct FwdConfig;
template <typename E> struct FwdConfig<E, 64> {
  using Traits = FwdTraits<E, 64, 192, 128, 2>;
  using MaskedTraits = FwdTraits<E, 64, 128, 128, 2>;
};
template <typename E> struct FwdConfig<E, 96> { using Traits = FwdTraits<E, 96, 128, 128, 2>; };
template <typename E> struct FwdConfig<E, 128> { using Traits = FwdTraits<E, 128, 128, 128, 2>; };
template <typename E> struct FwdConfig<E, 192> { using Traits = FwdTraits<E, 192, 128, 112, 2>; };
template <typename E> struct FwdConfig<E, 256> { using Traits = FwdTraits<E, 256, 128, 80, 2>; };

// ---------------------------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------------------------

// Named barriers (CUTLASS offsets ids past its reserved ones).
enum : uint32_t { kBarEpilogue = 0, kBarPingpong0 = 1 };

// WGMMA accumulator layout ((2, 2, N/8), MMA_M, MMA_N) -> (rows, cols) = ((2, MMA_M), (2, N/8, MMA_N)).
// Value mode 0 steps one column, mode 1 eight rows, mode 2 eight columns.
template <class L>
CUTE_HOST_DEVICE constexpr auto acc_rowcol(L l) {
  auto v = get<0>(l);
  return make_layout(make_layout(get<1>(v), get<1>(l)), make_layout(get<0>(v), get<2>(v), get<2>(l)));
}

// Accumulator of S (as P) -> A-operand registers of a 64xNx16 RS WGMMA:
// ((2, 2, N/8), MMA_M, MMA_N) -> ((2, 2, 2), MMA_M, N/16 * MMA_N).
template <class L>
CUTE_HOST_DEVICE constexpr auto acc_to_a_regs(L l) {
  auto v = logical_divide(get<0>(l), Shape<Underscore, Underscore, _2>{});
  return make_layout(make_layout(get<0>(v), get<1>(v), get<2, 0>(v)), get<1>(l),
                     coalesce(make_layout(get<2, 1>(v), get<2>(l))));
}

// Issue one warpgroup GEMM (all K slices) and commit it as one group; the caller waits.
// kARegs: A is a register fragment (RS); otherwise A and B are smem descriptors (SS).
template <bool kZeroInit, bool kARegs, class TiledMma, class TA, class TB, class TC>
CUTE_DEVICE void wgmma_issue(TiledMma& mma, TA& tA, TB const& tB, TC& tC) {
  if constexpr (kARegs) warpgroup_fence_operand(tA);
  warpgroup_fence_operand(tC);
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  else mma.accumulate_ = GMMA::ScaleOut::One;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tA); ++k) {
    cute::gemm(mma, tA(_, _, k), tB(_, _, k), tC);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(tC);
  if constexpr (kARegs) warpgroup_fence_operand(tA);
}


// Keeps this thread's softmax before the PV GEMM's wgmma.wait_group that follows it in the
// source. ptxas schedules that wait like an instruction without inputs and hoists it to the top
// of its basic block, i.e. above the softmax, which then ran only after the PV GEMM had finished
// (no intra-warpgroup overlap; seen in the SASS of both forward kernels). Whether the overlap
// pays depends on the kernel: FwdTraits::kSoftmaxBeforeWait says where it is used; the FP8
// kernel does not use it (8% slower at head dim 128; likely because the two consumer warpgroups'
// softmaxes then compete for the same SFUs instead of alternating). The wait does not pass
// a shared-memory store, so a store of a value the softmax computes last pins it below. The
// store's predicate (the sum of the row sums is NaN) is false for finite inputs; when true it
// writes a slot nothing reads (`sink`). Cost: kRows - 1 FADDs, one FSETP and one predicated STS
// per block.
template <int kRows>
CUTE_DEVICE void softmax_before_wait(const float (&row_sum)[kRows], float* sink) {
  float x = row_sum[0];
  CUTE_UNROLL
  for (int i = 1; i < kRows; ++i) x += row_sum[i];
  asm volatile(
      "{\n\t.reg .pred p;\n\tsetp.neu.f32 p, %1, %1;\n\t@p st.shared.f32 [%0], %1;\n\t}\n"
      ::"r"(uint32_t(__cvta_generic_to_shared(sink))), "f"(x) : "memory");
}

// The online softmax keeps a row's running max unless a block's max exceeds it by more than
// this many log2 units (exp2 of the scores then reach 2^kRescaleSlack instead of 1), so most
// blocks after the first few leave O and the row sum unscaled; a warp skips the O rescale when
// none of its rows moved its max.
constexpr float kRescaleSlackBf16 = 8.f;

// O(i, :) *= row_scale[i], skipped by the whole warp when no row's scale moved from 1.
template <int kRows, class TensorO>
CUTE_DEVICE void rescale_o(TensorO& O, const float (&row_scale)[kRows]) {
  bool moved = false;
  CUTE_UNROLL
  for (int i = 0; i < kRows; ++i) moved |= row_scale[i] != 1.f;
  if (!__any_sync(0xffffffffu, moved)) return;
  CUTE_UNROLL
  for (int i = 0; i < kRows; ++i) {
    CUTE_UNROLL
    for (int j = 0; j < size<1>(O); ++j) O(i, j) *= row_scale[i];
  }
}

CUTE_DEVICE float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
CUTE_DEVICE float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
CUTE_DEVICE float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Mask rule (params.h): row i sees column j iff i + off - wl <= j <= i + off + wr, j < seqlen_k,
// with off = seqlen_k - seqlen_q and a negative window meaning unbounded.
struct BlockRange {
  int n_min, n_max;  // [n_min, n_max) of kBlockN blocks; empty when n_min >= n_max
};
template <int kBlockM, int kBlockN>
CUTE_DEVICE BlockRange block_range(int m_block, int seqlen_q, int seqlen_k, int wl, int wr) {
  const int off = seqlen_k - seqlen_q;
  int n_max = (seqlen_k + kBlockN - 1) / kBlockN;
  if (wr >= 0) {
    const int last_row = min((m_block + 1) * kBlockM, seqlen_q) - 1;
    const int last_col = last_row + off + wr;  // may be negative
    n_max = min(n_max, last_col < 0 ? 0 : last_col / kBlockN + 1);
  }
  int n_min = 0;
  if (wl >= 0) {
    const int first_col = m_block * kBlockM + off - wl;
    n_min = first_col <= 0 ? 0 : first_col / kBlockN;
  }
  return {n_min, n_max};
}

// ---------------------------------------------------------------------------------------------
// Kernel
// ---------------------------------------------------------------------------------------------

// The j-th n-block a tile visits. Right to left, so masked blocks come first; with `rotate`
// (no window: only the seqlen_k tail is masked, order is free) each m-block starts at a different
// block, so the CTAs of one head do not all read the same K/V tile of L2 at the same moment.
struct BlockOrder {
  int n_min, n_max, rot;
  CUTE_DEVICE BlockOrder(BlockRange r, int m_block, bool rotate)
      : n_min(r.n_min), n_max(r.n_max), rot(rotate ? m_block % (r.n_max - r.n_min) : 0) {}
  CUTE_DEVICE int count() const { return n_max - n_min; }
  CUTE_DEVICE int operator()(int j) const {
    const int n = n_max - 1 - j - rot;
    return n < n_min ? n + (n_max - n_min) : n;
  }
};

template <class Traits>
CUTE_DEVICE void tile_coord(typename Traits::Params const& p, int tile, int& m_block, int& head,
                            int& batch) {
  // Head-major so that the CTAs running at once share one head's K/V in L2.
  const int hb = tile / p.num_m_blocks;
  m_block = tile - hb * p.num_m_blocks;
  if (p.longest_first) m_block = p.num_m_blocks - 1 - m_block;
  head = hb % p.heads_q;
  batch = hb / p.heads_q;
}

// A tile with no visible key for any row: O = 0, LSE = -inf, without touching the pipelines.
template <int kBlockM, int kNumMmaThreads, class Params>
CUTE_DEVICE void write_empty_tile(Params const& p, int m_block, int head, int batch, int mma_tid) {
  using OutElement = cute::remove_pointer_t<decltype(p.o)>;
  constexpr int kVec = 8;  // 16 B of 16-bit elements; head_dim % 8 == 0
  const int vecs_per_row = p.head_dim / kVec;
  for (int i = mma_tid; i < kBlockM * vecs_per_row; i += kNumMmaThreads) {
    const int row = m_block * kBlockM + i / vecs_per_row;
    if (row < p.seqlen_q) {
      OutElement* dst = p.o + batch * p.o_batch_stride + int64_t(row) * p.o_row_stride +
                        head * p.o_head_stride + (i % vecs_per_row) * kVec;
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
  if (p.lse != nullptr) {
    for (int i = mma_tid; i < kBlockM; i += kNumMmaThreads) {
      const int row = m_block * kBlockM + i;
      if (row < p.seqlen_q) p.lse[(int64_t(batch) * p.heads_q + head) * p.seqlen_q + row] = -INFINITY;
    }
  }
}

// The mask of one tile's rows (this thread's kRows rows, coordinates from the row/col view cS of
// the S accumulator): absolute key limits per row (right exclusive), which blocks a limit cuts
// through, and the elementwise mask of such a block.
template <int kRows, int kBlockM, int kBlockN>
struct TileMask {
  int col_lo[kRows], col_hi[kRows];
  int seqlen_k, window_left, window_right, tile_row_lo, tile_row_hi;  // rows shifted by Sk - Sq

  template <class Params, class CS>
  CUTE_DEVICE TileMask(Params const& p, CS const& cS, int m_block)
      : seqlen_k(p.seqlen_k), window_left(p.window_left), window_right(p.window_right) {
    const int off = p.seqlen_k - p.seqlen_q;
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const int row = m_block * kBlockM + get<0>(cS(i, 0));
      col_hi[i] = window_right >= 0 ? min(seqlen_k, row + off + window_right + 1) : seqlen_k;
      col_lo[i] = window_left >= 0 ? row + off - window_left : INT_MIN;
    }
    tile_row_lo = m_block * kBlockM + off;
    tile_row_hi = (m_block + 1) * kBlockM - 1 + off;
  }
  // A block needs the elementwise mask only where a limit cuts through it.
  CUTE_DEVICE bool block_needs_mask(int n) const {
    const int c0 = n * kBlockN, c1 = (n + 1) * kBlockN - 1;
    return c1 >= seqlen_k || (window_right >= 0 && c1 > tile_row_lo + window_right) ||
           (window_left >= 0 && c0 < tile_row_hi - window_left);
  }
  // S (row/col view) of block n: -inf outside each row's limits.
  template <class TS, class CS>
  CUTE_DEVICE void apply(TS& S, CS const& cS, int n) const {
    const int c0 = n * kBlockN;
    CUTE_UNROLL
    for (int j = 0; j < decltype(size<1>(S))::value; ++j) {
      const int col = c0 + get<1>(cS(0, j));
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i)
        if (col >= col_hi[i] || col < col_lo[i]) S(i, j) = -INFINITY;
    }
  }
};

// One thread: the TMA store of the tile's O from sO (the caller commits and waits).
template <int kBlockM, int kHeadDim, class Params, class SO>
CUTE_DEVICE void tma_store_o(Params const& p, SO const& sO, int m_block, int head, int batch) {
  Tensor mO = p.tma_o.get_tma_tensor(make_shape(p.seqlen_q, p.head_dim, p.heads_q, p.batch));
  Tensor gO = local_tile(mO(_, _, head, batch), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                         make_coord(m_block, _0{}));
  auto cta_tma_o = p.tma_o.get_slice(_0{});
  copy(p.tma_o, cta_tma_o.partition_S(sO), cta_tma_o.partition_D(gO));
}

// LSE of this thread's rows (one lane per quad writes).
template <int kBlockM, int kRows, class Params, class CS>
CUTE_DEVICE void write_lse(Params const& p, CS const& cS, const float (&lse)[kRows], int m_block,
                           int head, int batch, int mma_tid) {
  if (p.lse == nullptr || (mma_tid % 4) != 0) return;
  CUTE_UNROLL
  for (int i = 0; i < kRows; ++i) {
    const int row = m_block * kBlockM + get<0>(cS(i, 0));
    if (row < p.seqlen_q) p.lse[(int64_t(batch) * p.heads_q + head) * p.seqlen_q + row] = lse[i];
  }
}

template <class Traits, bool kSoftcap>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fwd_sm90_kernel(CUTE_GRID_CONSTANT typename Traits::Params const p) {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages;
  constexpr int kNumMmaWG = Traits::kNumMmaWG;
  constexpr int kNumMmaThreads = Traits::kNumMmaThreads;
  using ClusterBarrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  using NamedBarrier = cutlass::arch::NamedBarrier;

  extern __shared__ char smem_raw[];
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(smem_raw);

  const int warp_idx = cutlass::canonical_warp_idx_sync();
  const int wg_idx = cutlass::canonical_warp_group_idx();

  if (warp_idx == 0 && cute::elect_one_sync()) {
    prefetch_tma_descriptor(p.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(p.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(p.tma_v.get_tma_descriptor());
    prefetch_tma_descriptor(p.tma_o.get_tma_descriptor());
    ClusterBarrier::init(&ss.bar.q_full, 1);
    ClusterBarrier::init(&ss.bar.q_empty, p.separate_o ? kNumMmaThreads : 1);
    CUTE_UNROLL
    for (int s = 0; s < kStages; ++s) {
      ClusterBarrier::init(&ss.bar.k_full[s], 1);
      ClusterBarrier::init(&ss.bar.v_full[s], 1);
      // Every consumer thread arrives after its own wgmma wait: no extra warpgroup sync needed.
      ClusterBarrier::init(&ss.bar.k_empty[s], kNumMmaThreads);
      ClusterBarrier::init(&ss.bar.v_empty[s], kNumMmaThreads);
    }
    CUTE_UNROLL
    for (int s = 0; s < 2; ++s) {
      ClusterBarrier::init(&ss.bar.sched_full[s], 1);
      ClusterBarrier::init(&ss.bar.sched_empty[s], kNumMmaThreads);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  Tensor sQ = make_tensor(make_smem_ptr(ss.smem_q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.smem_k.data()), typename Traits::SmemLayoutK{});

  if (wg_idx == 0) {
    // ------------------------------------------------------------------ producer
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (warp_idx != 0 || !cute::elect_one_sync()) return;

    Tensor sV = make_tensor(make_smem_ptr(ss.smem_v.data()), typename Traits::SmemLayoutV{});
    Tensor mQ = p.tma_q.get_tma_tensor(make_shape(p.seqlen_q, p.head_dim, p.heads_q, p.batch));
    Tensor mK = p.tma_k.get_tma_tensor(make_shape(p.seqlen_k, p.head_dim, p.heads_k, p.batch));
    Tensor mV = p.tma_v.get_tma_tensor(make_shape(p.seqlen_k, p.head_dim, p.heads_k, p.batch));
    int k_stage = 0, v_stage = 0;
    uint32_t k_phase = 0, v_phase = 0;
    int tiles_done = 0;
    // Next tile for this CTA; with the dynamic scheduler, also handed to the consumers.
    auto next_tile = [&](int tile, int sched) {
      if (p.tile_counter == nullptr) return tile + int(gridDim.x);
      const int next = atomicAdd(p.tile_counter, 1) + int(gridDim.x);
      const int slot = sched & 1;
      ClusterBarrier::wait(&ss.bar.sched_empty[slot], ((sched >> 1) & 1) ^ 1);
      ss.bar.sched_tile[slot] = next;
      ClusterBarrier::arrive(&ss.bar.sched_full[slot]);  // release: orders the store above
      return next;
    };
    for (int tile = blockIdx.x, sched = 0; tile < p.num_tiles; tile = next_tile(tile, sched++)) {
      int m_block, head, batch;
      tile_coord<Traits>(p, tile, m_block, head, batch);
      const BlockRange r =
          block_range<kBlockM, kBlockN>(m_block, p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);
      if (r.n_min >= r.n_max) continue;
      const int head_k = head / p.group;

      Tensor gQ = local_tile(mQ(_, _, head, batch), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                             make_coord(m_block, _0{}));
      Tensor gK = local_tile(mK(_, _, head_k, batch), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                             make_coord(_, _0{}));  // (kBlockN, d, n)
      Tensor gV = local_tile(mV(_, _, head_k, batch), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                             make_coord(_, _0{}));
      auto tQ = tma_partition(p.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
      auto tK = tma_partition(p.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
      auto tV = tma_partition(p.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
      Tensor tQg = get<0>(tQ);  // (TMA)
      Tensor tQs = get<1>(tQ);
      Tensor tKg = get<0>(tK);  // (TMA, n)
      Tensor tKs = get<1>(tK);  // (TMA, stage)
      Tensor tVg = get<0>(tV);
      Tensor tVs = get<1>(tV);

      auto load_k = [&](int n) {
        ClusterBarrier::wait(&ss.bar.k_empty[k_stage], k_phase ^ 1);
        TxBarrier::arrive_and_expect_tx(&ss.bar.k_full[k_stage], Traits::kTmaBytesKV);
        copy(p.tma_k.with(ss.bar.k_full[k_stage], 0, TMA::CacheHintSm90::EVICT_LAST), tKg(_, n),
             tKs(_, k_stage));
        if (++k_stage == kStages) { k_stage = 0; k_phase ^= 1; }
      };
      auto load_v = [&](int n) {
        ClusterBarrier::wait(&ss.bar.v_empty[v_stage], v_phase ^ 1);
        TxBarrier::arrive_and_expect_tx(&ss.bar.v_full[v_stage], Traits::kTmaBytesKV);
        copy(p.tma_v.with(ss.bar.v_full[v_stage], 0, TMA::CacheHintSm90::EVICT_LAST), tVg(_, n),
             tVs(_, v_stage));
        if (++v_stage == kStages) { v_stage = 0; v_phase ^= 1; }
      };

      const BlockOrder order(r, m_block, p.rotate_blocks);
      load_k(order(0));
      // sQ free: the previous tile's last QK^T is done (and, if sO aliases sQ, its O store read it).
      if (tiles_done > 0) ClusterBarrier::wait(&ss.bar.q_empty, (tiles_done - 1) & 1);
      TxBarrier::arrive_and_expect_tx(&ss.bar.q_full, Traits::kTmaBytesQ);
      copy(p.tma_q.with(ss.bar.q_full, 0, TMA::CacheHintSm90::EVICT_FIRST), tQg, tQs);
      for (int j = 1; j < order.count(); ++j) {
        load_k(order(j));
        load_v(order(j - 1));
      }
      load_v(order(order.count() - 1));
      ++tiles_done;
    }
    return;
  }

  // -------------------------------------------------------------------- consumers
  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
  const int mma_tid = threadIdx.x - 128;
  const int mma_wg = wg_idx - 1;
  // Pingpong ring: warpgroup w waits on barrier w, then signals barrier (w + 1) % kNumMmaWG.
  // The last warpgroup gives the first one its initial turn.
  if (mma_wg == kNumMmaWG - 1) NamedBarrier::arrive(256, kBarPingpong0 + 0);
  auto pingpong_wait = [&] { NamedBarrier::sync(256, kBarPingpong0 + mma_wg); };
  auto pingpong_pass = [&] { NamedBarrier::arrive(256, kBarPingpong0 + (mma_wg + 1) % kNumMmaWG); };

  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(mma_tid);
  auto thr_pv = mma_pv.get_thread_slice(mma_tid);

  Tensor sVt = make_tensor(make_smem_ptr(ss.smem_v.data()), typename Traits::SmemLayoutVt{});
  Tensor sO = make_tensor(make_smem_ptr(p.separate_o ? ss.smem_o() : ss.smem_q.data()),
                          typename Traits::SmemLayoutO{});
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // (MMA, MMA_M, MMA_K)
  Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)
  Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
  Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  Tensor rP = make_tensor<Element>(tSrS.layout());
  Tensor tOrP = make_tensor(rP.data(), acc_to_a_regs(tSrS.layout()));

  Tensor S = make_tensor(tSrS.data(), acc_rowcol(tSrS.layout()));
  Tensor O = make_tensor(tOrO.data(), acc_rowcol(tOrO.layout()));
  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor cS = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));
  constexpr int kRows = decltype(size<0>(S))::value;
  constexpr int kCols = decltype(size<1>(S))::value;
  float row_max[kRows], row_sum[kRows], row_scale[kRows];

  const float scale_log2 = p.scale_log2;
  int k_stage = 0, v_stage = 0;
  uint32_t k_phase = 0, v_phase = 0;
  int tiles_done = 0;
  auto next_tile = [&](int tile, int sched) {
    if (p.tile_counter == nullptr) return tile + int(gridDim.x);
    const int slot = sched & 1;
    ClusterBarrier::wait(&ss.bar.sched_full[slot], (sched >> 1) & 1);
    const int next = ss.bar.sched_tile[slot];
    ClusterBarrier::arrive(&ss.bar.sched_empty[slot]);
    return next;
  };

  for (int tile = blockIdx.x, sched = 0; tile < p.num_tiles; tile = next_tile(tile, sched++)) {
    int m_block, head, batch;
    tile_coord<Traits>(p, tile, m_block, head, batch);
    const BlockRange r =
        block_range<kBlockM, kBlockN>(m_block, p.seqlen_q, p.seqlen_k, p.window_left, p.window_right);

    if (r.n_min >= r.n_max) {
      write_empty_tile<kBlockM, kNumMmaThreads>(p, m_block, head, batch, mma_tid);
      continue;
    }

    const TileMask<kRows, kBlockM, kBlockN> mask(p, cS, m_block);
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      row_max[i] = -INFINITY;
      row_sum[i] = 0.f;
    }

    // softcap, mask, then the online softmax of block n; leaves exp2'd scores in S and each
    // row's rescale factor for O in row_scale.
    auto softmax_step = [&](int n, bool first) {
      if constexpr (kSoftcap) {
        CUTE_UNROLL
        for (int i = 0; i < size(tSrS); ++i) tSrS(i) = fast_tanh(tSrS(i) * p.softcap_scale);
      }
      if (mask.block_needs_mask(n)) mask.apply(S, cS, n);
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) {
        float mx = row_max[i];
        CUTE_UNROLL
        for (int j = 0; j < kCols; ++j) mx = fmaxf(mx, S(i, j));
        mx = quad_max(mx);
        // Keep the running max unless this block's exceeds it by more than the slack (for a row
        // with nothing visible yet, max - max is NaN: it stays -inf).
        const bool grow = first || (mx - row_max[i]) * scale_log2 > kRescaleSlackBf16;
        if (!grow) mx = row_max[i];
        // A row with nothing visible yet keeps max -inf; use 0 so exp2 sees -inf, not NaN.
        const float mx_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
        row_scale[i] = grow && !first ? exp2f(row_max[i] * scale_log2 - mx_scaled) : 1.f;
        row_max[i] = mx;
        float sum = 0.f;
        CUTE_UNROLL
        for (int j = 0; j < kCols; ++j) {
          S(i, j) = exp2f(fmaf(S(i, j), scale_log2, -mx_scaled));
          sum += S(i, j);
        }
        row_sum[i] = first ? sum : row_sum[i] * row_scale[i] + sum;
      }
    };
    // Two floats -> one packed 32-bit register (one cvt.rn.{bf16,f16}x2.f32 each). Not through
    // cutlass::Array: reinterpreting the register array as an over-aligned Array forced a
    // misaligned local-memory copy at hdim 256 (80-byte P fragment).
    auto convert_p = [&] {
      Tensor rP32 = recast<uint32_t>(rP);
      CUTE_UNROLL
      for (int i = 0; i < size(rP32); ++i) rP32(i) = pack2<Element>(tSrS(2 * i), tSrS(2 * i + 1));
    };

    const BlockOrder order(r, m_block, p.rotate_blocks);
    ClusterBarrier::wait(&ss.bar.q_full, tiles_done & 1);

    // Prologue: S of the rightmost block.
    ClusterBarrier::wait(&ss.bar.k_full[k_stage], k_phase);
    pingpong_wait();
    wgmma_issue<true, false>(mma_qk, tSrQ, tSrK(_, _, _, k_stage), tSrS);
    pingpong_pass();
    warpgroup_wait<0>();
    warpgroup_fence_operand(tSrS);
    ClusterBarrier::arrive(&ss.bar.k_empty[k_stage]);
    if (++k_stage == kStages) { k_stage = 0; k_phase ^= 1; }
    softmax_step(order(0), true);
    convert_p();
    clear(tOrO);

    // Steady state: S(n) = Q K(n)^T and O += P(n+1) V(n+1) in flight together.
    for (int j = 1; j < order.count(); ++j) {
      ClusterBarrier::wait(&ss.bar.k_full[k_stage], k_phase);
      pingpong_wait();
      wgmma_issue<true, false>(mma_qk, tSrQ, tSrK(_, _, _, k_stage), tSrS);
      ClusterBarrier::wait(&ss.bar.v_full[v_stage], v_phase);
      wgmma_issue<false, true>(mma_pv, tOrP, tOrV(_, _, _, v_stage), tOrO);
      pingpong_pass();
      warpgroup_wait<1>();
      warpgroup_fence_operand(tSrS);
      ClusterBarrier::arrive(&ss.bar.k_empty[k_stage]);
      if (++k_stage == kStages) { k_stage = 0; k_phase ^= 1; }
      softmax_step(order(j), false);
      if constexpr (Traits::kSoftmaxBeforeWait) softmax_before_wait(row_sum, &ss.bar.softmax_sink);
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
      warpgroup_fence_operand(tOrP);
      ClusterBarrier::arrive(&ss.bar.v_empty[v_stage]);
      if (++v_stage == kStages) { v_stage = 0; v_phase ^= 1; }
      rescale_o(O, row_scale);
      convert_p();
    }

    // Every QK^T of this tile has completed (waited above): with a separate sO, sQ is free now.
    if (p.separate_o) ClusterBarrier::arrive(&ss.bar.q_empty);

    // Tail: PV of the leftmost block.
    ClusterBarrier::wait(&ss.bar.v_full[v_stage], v_phase);
    wgmma_issue<false, true>(mma_pv, tOrP, tOrV(_, _, _, v_stage), tOrO);
    warpgroup_wait<0>();
    warpgroup_fence_operand(tOrO);
    ClusterBarrier::arrive(&ss.bar.v_empty[v_stage]);
    if (++v_stage == kStages) { v_stage = 0; v_phase ^= 1; }

    // Finalize: 1/rowsum (0 for an empty row), LSE in natural log (-inf for an empty row).
    float lse[kRows];
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const float sum = quad_sum(row_sum[i]);
      const bool empty = sum == 0.f;  // (a NaN sum, from NaN or inf inputs, stays NaN)
      const float inv = empty ? 0.f : 1.f / sum;
      lse[i] = empty ? -INFINITY : row_max[i] * scale_log2 * float(M_LN2) + __logf(sum);
      CUTE_UNROLL
      for (int j = 0; j < size<1>(O); ++j) O(i, j) *= inv;
    }

    // Epilogue: registers -> sO (stmatrix) -> TMA store.
    if (p.separate_o) {
      // sO is reused across tiles: the previous tile's store must have read it.
      if (mma_tid == 0) tma_store_wait<0>();
      NamedBarrier::sync(kNumMmaThreads, kBarEpilogue);
    }
    // (Aliased sO = sQ: this warpgroup's last QK^T, the only reader of its 64 rows of sQ, is done.)
    stage_acc_to_smem<Element>(mma_pv, tOrO, sO, mma_tid);
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes -> visible to TMA
    NamedBarrier::sync(kNumMmaThreads, kBarEpilogue);
    if (mma_tid == 0) {
      tma_store_o<kBlockM, kHeadDim>(p, sO, m_block, head, batch);
      tma_store_arrive();
      if (!p.separate_o) {
        tma_store_wait<0>();  // smem read done: the producer may load the next Q into it
        ClusterBarrier::arrive(&ss.bar.q_empty);
      }
    }
    write_lse<kBlockM>(p, cS, lse, m_block, head, batch, mma_tid);
    ++tiles_done;
  }
  // The CTA's smem must outlive the last bulk store that reads it.
  if (mma_tid == 0) tma_store_wait<0>();
}

// ---------------------------------------------------------------------------------------------
// Host launch
// ---------------------------------------------------------------------------------------------

// (seqlen, d, heads, batch) gmem view of a forward operand, d contiguous.
template <typename Element>
auto fwd_gmem_tensor(const void* ptr, int seqlen, int head_dim, int heads, int batch, int64_t row,
                     int64_t head, int64_t batch_stride) {
  return make_tensor(make_gmem_ptr(static_cast<Element*>(const_cast<void*>(ptr))),
                     make_layout(make_shape(seqlen, head_dim, heads, batch),
                                 make_stride(row, _1{}, head, batch_stride)));
}

// The shared Params fields from the call's FwdParams; zeroes the dynamic scheduler's counter.
template <int kBlockM, bool kSoftcap, typename OutElement>
cudaError_t fill_fwd_params(FwdParamsBase<OutElement>& p, const FwdParams& fp, cudaStream_t stream) {
  p.o = static_cast<OutElement*>(fp.out);
  p.o_row_stride = fp.o_row_stride;
  p.o_head_stride = fp.o_head_stride;
  p.o_batch_stride = fp.o_batch_stride;
  p.lse = fp.lse;
  p.seqlen_q = fp.seqlen_q;
  p.seqlen_k = fp.seqlen_k;
  p.heads_q = fp.heads_q;
  p.heads_k = fp.heads_k;
  p.batch = fp.batch;
  p.head_dim = fp.head_dim;
  p.group = fp.heads_q / fp.heads_k;
  p.num_m_blocks = (fp.seqlen_q + kBlockM - 1) / kBlockM;
  p.num_tiles = p.num_m_blocks * fp.heads_q * fp.batch;
  // A window wider than Sq + Sk is unbounded in effect; clamping keeps the kernel's int32 row/column
  // limit arithmetic from overflowing on huge user windows.
  const int max_window = fp.seqlen_q + fp.seqlen_k;
  p.window_left = fp.mask.window_left < max_window ? fp.mask.window_left : max_window;
  p.window_right = fp.mask.window_right < max_window ? fp.mask.window_right : max_window;
  p.longest_first = fp.mask.window_right >= 0 || fp.mask.window_left >= 0;
  // Rotated block order measured no better than plain right-to-left on H100 (RESULTS.md v2), so
  // it stays off; kept as a switch for the next tuning round.
  p.rotate_blocks = false;
  // Tiles are handed out through a global counter whenever there is a workspace for it: uneven
  // rows (causal/local) longest-first; even rows in index order, so that a CTA which starts late
  // (its SM held by a concurrent kernel, e.g. the collective of a ring hop or a data-parallel
  // all-reduce) takes fewer tiles instead of delaying the whole launch by its fixed share.
  p.tile_counter = nullptr;
  if (fp.workspace != nullptr && fp.workspace_bytes >= sizeof(int)) {
    p.tile_counter = static_cast<int*>(fp.workspace);
    cudaError_t err = cudaMemsetAsync(p.tile_counter, 0, sizeof(int), stream);
    if (err != cudaSuccess) return err;
  }
  constexpr float kLog2e = 1.4426950408889634f;
  if (kSoftcap) {
    p.softcap_scale = fp.softmax_scale / fp.mask.softcap;
    p.scale_log2 = fp.mask.softcap * kLog2e;
  } else {
    p.softcap_scale = 0.f;
    p.scale_log2 = fp.softmax_scale * kLog2e;
  }
  return cudaSuccess;
}

// Persistent launch: min(tiles, SMs) CTAs of Traits::kNumThreads with Traits::kSmemBytes of dynamic
// smem. The >48 KB opt-in is per device, remembered per (Traits, kSoftcap) instantiation.
template <class Traits, bool kSoftcap, class Params>
cudaError_t launch_persistent(void (*kernel)(Params), const Params& p, int num_sms, cudaStream_t stream) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  static std::atomic<uint64_t> smem_attr_set{0};
  const uint64_t dev_bit = dev < 64 ? (uint64_t(1) << dev) : 0;
  if (dev_bit == 0 || !(smem_attr_set.load(std::memory_order_relaxed) & dev_bit)) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes);
    if (err != cudaSuccess) return err;
    smem_attr_set.fetch_or(dev_bit, std::memory_order_relaxed);
  }
  if (num_sms <= 0) {
    err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev);
    if (err != cudaSuccess) return err;
  }
  const int grid = p.num_tiles < num_sms ? p.num_tiles : num_sms;
  if (grid <= 0) return cudaSuccess;
  kernel<<<grid, Traits::kNumThreads, Traits::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <class Traits, bool kSoftcap>
cudaError_t launch_fwd_sm90(const FwdParams& fp, cudaStream_t stream) {
  using Element = typename Traits::Element;
  using Params = typename Traits::Params;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;

  auto mQ = fwd_gmem_tensor<Element const>(fp.q, fp.seqlen_q, fp.head_dim, fp.heads_q, fp.batch,
                                           fp.q_row_stride, fp.q_head_stride, fp.q_batch_stride);
  auto mK = fwd_gmem_tensor<Element const>(fp.k, fp.seqlen_k, fp.head_dim, fp.heads_k, fp.batch,
                                           fp.k_row_stride, fp.k_head_stride, fp.k_batch_stride);
  auto mV = fwd_gmem_tensor<Element const>(fp.v, fp.seqlen_k, fp.head_dim, fp.heads_k, fp.batch,
                                           fp.v_row_stride, fp.v_head_stride, fp.v_batch_stride);
  auto mO = fwd_gmem_tensor<Element>(fp.out, fp.seqlen_q, fp.head_dim, fp.heads_q, fp.batch,
                                     fp.o_row_stride, fp.o_head_stride, fp.o_batch_stride);
  Params p;
  p.tma_q = make_tma_copy(SM90_TMA_LOAD{}, mQ, typename Traits::SmemLayoutQ{},
                          Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{});
  p.tma_k = make_tma_copy(SM90_TMA_LOAD{}, mK, take<0, 2>(typename Traits::SmemLayoutK{}),
                          Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{});
  p.tma_v = make_tma_copy(SM90_TMA_LOAD{}, mV, take<0, 2>(typename Traits::SmemLayoutV{}),
                          Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{});
  p.tma_o = make_tma_copy(SM90_TMA_STORE{}, mO, typename Traits::SmemLayoutO{},
                          Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{});
  // Separate sO measured +10-15% at seq 512-2k and equal at >= 4k vs storing O through sQ
  // (RESULTS.md v4); the aliased protocol remains for hdim 192/256, where sO does not fit.
  p.separate_o = Traits::kSeparateO;
  cudaError_t err = fill_fwd_params<kBlockM, kSoftcap>(p, fp, stream);
  if (err != cudaSuccess) return err;
  return launch_persistent<Traits, kSoftcap>(fwd_sm90_kernel<Traits, kSoftcap>, p, fp.num_sms, stream);
}

template <class Config, class = void>
struct HasMaskedTraits : std::false_type {};
template <class Config>
struct HasMaskedTraits<Config, std::void_t<typename Config::MaskedTraits>> : std::true_type {};

// A window limit (causal is window_right = 0) that hides part of the key range, on short keys.
inline bool use_masked_tile(const FwdParams& p) {
  constexpr int kMaxSeqlenK = 2048;
  const bool cuts = (p.mask.window_right >= 0 && p.mask.window_right < p.seqlen_k) ||
                    (p.mask.window_left >= 0 && p.mask.window_left < p.seqlen_q + p.seqlen_k);
  return cuts && p.seqlen_k <= kMaxSeqlenK;
}

template <typename Element, int kHeadDim>
cudaError_t run_fwd_sm90_hdim(const FwdParams& p, cudaStream_t stream) {
  using Config = FwdConfig<Element, kHeadDim>;
  auto launch = [&](auto traits_tag) {
    using Traits = decltype(traits_tag);
    if (p.mask.softcap != 0.f) return launch_fwd_sm90<Traits, true>(p, stream);
    return launch_fwd_sm90<Traits, false>(p, stream);
  };
  if constexpr (HasMaskedTraits<Config>::value) {
    if (use_masked_tile(p)) return launch(typename Config::MaskedTraits{});
  }
  return launch(typename Config::Traits{});
}

}  // namespace jax_flash3::sm90

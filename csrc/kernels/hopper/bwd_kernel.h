// jax_flash3 Hopper (sm_90a) attention backward: preprocess, main dQ/dK/dV kernel, dQ convert.
//
// Main kernel: one CTA per (key block of kBlockN rows, KV head, batch); it loops over the query
// heads of its GQA group and the query blocks that can see its keys, so dK/dV of a KV head are
// summed over the group in registers (no per-query-head copies, no dK/dV atomics).
// Warp specialized: warpgroup 0 is the producer (24 registers): its warp 0 issues the TMA loads
// (K, V once; Q, dO and the 1-D bulk copies of LSE, dPsum per query block into a 2-stage ring
// with full/empty mbarriers), its warp 1 is the dQ writer. Warpgroups 1 and 2 (240 registers)
// run all five GEMMs on WGMMA:
//   S^T  = K Q^T      (SS)      dP^T = V dO^T   (SS)      -- rows = keys, so the fragments hold P^T
//   dV  += P^T dO     (RS for hdim <= 128: P^T straight from the S^T accumulator registers)
//   dK  += dS^T Q     (RS likewise)
//   dQ   = dS K       (SS: dS goes through shared memory, it spans both warpgroups' keys)
// and meet once per query block, at the named barrier that publishes dS (double-buffered).
// With P^T/dS^T in registers (hdim <= 128) dV is issued before that barrier, then dQ before dK,
// and the dQ tile is staged in smem while dK runs. For hdim 96/128 without softcap the
// elementwise passes also overlap the GEMMs: P^T is computed while dP^T runs, and dV is issued
// before dS^T is computed. The elementwise passes exist masked and unmasked; only query blocks
// that a mask limit (sequence end, causal diagonal, window edge) cuts through run the masked one.
// dQ is summed in fp32 in a zeroed workspace: the MMA warpgroups stage each dQ tile in smem
// (fragment order; hdim 192/256 in the Q/dO buffers of the stage just consumed) and the dQ writer
// issues a bulk reduce-add (cp.reduce.async.bulk .add.f32). With `deterministic` the writer adds a
// query block's tiles in a fixed key-block order (right to left) behind a per-(batch, head,
// query block) semaphore, so only the writer ever spins.
#pragma once

#include <algorithm>

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>

#include "../params.h"
#include "acc_store.h"
#include "bwd_tile.h"

namespace jax_flash3 {
namespace bwd_sm90 {

using namespace cute;

constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------------------------
// Traits
// ---------------------------------------------------------------------------------------------

template <class Element, int kK>
constexpr auto smem_atom_k_major() {
  if constexpr (kK % 64 == 0) return GMMA::Layout_K_SW128_Atom<Element>{};
  else if constexpr (kK % 32 == 0) return GMMA::Layout_K_SW64_Atom<Element>{};
  else return GMMA::Layout_K_SW32_Atom<Element>{};
}
template <class Element, int kMN>
constexpr auto smem_atom_mn_major() {
  if constexpr (kMN % 64 == 0) return GMMA::Layout_MN_SW128_Atom<Element>{};
  else if constexpr (kMN % 32 == 0) return GMMA::Layout_MN_SW64_Atom<Element>{};
  else return GMMA::Layout_MN_SW32_Atom<Element>{};
}

template <class Element_, int kHeadDim_, bool kSoftcap_, int kBlockM_ = block_m(kHeadDim_)>
struct BwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = block_n(kHeadDim);
  // Warpgroup 0 is the producer (warp 0: TMA loads; warp 1: dQ bulk reduce-adds), warpgroups 1
  // and 2 run the MMAs. kThreads (the MMA threads) fixes the dQ fragment order.
  static constexpr int kNumWG = 2;
  static constexpr int kThreads = 128 * kNumWG;
  static constexpr int kThreadsTotal = kThreads + 128;
  static constexpr int kProducerRegs = 24;
  static constexpr int kMmaRegs = 240;
  static constexpr int kStages = 2;  // Q/dO/LSE/dPsum double buffer
  static constexpr bool kSoftcap = kSoftcap_;
  // dK/dV GEMMs take P^T/dS^T from registers when each WG owns whole key rows of S^T.
  static constexpr bool kDkvRS = kHeadDim <= 128;
  // dQ: split the query rows between the WGs when there are 128 of them, else split D. A query
  // block that is not a multiple of 64 rows (80) computes dQ^T = K^T dS^T (M = D, N = kBlockM).
  static constexpr bool kDqSplitM = kBlockM >= 128;
  static constexpr bool kDqSwapAB = kBlockM % 64 != 0;
  static_assert(!kDqSwapAB || (kDkvRS && !kDqSplitM && kHeadDim == 128), "80-row blocks: hdim 128 only");
  // dQ partial sums leave through a shared-memory tile and a bulk reduce-add
  // (cp.reduce.async.bulk .add.f32, done by the TMA unit) instead of per-thread atomics. The tile
  // is kept in thread-fragment order (conflict-free 16-byte stores); the convert kernel undoes it.
  // hdim 192/256 have no smem left for their own fp32 tile: it is staged in the Q and dO buffers
  // of the stage just consumed (exactly 2 x kBlockM x hd x 2 bytes), and that stage is handed
  // back to the producer only once the reduce has read them.
  static constexpr bool kDqInStage = kHeadDim >= 192;
  // Overlap the elementwise P / dS^T passes with the dP^T and dV GEMMs (needs P^T/dS^T in
  // registers; softcap keeps the single pass, its tanh' would need another fragment). Not at
  // kBlockM = 128 (hdim 64): the extra live fp32 P spills there and measured 2% slower.
  static constexpr bool kOverlapSdP = kDkvRS && !kSoftcap && kBlockM == 64;

  using BM = Int<kBlockM>;
  using BN = Int<kBlockN>;
  using HD = Int<kHeadDim>;

  using SdPAtomLayout = std::conditional_t<kDkvRS, Layout<Shape<_2, _1, _1>>, Layout<Shape<_1, _2, _1>>>;
  using SdPTile = std::conditional_t<kDkvRS, Shape<_64, BM, HD>, Shape<_64, Int<kBlockM / 2>, HD>>;
  using TiledMmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, SdPTile, GMMA::Major::K, GMMA::Major::K>(),
      SdPAtomLayout{}));

  using DkvTile = std::conditional_t<kDkvRS, Shape<_64, HD, BM>, Shape<_64, Int<kHeadDim / 2>, BM>>;
  using TiledMmaDkv = std::conditional_t<
      kDkvRS,
      decltype(make_tiled_mma(GMMA::rs_op_selector<Element, Element, float, DkvTile, GMMA::Major::K,
                                                   GMMA::Major::MN>(),
                              Layout<Shape<_2, _1, _1>>{})),
      decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, DkvTile, GMMA::Major::K,
                                                   GMMA::Major::MN>(),
                              Layout<Shape<_1, _2, _1>>{}))>;

  using DqTile = std::conditional_t<
      kDqSwapAB, Shape<_64, BM, BN>,
      std::conditional_t<kDqSplitM, Shape<_64, HD, BN>, Shape<_64, Int<kHeadDim / 2>, BN>>>;
  using DqAtomLayout =
      std::conditional_t<kDqSplitM || kDqSwapAB, Layout<Shape<_2, _1, _1>>, Layout<Shape<_1, _2, _1>>>;
  // A = dS (query-contiguous, MN-major), B = K^T; swapped: A = K^T (D-contiguous), B = dS^T.
  using TiledMmaDq = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, DqTile, GMMA::Major::MN, GMMA::Major::MN>(),
      DqAtomLayout{}));
  // The dQ accumulator tile: (kBlockM, hd), or (hd, kBlockM) when swapped.
  using DqAccShape = std::conditional_t<kDqSwapAB, Shape<HD, BM>, Shape<BM, HD>>;

  // The swizzle atom of the hd-contiguous tiles must also tile the hd/2 columns a WG takes when
  // a GEMM splits hd between the WGs (dQ for hdim != 64; dK/dV for hdim 192/256): 96 -> 48
  // needs the 32-byte swizzle, 192 -> 96 the 64-byte one.
  static constexpr int kHdAtom = kHeadDim == 64 ? 64 : kHeadDim / 2;
  // Q and dO: (kBlockM, hd, stages), hd contiguous (K-major for S^T/dP^T; read transposed,
  // MN-major, as the B operand of dK/dV).
  using SmemLayoutQ = decltype(tile_to_shape(smem_atom_k_major<Element, kHdAtom>(),
                                             Shape<BM, HD, Int<kStages>>{}));
  using SmemLayoutQ1 = decltype(tile_to_shape(smem_atom_k_major<Element, kHdAtom>(), Shape<BM, HD>{}));
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_layout(Shape<HD, BM, Int<kStages>>{},
                                 Stride<BM, _1, Int<kBlockM * kHeadDim>>{})));
  // K and V: (kBlockN, hd); K read transposed (MN-major) as the B operand of dQ.
  using SmemLayoutK = decltype(tile_to_shape(smem_atom_k_major<Element, kHdAtom>(), Shape<BN, HD>{}));
  using SmemLayoutKt = decltype(composition(SmemLayoutK{}, make_layout(Shape<HD, BN>{}, Stride<BN, _1>{})));
  // dS (and P when not RS): (kBlockM, kBlockN) with the query index contiguous: MN-major A of dQ,
  // K-major A (as dS^T) of dK.
  using SmemLayoutdS = decltype(tile_to_shape(smem_atom_mn_major<Element, kBlockM>(), Shape<BM, BN>{}));
  using SmemLayoutdSt = decltype(composition(SmemLayoutdS{}, make_layout(Shape<BN, BM>{}, Stride<BM, _1>{})));

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>> q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>> dout;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>> k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>> v;
    // dS (and P) double-buffered by iteration parity: one warpgroup may write the next dS while
    // the other still runs its dQ GEMM on the last one.
    alignas(1024) cute::array_aligned<Element, 2 * cosize_v<SmemLayoutdS>> ds;
    alignas(1024) cute::array_aligned<Element, kDkvRS ? 8 : 2 * cosize_v<SmemLayoutdS>> p;
    alignas(128) float dq[kDqInStage ? 4 : kBlockM * kHeadDim];
    alignas(16) float lse[kStages][kBlockM];
    alignas(16) float dpsum[kStages][kBlockM];
    alignas(8) uint64_t bar_kv;                // K, V landed (TMA transaction barrier)
    alignas(8) uint64_t bar_q[kStages];        // Q, dO, LSE, dPsum of a stage landed
    alignas(8) uint64_t bar_q_empty[kStages];  // the stage may be refilled
    alignas(8) uint64_t bar_dq_full[kStages];  // a dQ tile is staged (by stage if kDqInStage)
    alignas(8) uint64_t bar_dq_empty;          // smem.dq has been read by the reduce
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 232448, "over the 227 KB of shared memory a block can have");
  static constexpr int kDsElems = cosize_v<SmemLayoutdS>;
  // Arrivals that free a Q/dO stage: every MMA thread after its GEMMs, or (kDqInStage) the dQ
  // writer once the reduce has read the dQ tile staged there.
  static constexpr int kQEmptyArrivals = kDqInStage ? 1 : kThreads;

  // TMA: global tensors are (seq, d, heads, batch) views of the (B, S, H, D) inputs; rows past
  // the sequence and columns past the real head dim are zero-filled by the copy engine.
  using GmemShape = Shape<int32_t, int32_t, int32_t, int32_t>;
  using GmemStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemTensor = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemShape{}, GmemStride{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutQ1{}, Shape<BM, HD>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutK{}, Shape<BN, HD>{}, _1{}));
  // dK / dV leave through the K / V tiles (free after the last GEMM) and a TMA store each; rows
  // past the sequence and columns past the real head dim are clipped by the copy engine.
  using GmemTensorOut = decltype(make_tensor(make_gmem_ptr(static_cast<Element*>(nullptr)), GmemShape{}, GmemStride{}));
  using TmaKStore = decltype(make_tma_copy(SM90_TMA_STORE{}, GmemTensorOut{}, SmemLayoutK{}, Shape<BN, HD>{}, _1{}));
  static constexpr uint32_t kTmaBytesQdO = 2 * kBlockM * kHeadDim * sizeof(Element) + 2 * kBlockM * sizeof(float);
  static constexpr uint32_t kTmaBytesKV = 2 * kBlockN * kHeadDim * sizeof(Element);
};

// ---------------------------------------------------------------------------------------------
// Kernel arguments (a plain struct passed by value)
// ---------------------------------------------------------------------------------------------

struct BwdArgs {
  BwdParams p;
  float* dq_accum;
  float* lse_log2;
  float* dpsum;
  int* semaphore;
  int64_t seq_pad;
  int n_blocks;
  int m_blocks;
  float scale_log2;     // softmax_scale * log2(e)             (no softcap)
  float softcap_in;     // softmax_scale / softcap             (softcap)
  float softcap_out;    // softcap * log2(e)                   (softcap)
  // CTA order (non-deterministic calls with a window limit, where key blocks differ in work):
  // 0 keeps blockIdx.x = key block. Otherwise the grid is walked in sections of `lpt_heads`
  // (batch, KV head) pairs whose Q/dO/dQ fit in L2, key blocks outermost within a section, the
  // key blocks that see the most query blocks first (ascending, or descending if lpt_reverse).
  int lpt_heads;
  int lpt_reverse;
};

// ---------------------------------------------------------------------------------------------
// Small device helpers
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void bulk_reduce_add_f32(float* gdst, const float* ssrc, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gdst),
               "r"(cast_smem_ptr_to_uint(ssrc)), "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void bulk_load_1d(void* sdst, const void* gsrc, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
          cast_smem_ptr_to_uint(sdst)),
      "l"(gsrc), "r"(bytes), "r"(cast_smem_ptr_to_uint(bar))
      : "memory");
}
__device__ __forceinline__ void bulk_wait_read_all() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ int floor_div(int a, int b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Reinterpret an SM90 fp32 accumulator layout ((2,2,V),M,N) as the RS A-operand layout
// ((2,2,2),M,(V/2)*N) of a k=16 WGMMA: two 8-column groups of C form one 16-wide K slice of A.
template <class Layout>
__device__ __forceinline__ auto acc_to_a_layout(Layout l) {
  auto l0 = get<0>(l);                          // (2,2,V)
  auto v = logical_divide(get<2>(l0), _2{});    // (2,V/2)
  return make_layout(make_layout(get<0>(l0), get<1>(l0), get<0>(v)), get<1>(l),
                     coalesce(make_layout(get<1>(v), get<2>(l))));
}

// kARegs: A is a register fragment (RS WGMMA) rather than a smem descriptor.
template <bool kZeroInit, bool kARegs = false, class TiledMma, class TA, class TB, class TC>
__device__ __forceinline__ void wgmma_gemm(TiledMma& mma, TA const& tA, TB const& tB, TC& tC) {
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(tA));
  warpgroup_fence_operand(tC);
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTLASS_PRAGMA_UNROLL
  for (int k = 0; k < size<2>(tA); ++k) {
    cute::gemm(mma, tA(_, _, k), tB(_, _, k), tC);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(tC);
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(tA));
}

// ---------------------------------------------------------------------------------------------
// Preprocess, one CTA per (kPreRows padded query rows, query head, batch):
//   - zeroes those rows of the fp32 dQ accumulator and their deterministic-order semaphore (the
//     main kernel reduce-adds into them), so no separate memset pass or launch is needed;
//   - dpsum = rowsum(dO * O) - dlse and lse_log2 = lse * log2(e) (+inf for an empty row or a
//     padding row, so that P = exp2(. - lse_log2) = 0 there). A row is read by a group of `lanes`
//     lanes (a power of two, 8 elements each); 32-bit index arithmetic (the grid carries b, h).
// ---------------------------------------------------------------------------------------------

constexpr int kPreRows = 64;  // = the semaphore granularity (WorkspaceLayout)

template <class Element, int kHeadDim>
__global__ void __launch_bounds__(256) bwd_preprocess_kernel(BwdArgs a) {
  const BwdParams& p = a.p;
  const int r0 = blockIdx.x * kPreRows, h = blockIdx.y, b = blockIdx.z;
  const int seq_pad = int(a.seq_pad);
  const int64_t bh = int64_t(b) * p.heads_q + h;
  {
    const int rows = min(kPreRows, seq_pad - r0);
    float4* acc = reinterpret_cast<float4*>(a.dq_accum + (bh * seq_pad + r0) * kHeadDim);
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int i = threadIdx.x; i < rows * (kHeadDim / 4); i += blockDim.x) acc[i] = zero;
    if (threadIdx.x == 0 && int(blockIdx.x) < seq_pad / kPreRows) {
      a.semaphore[bh * (seq_pad / kPreRows) + blockIdx.x] = 0;
    }
  }
  const int dv = p.head_dim_v;
  int lanes = 1;
  while (lanes * 8 < dv && lanes < 32) lanes *= 2;
  const int lane = threadIdx.x % 32, sub = lane % lanes;
  const Element* o_bh = reinterpret_cast<const Element*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride;
  const Element* do_bh = reinterpret_cast<const Element*>(p.dout) + b * p.o_batch_stride + h * p.o_head_stride;
  // Every lane of a warp runs the same number of passes (kPreRows is a multiple of the rows a
  // warp covers), so the group shuffles below always have the whole warp.
  for (int rr = threadIdx.x / lanes; rr < kPreRows; rr += blockDim.x / lanes) {
    const int i = r0 + rr;
    float acc = 0.f;
    if (i < p.seqlen_q) {
      const Element* o = o_bh + int64_t(i) * p.o_row_stride;
      const Element* dout = do_bh + int64_t(i) * p.o_row_stride;
      for (int d = sub * 8; d < dv; d += lanes * 8) {
        uint4 ov = *reinterpret_cast<const uint4*>(o + d);
        uint4 dov = *reinterpret_cast<const uint4*>(dout + d);
        const Element* oe = reinterpret_cast<const Element*>(&ov);
        const Element* de = reinterpret_cast<const Element*>(&dov);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc += float(oe[e]) * float(de[e]);
      }
    }
    for (int s = lanes / 2; s > 0; s /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (sub == 0 && i < seq_pad) {
      float lse2 = INFINITY, dps = 0.f;
      if (i < p.seqlen_q) {
        const int64_t lse_idx = bh * p.seqlen_q + i;
        const float lse = p.lse[lse_idx];
        dps = acc - (p.dlse ? p.dlse[lse_idx] : 0.f);
        lse2 = lse == -INFINITY ? INFINITY : lse * kLog2e;
      }
      a.lse_log2[bh * seq_pad + i] = lse2;
      a.dpsum[bh * seq_pad + i] = dps;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dQ convert: dq = dq_accum * softmax_scale, to the input dtype. The accumulator tiles are in
// fragment order: one CTA per (query block, head, batch); thread t reads the float4s it (as a
// main-kernel thread) wrote and knows their (row, col) from the same dQ TiledMma partition. The
// converted tile is assembled in smem and leaves as 16-byte row stores (8 elements of a row):
// straight from the fragments, stores are 4 bytes wide (2 bytes for the transposed 80-row tiles,
// whose adjacent values are adjacent queries).
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads) bwd_convert_dq_frag_kernel(BwdArgs a) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kHeadDim = Traits::kHeadDim, kThreads = Traits::kThreads;
  const BwdParams& p = a.p;
  const int m = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
  typename Traits::TiledMmaDq mma_dq;
  auto thr_dq = mma_dq.get_slice(tid);
  Tensor tdQcdQ = thr_dq.partition_C(make_identity_tensor(typename Traits::DqAccShape{}));
  constexpr int kVals = decltype(size(tdQcdQ))::value;
  static_assert(kVals % 4 == 0, "float4 chunks");
  const float* tile = a.dq_accum + ((int64_t(b) * p.heads_q + h) * a.seq_pad + int64_t(m) * kBlockM) * kHeadDim;
  Element* dq = reinterpret_cast<Element*>(p.dq) + b * p.q_batch_stride + h * p.q_head_stride;
  const float scale = p.softmax_scale;
  // Row pitch in elements: rows stay 16-byte aligned, and the 8 rows (or 4 query rows when
  // transposed) one fragment store instruction touches fall in different banks.
  constexpr int kPitch = kHeadDim + 8;
  __shared__ alignas(16) Element tile_s[kBlockM * kPitch];
  CUTLASS_PRAGMA_UNROLL
  for (int v4 = 0; v4 < kVals / 4; ++v4) {
    const float4 x = *reinterpret_cast<const float4*>(tile + (int64_t(v4) * kThreads + tid) * 4);
    const float xs[4] = {x.x, x.y, x.z, x.w};
    if constexpr (Traits::kDqSwapAB) {
      CUTLASS_PRAGMA_UNROLL
      for (int e = 0; e < 4; ++e) {
        const auto c = tdQcdQ(v4 * 4 + e);  // (d, query)
        tile_s[get<1>(c) * kPitch + get<0>(c)] = Element(xs[e] * scale);
      }
    } else {
      CUTLASS_PRAGMA_UNROLL
      for (int e = 0; e < 4; e += 2) {
        const auto c = tdQcdQ(v4 * 4 + e);  // (query, d), d and d + 1
        *reinterpret_cast<uint32_t*>(&tile_s[get<0>(c) * kPitch + get<1>(c)]) =
            pack2<Element>(xs[e] * scale, xs[e + 1] * scale);
      }
    }
  }
  __syncthreads();
  constexpr int kChunks = kBlockM * kHeadDim / 8;
  for (int i = tid; i < kChunks; i += kThreads) {
    const int r = i / (kHeadDim / 8), c8 = (i % (kHeadDim / 8)) * 8;
    const int row = m * kBlockM + r;
    if (row < p.seqlen_q && c8 < p.head_dim) {  // head_dim is a multiple of 8
      *reinterpret_cast<uint4*>(dq + int64_t(row) * p.q_row_stride + c8) =
          *reinterpret_cast<const uint4*>(&tile_s[r * kPitch + c8]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Main kernel
// ---------------------------------------------------------------------------------------------

template <class Traits>
struct MainArgs {
  BwdArgs a;
  typename Traits::TmaQ tma_q, tma_do;
  typename Traits::TmaK tma_k, tma_v;
  typename Traits::TmaKStore tma_dk, tma_dv;
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreadsTotal, 1) bwd_main_kernel(MainArgs<Traits> const __grid_constant__ ma) {
  const BwdArgs& a = ma.a;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kThreads = Traits::kThreads;
  constexpr bool kDkvRS = Traits::kDkvRS;
  constexpr bool kOverlapSdP = Traits::kOverlapSdP;
  using SharedStorage = typename Traits::SharedStorage;

  extern __shared__ __align__(1024) char smem_raw[];
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(smem_raw);

  const BwdParams& p = a.p;
  // Deterministic mode runs the key blocks right to left and adds each query block's dQ from the
  // highest key block down ("shortest processing time first", FA3 #1893): with a causal mask the
  // CTA that owns a query block's first turn is then always one step ahead, so nobody waits long.
  int n_block = p.deterministic ? a.n_blocks - 1 - int(blockIdx.x) : int(blockIdx.x);
  int hk = blockIdx.y;
  int b = blockIdx.z;
  if (a.lpt_heads > 0) {
    // Longest first, section by section (see BwdArgs::lpt_heads): CTAs start in linear order.
    const int nb = a.n_blocks;
    const int lin = int(blockIdx.x) + nb * (int(blockIdx.y) + p.heads_k * int(blockIdx.z));
    const int sec = lin / (nb * a.lpt_heads), r = lin % (nb * a.lpt_heads);
    const int in_sec = min(a.lpt_heads, p.heads_k * p.batch - sec * a.lpt_heads);
    const int n = r / in_sec, hb = sec * a.lpt_heads + r % in_sec;
    n_block = a.lpt_reverse ? nb - 1 - n : n;
    hk = hb % p.heads_k;
    b = hb / p.heads_k;
  }
  const int tid = threadIdx.x;
  const int group = p.heads_q / p.heads_k;
  const int Sq = p.seqlen_q, Sk = p.seqlen_k;
  const int off = Sk - Sq;
  const int wl = p.mask.window_left, wr = p.mask.window_right;

  // Query blocks that can see this key block (an interval, see n_range below for the converse).
  const int j_min = n_block * kBlockN;
  const int j_max = min(Sk, j_min + kBlockN) - 1;
  int m_lo = 0, m_hi = a.m_blocks - 1;
  if (wr >= 0) {
    const int t = j_min - off - wr;  // first query row that sees key j_min
    m_lo = max(0, floor_div(t, kBlockM));
    if (t > Sq - 1) m_hi = -1;
  }
  if (wl >= 0) {
    const int u = j_max + wl - off;  // last query row that sees key j_max
    m_hi = min(m_hi, floor_div(u, kBlockM));
  }
  const int num_m = max(0, m_hi - m_lo + 1);
  const int total_iters = num_m * group;

  Tensor sQ = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sQt = make_tensor(make_smem_ptr(smem.q.data()), typename Traits::SmemLayoutQt{});
  Tensor sdO = make_tensor(make_smem_ptr(smem.dout.data()), typename Traits::SmemLayoutQ{});
  Tensor sdOt = make_tensor(make_smem_ptr(smem.dout.data()), typename Traits::SmemLayoutQt{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutK{});
  Tensor sKt = make_tensor(make_smem_ptr(smem.k.data()), typename Traits::SmemLayoutKt{});
  Tensor sV = make_tensor(make_smem_ptr(smem.v.data()), typename Traits::SmemLayoutK{});

  // TMA views: (seq, d, heads, batch) coordinate tensors, tiled by (block rows, hd).
  Tensor mQ = ma.tma_q.get_tma_tensor(make_shape(Sq, p.head_dim, p.heads_q, p.batch));
  Tensor mdO = ma.tma_do.get_tma_tensor(make_shape(Sq, p.head_dim_v, p.heads_q, p.batch));
  Tensor mK = ma.tma_k.get_tma_tensor(make_shape(Sk, p.head_dim, p.heads_k, p.batch));
  Tensor mV = ma.tma_v.get_tma_tensor(make_shape(Sk, p.head_dim_v, p.heads_k, p.batch));
  Tensor gK = local_tile(mK(_, _, hk, b), Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(n_block, _0{}));
  Tensor gV = local_tile(mV(_, _, hk, b), Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(n_block, _0{}));
  auto [tKgK, tKsK] = tma_partition(ma.tma_k, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
  auto [tVgV, tVsV] = tma_partition(ma.tma_v, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

  // The producer thread issues every load: Q, dO (TMA) and LSE, dPsum (1-D bulk) of iteration
  // `it` (query head of the group, query block) into `stage`, all completing on bar_q[stage].
  auto load_q_do = [&](int it, int stage) {
    const int g = it / num_m;
    const int m = m_lo + it % num_m;
    const int hq = hk * group + g;
    Tensor gQ = local_tile(mQ(_, _, hq, b), Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m, _0{}));
    Tensor gdO = local_tile(mdO(_, _, hq, b), Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m, _0{}));
    auto [tQgQ, tQsQ] = tma_partition(ma.tma_q, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    auto [tdOgdO, tdOsdO] =
        tma_partition(ma.tma_do, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sdO), group_modes<0, 2>(gdO));
    uint64_t& bar = smem.bar_q[stage];
    cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&bar, Traits::kTmaBytesQdO);
    copy(ma.tma_q.with(bar), tQgQ, tQsQ(_, stage));
    copy(ma.tma_do.with(bar), tdOgdO, tdOsdO(_, stage));
    const int64_t ws_row = (int64_t(b) * p.heads_q + hq) * a.seq_pad + int64_t(m) * kBlockM;
    bulk_load_1d(smem.lse[stage], a.lse_log2 + ws_row, kBlockM * sizeof(float), &bar);
    bulk_load_1d(smem.dpsum[stage], a.dpsum + ws_row, kBlockM * sizeof(float), &bar);
  };

  if (tid == 0) {
    cutlass::arch::ClusterTransactionBarrier::init(&smem.bar_kv, 1);
    for (int s = 0; s < Traits::kStages; ++s) {
      cutlass::arch::ClusterTransactionBarrier::init(&smem.bar_q[s], 1);
      cutlass::arch::ClusterBarrier::init(&smem.bar_q_empty[s], Traits::kQEmptyArrivals);
      cutlass::arch::ClusterBarrier::init(&smem.bar_dq_full[s], kThreads);
    }
    cutlass::arch::ClusterBarrier::init(&smem.bar_dq_empty, 1);
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();  // the last CTA-wide barrier: the roles below sync through mbarriers only

  // The fp32 dQ tile of an iteration: tile offset in dq_accum, its semaphore and its turn (the
  // deterministic order adds a query block's tiles in decreasing key block).
  auto dq_tile = [&](int it, int64_t& tile_off, int*& sem, int& turn) {
    const int g = it / num_m;
    const int m = m_lo + it % num_m;
    const int hq = hk * group + g;
    const int row0 = m * kBlockM;
    tile_off = ((int64_t(b) * p.heads_q + hq) * a.seq_pad + row0) * kHeadDim;
    sem = a.semaphore + (int64_t(b) * p.heads_q + hq) * (a.seq_pad / 64) + m;
    // Key blocks that see query block m form [n_lo, n_hi] (the converse of [m_lo, m_hi] above).
    int n_hi = a.n_blocks - 1;
    if (wr >= 0) n_hi = min(n_hi, floor_div(min(Sq, row0 + kBlockM) - 1 + off + wr, kBlockN));
    turn = n_hi - n_block;
  };
  // kDqInStage: the fp32 dQ tile of stage s lives in Q[s] (first half) and dO[s] (second half).
  auto dq_stage_lo = [&](int s) { return reinterpret_cast<float*>(smem.q.data() + s * kBlockM * kHeadDim); };
  auto dq_stage_hi = [&](int s) { return reinterpret_cast<float*>(smem.dout.data() + s * kBlockM * kHeadDim); };

  if (tid < 128) {
    // ------------------------------------------------------------------ producer warpgroup
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (tid == 0 && total_iters > 0) {
      // Loads: K and V once, then Q/dO/LSE/dPsum per iteration into a free stage.
      cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&smem.bar_kv, Traits::kTmaBytesKV);
      copy(ma.tma_k.with(smem.bar_kv), tKgK, tKsK);
      copy(ma.tma_v.with(smem.bar_kv), tVgV, tVsV);
      for (int it = 0; it < total_iters; ++it) {
        const int stage = it & 1, use = it >> 1;
        if (use > 0) cutlass::arch::ClusterBarrier::wait(&smem.bar_q_empty[stage], (use - 1) & 1);
        load_q_do(it, stage);
      }
    } else if (tid == 32) {
      // dQ writer: one bulk reduce-add per staged tile (two for kDqInStage), in the deterministic
      // order when asked; the MMA warps never wait on a bulk copy or a semaphore.
      for (int it = 0; it < total_iters; ++it) {
        const int stage = it & 1;
        if constexpr (Traits::kDqInStage) {
          cutlass::arch::ClusterBarrier::wait(&smem.bar_dq_full[stage], (it >> 1) & 1);
        } else {
          cutlass::arch::ClusterBarrier::wait(&smem.bar_dq_full[0], it & 1);
        }
        int64_t tile_off;
        int* sem;
        int turn;
        dq_tile(it, tile_off, sem, turn);
        if (p.deterministic) {
          while (ld_acquire(sem) != turn) {
          }
        }
        if constexpr (Traits::kDqInStage) {
          constexpr int kHalf = kBlockM * kHeadDim / 2;  // floats: one stage of Q (or dO)
          bulk_reduce_add_f32(a.dq_accum + tile_off, dq_stage_lo(stage), kHalf * sizeof(float));
          bulk_reduce_add_f32(a.dq_accum + tile_off + kHalf, dq_stage_hi(stage), kHalf * sizeof(float));
          bulk_wait_read_all();
          cutlass::arch::ClusterBarrier::arrive(&smem.bar_q_empty[stage]);
        } else {
          bulk_reduce_add_f32(a.dq_accum + tile_off, smem.dq, kBlockM * kHeadDim * sizeof(float));
          bulk_wait_read_all();
          cutlass::arch::ClusterBarrier::arrive(&smem.bar_dq_empty);
        }
        if (p.deterministic) {
          bulk_wait_all();  // the adds have landed in gmem (not only left smem) before the next turn
          asm volatile("fence.proxy.async.global;\n" ::: "memory");
          __threadfence();
          atomicAdd(sem, 1);
        }
      }
      bulk_wait_all();  // smem must outlive the bulk reads; also flushes before the convert kernel
    }
    return;
  }

  // -------------------------------------------------------------------- MMA warpgroups
  cutlass::arch::warpgroup_reg_alloc<Traits::kMmaRegs>();
  const int mt = tid - 128;  // MMA thread index, 0 .. kThreads-1
  constexpr int kBarDs = 1, kBarQdoRead = 2, kBarEpilogue = 3;  // named barriers over the MMA threads

  typename Traits::TiledMmaSdP mma_sdp;
  typename Traits::TiledMmaDkv mma_dkv;
  typename Traits::TiledMmaDq mma_dq;
  auto thr_sdp = mma_sdp.get_slice(mt);
  auto thr_dkv = mma_dkv.get_slice(mt);
  auto thr_dq = mma_dq.get_slice(mt);

  // S^T / dP^T operands
  Tensor tSrK = thr_sdp.make_fragment_A(thr_sdp.partition_A(sK));
  Tensor tSrQ = thr_sdp.make_fragment_B(thr_sdp.partition_B(sQ));    // (.., stages)
  Tensor tdPrV = thr_sdp.make_fragment_A(thr_sdp.partition_A(sV));
  Tensor tdPrdO = thr_sdp.make_fragment_B(thr_sdp.partition_B(sdO));
  // dV / dK operands (B: dO^T, Q^T; A from registers or P^T/dS^T in smem)
  Tensor tdVrdOt = thr_dkv.make_fragment_B(thr_dkv.partition_B(sdOt));
  Tensor tdKrQt = thr_dkv.make_fragment_B(thr_dkv.partition_B(sQt));
  // dQ operand: K^T (B, or A when swapped)
  auto make_dq_k = [&] {
    if constexpr (Traits::kDqSwapAB) return thr_dq.make_fragment_A(thr_dq.partition_A(sKt));
    else return thr_dq.make_fragment_B(thr_dq.partition_B(sKt));
  };
  Tensor tdQrKt = make_dq_k();

  Tensor tdVrdV = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
  Tensor tdKrdK = partition_fragment_C(mma_dkv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
  clear(tdVrdV);
  clear(tdKrdK);
  mma_dkv.accumulate_ = GMMA::ScaleOut::One;

  Tensor cS = make_identity_tensor(Shape<Int<kBlockN>, Int<kBlockM>>{});
  Tensor tScS = thr_sdp.partition_C(cS);

  const float scale_log2 = a.scale_log2;
  const float softcap_in = a.softcap_in, softcap_out = a.softcap_out;

  for (int it = 0; it < total_iters; ++it) {
    const int stage = it & 1;
    const int m = m_lo + it % num_m;
    // dS (and P) buffers of this iteration's parity
    Element* ds_ptr = smem.ds.data() + stage * Traits::kDsElems;
    Element* p_ptr = smem.p.data() + (kDkvRS ? 0 : stage * Traits::kDsElems);
    Tensor sdS = make_tensor(make_smem_ptr(ds_ptr), typename Traits::SmemLayoutdS{});
    Tensor sdSt = make_tensor(make_smem_ptr(ds_ptr), typename Traits::SmemLayoutdSt{});
    Tensor sPt = make_tensor(make_smem_ptr(p_ptr), typename Traits::SmemLayoutdSt{});
    Tensor tdSsdS = thr_sdp.partition_C(sdSt);

    if (it == 0) cutlass::arch::ClusterTransactionBarrier::wait(&smem.bar_kv, 0);
    cutlass::arch::ClusterTransactionBarrier::wait(&smem.bar_q[stage], (it >> 1) & 1);

    Tensor tSrS = partition_fragment_C(mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
    Tensor tdPrdP = partition_fragment_C(mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
    wgmma_gemm<true>(mma_sdp, tSrK, tSrQ(_, _, _, stage), tSrS);
    wgmma_gemm<true>(mma_sdp, tdPrV, tdPrdO(_, _, _, stage), tdPrdP);

    // P^T and dS^T, elementwise in fp32.
    const int row0 = m * kBlockM;
    const bool full_block = j_min + kBlockN <= Sk &&
                            (wr < 0 || row0 + off + wr >= j_min + kBlockN - 1) &&
                            (wl < 0 || row0 + kBlockM - 1 + off - wl <= j_min);
    const float* s_lse = smem.lse[stage];
    const float* s_dpsum = smem.dpsum[stage];
    auto visible = [&](int i) {
      const int qi = row0 + get<1>(tScS(i)), kj = j_min + get<0>(tScS(i));
      return kj < Sk && (wl < 0 || kj >= qi + off - wl) && (wr < 0 || kj <= qi + off + wr);
    };
    Tensor rP = make_tensor_like<Element>(tSrS);
    Tensor rdS = make_tensor_like<Element>(tdPrdP);
    // Stages this iteration's fp32 dQ tile in smem (fragment order) and hands it to the dQ writer.
    auto stage_dq = [&](auto& tdQrdQ) {
      constexpr int kVals = decltype(size(tdQrdQ))::value;
      static_assert(kVals % 8 == 0, "float4 chunks, split evenly between the two staging halves");
      if constexpr (!Traits::kDqInStage) {
        // The writer has read smem.dq for the previous tile.
        if (it > 0) cutlass::arch::ClusterBarrier::wait(&smem.bar_dq_empty, (it - 1) & 1);
      }
      CUTLASS_PRAGMA_UNROLL
      for (int v4 = 0; v4 < kVals / 4; ++v4) {
        const float4 x = make_float4(tdQrdQ(4 * v4), tdQrdQ(4 * v4 + 1), tdQrdQ(4 * v4 + 2), tdQrdQ(4 * v4 + 3));
        if constexpr (Traits::kDqInStage) {
          constexpr int kHalfV4 = kVals / 8;  // v4 < kHalfV4 lands in the first half of the tile
          float* dst = v4 < kHalfV4 ? dq_stage_lo(stage) : dq_stage_hi(stage);
          *reinterpret_cast<float4*>(&dst[((v4 % kHalfV4) * kThreads + mt) * 4]) = x;
        } else {
          *reinterpret_cast<float4*>(&smem.dq[(v4 * kThreads + mt) * 4]) = x;
        }
      }
      cutlass::arch::fence_view_async_shared();  // generic smem writes -> bulk copy (async proxy)
      cutlass::arch::ClusterBarrier::arrive(&smem.bar_dq_full[Traits::kDqInStage ? stage : 0]);
    };
    // Blocks that no mask limit cuts through (most of them) skip the elementwise mask: the pass
    // that computes P is instantiated twice, masked and unmasked, behind one branch (dS needs no
    // mask of its own: it is P times a finite value).
    if constexpr (kOverlapSdP) {
      // Overlapped order (dK/dV from registers, no softcap): P while dP^T is still on the tensor
      // cores, then dV += P^T dO issued before dS^T is computed. S^T's registers keep P in fp32
      // for dS.
      warpgroup_wait<1>();
      auto p_pass = [&](auto masked) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(tSrS); ++i) {
          float pval = exp2f(tSrS(i) * scale_log2 - s_lse[get<1>(tScS(i))]);
          if constexpr (decltype(masked)::value) pval = visible(i) ? pval : 0.f;
          tSrS(i) = pval;
          rP(i) = Element(pval);
        }
      };
      if (full_block) p_pass(cute::false_type{});
      else p_pass(cute::true_type{});
      Tensor tdVrP = make_tensor(rP.data(), acc_to_a_layout(rP.layout()));
      wgmma_gemm<false, true>(mma_dkv, tdVrP, tdVrdOt(_, _, _, stage), tdVrdV);
      warpgroup_wait<1>();  // dP^T has landed; dV may still run
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(tSrS); ++i) {
        rdS(i) = Element(tSrS(i) * (tdPrdP(i) - s_dpsum[get<1>(tScS(i))]));
      }
    } else {
      warpgroup_wait<0>();
      // One pass: each fp32 S/dP value dies as soon as its 16-bit P/dS exists (register pressure).
      auto pds_pass = [&](auto masked) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(tSrS); ++i) {
          const int il = get<1>(tScS(i));
          float pval, dtanh = 1.f;
          if constexpr (Traits::kSoftcap) {
            const float t = tanh_approx(tSrS(i) * softcap_in);
            pval = exp2f(t * softcap_out - s_lse[il]);
            dtanh = 1.f - t * t;
          } else {
            pval = exp2f(tSrS(i) * scale_log2 - s_lse[il]);
          }
          if constexpr (decltype(masked)::value) pval = visible(i) ? pval : 0.f;
          float ds = pval * (tdPrdP(i) - s_dpsum[il]);
          if constexpr (Traits::kSoftcap) ds *= dtanh;
          rP(i) = Element(pval);
          rdS(i) = Element(ds);
        }
      };
      if (full_block) pds_pass(cute::false_type{});
      else pds_pass(cute::true_type{});
      if constexpr (kDkvRS) {
        // dV += P^T dO needs only this warpgroup's P^T: it runs while dS is stored and published.
        Tensor tdVrP = make_tensor(rP.data(), acc_to_a_layout(rP.layout()));
        wgmma_gemm<false, true>(mma_dkv, tdVrP, tdVrdOt(_, _, _, stage), tdVrdV);
      } else {
        Tensor tPsP = thr_sdp.partition_C(sPt);
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < size(rP) / 2; ++i) {
          *reinterpret_cast<uint32_t*>(&tPsP(2 * i)) = *reinterpret_cast<const uint32_t*>(&rP(2 * i));
        }
      }
    }
    // Pairs of accumulator values are adjacent queries: adjacent in the query-contiguous dS.
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(rdS) / 2; ++i) {
      *reinterpret_cast<uint32_t*>(&tdSsdS(2 * i)) = *reinterpret_cast<const uint32_t*>(&rdS(2 * i));
    }
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(kThreads, kBarDs);  // both warpgroups' dS (and P) are in smem

    if constexpr (!kDkvRS) {
      Tensor tdVrPt = thr_dkv.make_fragment_A(thr_dkv.partition_A(sPt));
      Tensor tdKrdSt = thr_dkv.make_fragment_A(thr_dkv.partition_A(sdSt));
      wgmma_gemm<false>(mma_dkv, tdVrPt, tdVrdOt(_, _, _, stage), tdVrdV);
      wgmma_gemm<false>(mma_dkv, tdKrdSt, tdKrQt(_, _, _, stage), tdKrdK);
    }
    Tensor tdQrdQ = partition_fragment_C(mma_dq, typename Traits::DqAccShape{});
    if constexpr (Traits::kDqSwapAB) {
      Tensor tdQrdSt = thr_dq.make_fragment_B(thr_dq.partition_B(sdS));
      wgmma_gemm<true>(mma_dq, tdQrKt, tdQrdSt, tdQrdQ);
    } else {
      Tensor tdQrdS = thr_dq.make_fragment_A(thr_dq.partition_A(sdS));
      wgmma_gemm<true>(mma_dq, tdQrdS, tdQrKt, tdQrdQ);
    }
    if constexpr (kDkvRS) {
      // dK += dS^T Q goes behind dQ (dV was issued before the barrier); the dQ tile is staged
      // while dK runs.
      Tensor tdKrdS = make_tensor(rdS.data(), acc_to_a_layout(rdS.layout()));
      wgmma_gemm<false, true>(mma_dkv, tdKrdS, tdKrQt(_, _, _, stage), tdKrdK);
      warpgroup_wait<1>();
      stage_dq(tdQrdQ);
      warpgroup_wait<0>();
      warpgroup_fence_operand(rP);
      warpgroup_fence_operand(rdS);
      cutlass::arch::ClusterBarrier::arrive(&smem.bar_q_empty[stage]);  // done with Q/dO here
    } else {
      warpgroup_wait<0>();
      // The RS GEMMs read rP / rdS until this wait: keep their registers live up to here.
      warpgroup_fence_operand(rP);
      warpgroup_fence_operand(rdS);
      if constexpr (Traits::kDqInStage) {
        // Both warpgroups' GEMMs have finished reading this stage's Q and dO.
        cutlass::arch::NamedBarrier::sync(kThreads, kBarQdoRead);
      } else {
        cutlass::arch::ClusterBarrier::arrive(&smem.bar_q_empty[stage]);  // done with Q/dO here
      }
      stage_dq(tdQrdQ);
    }
  }


  // Epilogue: dK (scaled) and dV through the K and V tiles in smem (stmatrix), then one TMA
  // store each. Both warpgroups must be past their last GEMM (K, V are GEMM operands); the dQ
  // writer never reads K or V.
  cutlass::arch::NamedBarrier::sync(kThreads, kBarEpilogue);
  stage_acc_to_smem<Element>(mma_dkv, tdKrdK, sK, mt, p.softmax_scale);
  stage_acc_to_smem<Element>(mma_dkv, tdVrdV, sV, mt);
  cutlass::arch::fence_view_async_shared();  // generic-proxy writes -> visible to TMA
  cutlass::arch::NamedBarrier::sync(kThreads, kBarEpilogue);
  if (mt == 0) {
    Tensor mdK = ma.tma_dk.get_tma_tensor(make_shape(Sk, p.head_dim, p.heads_k, p.batch));
    Tensor mdV = ma.tma_dv.get_tma_tensor(make_shape(Sk, p.head_dim_v, p.heads_k, p.batch));
    Tensor gdK = local_tile(mdK(_, _, hk, b), Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(n_block, _0{}));
    Tensor gdV = local_tile(mdV(_, _, hk, b), Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(n_block, _0{}));
    auto tma_dk = ma.tma_dk.get_slice(_0{});
    auto tma_dv = ma.tma_dv.get_slice(_0{});
    copy(ma.tma_dk, tma_dk.partition_S(sK), tma_dk.partition_D(gdK));
    copy(ma.tma_dv, tma_dv.partition_S(sV), tma_dv.partition_D(gdV));
    tma_store_arrive();
    tma_store_wait<0>();  // the CTA's smem must outlive the stores' reads
  }
}

// ---------------------------------------------------------------------------------------------
// Host launch for one (dtype, head dim)
// ---------------------------------------------------------------------------------------------

#ifndef JAX_FLASH3_BWD_LPT_SECTION_MB
#define JAX_FLASH3_BWD_LPT_SECTION_MB 32
#endif
constexpr int kLptSectionMB = JAX_FLASH3_BWD_LPT_SECTION_MB;

// One backward call with the main kernel of `Traits` (its query-block height fixes the workspace
// layout and the dQ convert).
template <class Traits>
cudaError_t launch_bwd_tile(const BwdParams& p, cudaStream_t stream) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim, kBlockM = Traits::kBlockM;
  const WorkspaceLayout ws(p.batch, p.heads_q, p.seqlen_q, kHeadDim, kBlockM);
  char* base = static_cast<char*>(p.workspace);
  BwdArgs a;
  a.p = p;
  a.dq_accum = reinterpret_cast<float*>(base + ws.dq_accum);
  a.lse_log2 = reinterpret_cast<float*>(base + ws.lse_log2);
  a.dpsum = reinterpret_cast<float*>(base + ws.dpsum);
  a.semaphore = reinterpret_cast<int*>(base + ws.semaphore);
  a.seq_pad = ws.seq_pad;
  constexpr int kBlockN = block_n(kHeadDim);
  a.n_blocks = (p.seqlen_k + kBlockN - 1) / kBlockN;
  a.m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  const float cap = p.mask.softcap;
  a.scale_log2 = p.softmax_scale * kLog2e;
  a.softcap_in = cap > 0.f ? p.softmax_scale / cap : 0.f;
  a.softcap_out = cap * kLog2e;
  a.lpt_heads = 0;
  a.lpt_reverse = 0;
  if (!p.deterministic && (p.mask.window_left >= 0 || p.mask.window_right >= 0)) {
    // Q, dO (16-bit) and the fp32 dQ accumulator of one KV head's query heads: ~8 bytes per
    // element; a section keeps about kLptSectionMB of them in L2.
    const int64_t per_hb = int64_t(p.heads_q / p.heads_k) * ws.seq_pad * kHeadDim * 8;
    const int64_t hb = int64_t(p.heads_k) * p.batch;
    a.lpt_heads = int(std::max<int64_t>(1, std::min<int64_t>(hb, (int64_t(kLptSectionMB) << 20) / per_hb)));
    // Only a left limit: the last key blocks see the most query blocks.
    a.lpt_reverse = p.mask.window_right < 0 ? 1 : 0;
  }

  cudaError_t err = cudaSuccess;
  {
    const dim3 grid(unsigned((ws.seq_pad + kPreRows - 1) / kPreRows), unsigned(p.heads_q), unsigned(p.batch));
    bwd_preprocess_kernel<Element, kHeadDim><<<grid, 256, 0, stream>>>(a);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (a.n_blocks > 0) {
    auto launch_main = [&]() -> cudaError_t {
      auto kernel = bwd_main_kernel<Traits>;
      constexpr int smem = Traits::kSmemBytes;
      cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      if (e != cudaSuccess) return e;
      using GT = typename Traits::GmemTensor;
      auto gview = [&](const void* ptr, int seq, int d, int heads, int64_t rs, int64_t hs, int64_t bs) {
        GT t = make_tensor(make_gmem_ptr(static_cast<Element const*>(ptr)),
                           make_layout(make_shape(seq, d, heads, p.batch), make_stride(rs, _1{}, hs, bs)));
        return t;
      };
      using GTO = typename Traits::GmemTensorOut;
      auto gview_out = [&](void* ptr, int seq, int d, int heads, int64_t rs, int64_t hs, int64_t bs) {
        GTO t = make_tensor(make_gmem_ptr(static_cast<Element*>(ptr)),
                            make_layout(make_shape(seq, d, heads, p.batch), make_stride(rs, _1{}, hs, bs)));
        return t;
      };
      MainArgs<Traits> ma{a,
                          make_tma_copy(SM90_TMA_LOAD{}, gview(p.q, p.seqlen_q, p.head_dim, p.heads_q, p.q_row_stride, p.q_head_stride, p.q_batch_stride),
                                        typename Traits::SmemLayoutQ1{}, Shape<Int<Traits::kBlockM>, Int<kHeadDim>>{}, _1{}),
                          make_tma_copy(SM90_TMA_LOAD{}, gview(p.dout, p.seqlen_q, p.head_dim_v, p.heads_q, p.o_row_stride, p.o_head_stride, p.o_batch_stride),
                                        typename Traits::SmemLayoutQ1{}, Shape<Int<Traits::kBlockM>, Int<kHeadDim>>{}, _1{}),
                          make_tma_copy(SM90_TMA_LOAD{}, gview(p.k, p.seqlen_k, p.head_dim, p.heads_k, p.k_row_stride, p.k_head_stride, p.k_batch_stride),
                                        typename Traits::SmemLayoutK{}, Shape<Int<Traits::kBlockN>, Int<kHeadDim>>{}, _1{}),
                          make_tma_copy(SM90_TMA_LOAD{}, gview(p.v, p.seqlen_k, p.head_dim_v, p.heads_k, p.v_row_stride, p.v_head_stride, p.v_batch_stride),
                                        typename Traits::SmemLayoutK{}, Shape<Int<Traits::kBlockN>, Int<kHeadDim>>{}, _1{}),
                          make_tma_copy(SM90_TMA_STORE{}, gview_out(p.dk, p.seqlen_k, p.head_dim, p.heads_k, p.k_row_stride, p.k_head_stride, p.k_batch_stride),
                                        typename Traits::SmemLayoutK{}, Shape<Int<Traits::kBlockN>, Int<kHeadDim>>{}, _1{}),
                          make_tma_copy(SM90_TMA_STORE{}, gview_out(p.dv, p.seqlen_k, p.head_dim_v, p.heads_k, p.v_row_stride, p.v_head_stride, p.v_batch_stride),
                                        typename Traits::SmemLayoutK{}, Shape<Int<Traits::kBlockN>, Int<kHeadDim>>{}, _1{})};
      dim3 grid(a.n_blocks, p.heads_k, p.batch);
      kernel<<<grid, Traits::kThreadsTotal, smem, stream>>>(ma);
      return cudaGetLastError();
    };
    if ((err = launch_main()) != cudaSuccess) return err;
  }
  using ConvTraits = BwdTraits<Element, kHeadDim, false, kBlockM>;
  dim3 grid(a.m_blocks, p.heads_q, p.batch);
  bwd_convert_dq_frag_kernel<ConvTraits><<<grid, ConvTraits::kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class Element, int kHeadDim>
cudaError_t launch_bwd(const BwdParams& p, cudaStream_t stream) {
  if (p.mask.softcap > 0.f) {
    return launch_bwd_tile<BwdTraits<Element, kHeadDim, true, block_m_for(kHeadDim, true)>>(p, stream);
  }
  return launch_bwd_tile<BwdTraits<Element, kHeadDim, false, block_m_for(kHeadDim, false)>>(p, stream);
}

}  // namespace bwd_sm90
}  // namespace jax_flash3

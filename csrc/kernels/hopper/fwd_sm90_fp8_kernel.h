// jax_flash3: FP8 (e4m3) forward kernel for Hopper (sm_90a), bfloat16 out.
//
// Same CTA structure, pipelines, schedulers and consumer schedule as the BF16/FP16 kernel
// (fwd_sm90_kernel.h, whose helpers this file reuses): a producer warpgroup, 2-3 consumer
// warpgroups of 64 rows, SS QK^T + RS PV WGMMA (both e4m3 x e4m3 -> f32), intra-warpgroup overlap,
// pingpong, persistent grid, O stored through smem + TMA. What differs:
//   * V: FP8 WGMMA takes only K-major smem operands, so the PV GEMM reads Vt (Dv x keys, keys
//     contiguous), keys permuted within each 16-key group (fp8_key_of_slot). With vt_in_kernel,
//     one thread of the producer warpgroup TMA-loads V row-major (keys x Dv) into a staging
//     buffer and all 128 producer threads transpose it into Vt with ldmatrix.trans, byte
//     permutes and stmatrix (transpose_v_tile). Otherwise a pre-pass (fwd_sm90_fp8.cu) has
//     written Vt to the workspace and the producer TMA-loads it (fwd_sm90_fp8.h says which when). With that permutation the f32 accumulator of S,
//     packed four at a time with cvt.rn.satfinite.e4m3x2.f32, is exactly the PV A fragment: no
//     shuffles. Masks and descales index S by true key columns; only V's side is permuted.
//   * Descales: kBlockN == 128 keys, so a K block has one k_descale; q_descale is per row. Their
//     product times softmax_scale * log2(e) is each row's log2 scale for the block (with softcap,
//     the multiplier inside tanh). v_descale folds into the final 1 / rowsum.
//   * P is scaled by 2^5 (the running max is offset by 5), and the running max may lag a block's
//     by up to 3 (rescale_o), so P spans [0, 256] and uses more of e4m3's range; the offset
//     cancels in O and is accounted for in LSE.
//   * O is bfloat16: through its own smem buffer and a TMA store where shared memory allows
//     (d <= 128), with direct 32-bit stores from registers at d 256.
//   * Split tail (fwd_sm90_fp8.h): where all tiles see the same key blocks, the tiles of the last
//     round may come as pieces of their key range; pieces meet in the workspace and the last one
//     stores the tile.
#pragma once

#include <type_traits>

#include <cuda_fp8.h>

#include "kernels/hopper/fwd_sm90_fp8.h"
#include "kernels/hopper/fwd_sm90_kernel.h"

namespace jax_flash3::sm90 {

// Largest GMMA K-major swizzle atom whose row (kK elements of T) it divides, by bytes.
template <typename T, int kK>
constexpr auto k_major_smem_atom_bytes() {
  constexpr int kBytes = kK * int(sizeof_bits_v<T>) / 8;
  if constexpr (kBytes % 128 == 0) return GMMA::Layout_K_SW128_Atom<T>{};
  else if constexpr (kBytes % 64 == 0) return GMMA::Layout_K_SW64_Atom<T>{};
  else if constexpr (kBytes % 32 == 0) return GMMA::Layout_K_SW32_Atom<T>{};
  else return GMMA::Layout_K_INTER_Atom<T>{};
}

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_, bool kCanTranspose_ = true,
          bool kRowSumMma_ = false>
struct Fp8FwdTraits {
  using Element = cutlass::float_e4m3_t;
  using OutElement = cutlass::bfloat16_t;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kNumMmaWG = kBlockM / 64;
  static constexpr int kNumMmaThreads = kNumMmaWG * 128;
  static constexpr int kNumThreads = kNumMmaThreads + 128;
  static_assert(kBlockM % 64 == 0 && (kNumMmaWG == 2 || kNumMmaWG == 3));
  static_assert(kBlockN == kFp8ScaleBlock, "one k_descale per K block");
  static_assert(kHeadDim % 32 == 0);
  // The producer warpgroup transposes V, so it keeps 40 registers (at 24 it spills), except at
  // d 256, whose O accumulator needs 240 per consumer thread (232 spills ~100 B more and measured
  // slower); there the transpose, used only for short query blocks, takes the spills. A kernel
  // without the transpose (pre-pass only) needs 24: its leader thread only issues TMA loads.
  static constexpr int kProducerRegs = kHeadDim > 128 || !kCanTranspose_ ? 24 : 40;
  static constexpr int kConsumerRegs =
      kNumMmaWG == 3 ? (kProducerRegs == 24 ? 160 : 152) : kProducerRegs == 24 ? 240 : 232;
  // Serial GEMMs: a consumer issues block j's QK^T only after block j - 1's PV has finished, so
  // S and the P fragment are never live together (3 warpgroups at d 128 fit their registers
  // that way); the other warpgroups keep the tensor cores busy meanwhile.
  // (d 64's 3 warpgroups keep the overlapped order: serial measured 8% slower there.)
  static constexpr bool kSerialGemms = kNumMmaWG == 3 && kHeadDim > 64;
  // setmaxnreg moves registers within what the launch allocated: 65536 / kNumThreads, rounded
  // down to 8, per thread (168 at 384 threads).
  static_assert(kProducerRegs * 128 + kConsumerRegs * kNumMmaThreads <=
                65536 / kNumThreads / 8 * 8 * kNumThreads);
  static constexpr int kRawStages = 2;  // V staging buffers (TMA -> transpose)
  // O's bf16 staging tile gets its own smem where it fits (d <= 128); at d 256 it aliases the V
  // staging buffers (64 KB either way), which then need an o_free handshake (see the producer).
  static constexpr bool kOAliasRaw = kHeadDim > 128;
  // Whether the producer can transpose V (vt_in_kernel); without it only the pre-pass path is
  // compiled.
  static constexpr bool kCanTranspose = kCanTranspose_;
  // Row sums on the tensor cores (the kernel for calls that need no exact LSE: Fp8FwdParams::
  // exact_lse false). Behind each PV GEMM a second one, P (the same A registers) times an 8 x
  // kBlockN tile of e4m3 ones in shared memory, leaves the block's sum_j P(i, j) in a 4-register
  // accumulator, which is then added to the fp32 row sum: the softmax has no FADD per score. That
  // accumulator is live only while the PV GEMM is, when S's registers are free. (The sums in
  // extra columns of O's accumulator instead (PV at N = kHeadDim + 8) made ptxas serialize every
  // WGMMA of the 3-warpgroup kernel (C7511) for want of registers; and kept running across blocks
  // in the FP8 accumulator they lose low bits: RESULTS.md, FP8 v5.) The sums are of the e4m3 P
  // the numerator used, so O is normalized consistently; the LSE then carries e4m3's rounding of
  // P (up to a few 1e-2 on short rows), which is why calls that return the LSE or differentiate
  // run the exact kernel.
  static constexpr bool kRowSumMma = kRowSumMma_;
  // (Only the serial order takes the sums: the overlapped one, at d 256 and in the d 128
  // in-kernel-transpose kernel, measured slower with them; RESULTS.md "FP8: row sums on the
  // tensor cores".)
  static_assert(!kRowSumMma || kSerialGemms, "kRowSumMma is built for the serial GEMM order");

  using AtomLayoutMma = Layout<Shape<Int<kNumMmaWG>, _1, _1>>;
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(),
      AtomLayoutMma{}));
  // P (registers) x Vt (smem, keys contiguous): both K-major, as FP8 WGMMA requires.
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>>(),
      AtomLayoutMma{}));
  // kRowSumMma: P x ones (kBlockN x 8, K-major in smem).
  using TiledMmaSum = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, _8, Int<kBlockN>>>(), AtomLayoutMma{}));

  using SmemAtomQK = decltype(k_major_smem_atom_bytes<Element, kHeadDim>());
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtomQK{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutK =
      decltype(tile_to_shape(SmemAtomQK{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemAtomVt = decltype(k_major_smem_atom_bytes<Element, kBlockN>());
  static_assert(std::is_same_v<SmemAtomVt, GMMA::Layout_K_SW128_Atom<Element>>,
                "transpose_v_tile writes 128-byte-swizzled Vt rows");
  using SmemLayoutVt =
      decltype(tile_to_shape(SmemAtomVt{}, Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}));
  // kRowSumMma's ones (any swizzle of them is the same bytes): one 1 KB swizzle atom at d 128.
  using SmemLayoutOnes = decltype(tile_to_shape(SmemAtomVt{}, Shape<_8, Int<kBlockN>>{}));
  // V as TMA delivers it (keys x d), swizzled like K: the transpose's ldmatrix rows (8
  // consecutive keys) then fall in distinct banks.
  using SmemLayoutVraw =
      decltype(tile_to_shape(SmemAtomQK{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kRawStages>>{}));
  using SmemLayoutO = decltype(tile_to_shape(k_major_smem_atom_bytes<OutElement, kHeadDim>(),
                                             Shape<Int<kBlockM>, Int<kHeadDim>>{}));

  // Q, K, V, O as (seqlen, d, head, batch), d contiguous.
  using GLayout = Layout<Shape<int32_t, int32_t, int32_t, int32_t>, Stride<int64_t, _1, int64_t, int64_t>>;
  using GTensorIn = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GLayout{}));
  using GTensorOut = decltype(make_tensor(make_gmem_ptr(static_cast<OutElement*>(nullptr)), GLayout{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensorIn{}, SmemLayoutQ{},
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensorIn{}, take<0, 2>(SmemLayoutK{}),
                                      Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  using TmaV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensorIn{}, take<0, 2>(SmemLayoutVraw{}),
                                      Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  using TmaVt = decltype(make_tma_copy(SM90_TMA_LOAD{}, GTensorIn{}, take<0, 2>(SmemLayoutVt{}),
                                       Shape<Int<kHeadDim>, Int<kBlockN>>{}, _1{}));
  using TmaO = decltype(make_tma_copy(SM90_TMA_STORE{}, GTensorOut{}, SmemLayoutO{},
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim;
  static constexpr uint32_t kTmaBytesKV = kBlockN * kHeadDim;

  struct Barriers {
    uint64_t q_full, q_empty;
    uint64_t k_full[kStages], k_empty[kStages];
    // Vt: filled by the producer warps' transpose (4 arrivals) or by TMA from the pre-pass's copy.
    uint64_t v_full[kStages], v_empty[kStages];
    uint64_t vraw_full[kRawStages];  // V staging: TMA transaction barrier
    uint64_t o_free;                 // kOAliasRaw: the O store has read the staging buffers
    uint64_t sched_full[2], sched_empty[2];
    int sched_tile[2];
    int split_last;  // split tail: this CTA's piece finished its tile last
  };
  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>> smem_q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>> smem_k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutVt>> smem_vt;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutVraw>> smem_vraw;
    alignas(1024) cute::array_aligned<OutElement, kOAliasRaw ? 8 : cosize_v<SmemLayoutO>> smem_o;
    alignas(1024) cute::array_aligned<Element, kRowSumMma ? cosize_v<SmemLayoutOnes> : 16> smem_ones;
    alignas(16) Barriers bar;
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(!kOAliasRaw || cosize_v<SmemLayoutO> * sizeof(OutElement) <= cosize_v<SmemLayoutVraw>,
                "O must fit in the V staging buffers it aliases");
  static_assert(kSmemBytes <= 227 * 1024, "tile does not fit in shared memory");

  struct Params : FwdParamsBase<OutElement> {
    TmaQ tma_q;
    TmaK tma_k;
    TmaV tma_v;    // V (keys x d), with vt_in_kernel
    TmaVt tma_vt;  // the pre-pass's Vt (d x key slots), otherwise
    TmaO tma_o;
    const float* q_descale;  // (B, Hq, q_scale_blocks)
    const float* k_descale;  // (B, Hk, k_scale_blocks)
    const float* v_descale;  // (B, Hk)
    int q_scale_blocks, k_scale_blocks;
    bool vt_in_kernel;
    // Split tail (fwd_sm90_fp8.h): work items past split_first are pieces of tiles; each piece
    // leaves kPieceFloats floats in split_part, split_flags counts the finished pieces per tile.
    int split_first, split_pieces;
    int* split_flags;
    float* split_part;
  };
  // Floats per piece: each consumer thread's O fragment, then its rows' max and partial sum.
  static constexpr int kPieceFloats = kNumMmaThreads * (kHeadDim / 2 + 4);
  static_assert(kBlockM == fwd_fp8_block_m(kHeadDim, kCanTranspose_) &&
                    size_t(kPieceFloats) * 4 == fwd_fp8_piece_bytes(kHeadDim, kCanTranspose_),
                "the host's split-tail workspace arithmetic (fwd_sm90_fp8.h) must match");
};

// Work item -> (tile, piece) and the piece's share of the tile's key blocks (split tail).
template <class Params>
CUTE_DEVICE int split_item(Params const& p, int item, int& piece) {
  piece = -1;  // whole tile
  if (item < p.split_first) return item;
  const int s = item - p.split_first;
  piece = s % p.split_pieces;
  return p.split_first + s / p.split_pieces;
}
CUTE_DEVICE BlockRange piece_range(BlockRange r, int piece, int pieces) {
  if (piece < 0) return r;
  const int n = r.n_max - r.n_min;
  return {r.n_min + n * piece / pieces, r.n_min + n * (piece + 1) / pieces};
}

// Tried and dropped (16k tokens, d 128): a quarter of the exp2s as an FMA-pipe cubic (MUFU
// offload) measured 750 vs 826 TFLOPs/s (H100), and on the 3-warpgroup pre-pass kernel -11% (an
// eighth: -1%; H200, RESULTS.md "FP8 split tail"); row sums on the tensor cores as ones rows in
// Vt summed across blocks in O's accumulator were 3-6% faster but biased the sums low (the FP8
// accumulator's truncation, 10% at 4k keys; H200, RESULTS.md "FP8 v5"): kRowSumMma sums one
// block per GEMM instead, and only for calls that need no exact LSE. Also measured on
// the 3-warpgroup serial loop and dropped (RESULTS.md, "FP8: where the d128 serial loop's time is
// not"): a warp vote that skips the quad-max shuffles when no row's max moves (neutral, -2% at
// 4k), exps against the kept max with a QK^T recompute when it moves (-28%, spills), the same
// checked by the row sums with a warp-level recompute (-1% to -9%; without the max at all the
// loop would run ~18% faster), and one or two softmax tokens among the consumer warpgroups (0% to
// -9%).
//
// Tile choices (smem: Q + kStages * (K + Vt) + kRawStages * V + O(bf16); limit 227 KB):
//   d 64 : 192 x 128, 3 WGs: 12 + 2*(8+8) + 2*8 + 24 = 84 KB; S 64 + P 16 + O 32 regs in 160.
//   d 128: 128 x 128, 2 WGs: 16 + 2*(16+16) + 2*16 + 32 = 144 KB (in-kernel transpose);
//          pre-pass: 192 x 128, 3 WGs with serial GEMMs: 24 + 2*(16+16) + 2*16 + 48 = 168 KB;
//          O 64 + S 64 regs (P reuses S's) in 160, the producer at 24.
//   d 256: 128 x 128, 2 WGs: 32 + 2*(32+32) + 2*32 = 224 KB, O (64 KB) aliases the V staging.
//          S 64 + P 16 + O 128 regs in 240.
// kBlockN is pinned to the 128-key descale block (one k_descale per block).
template <int kHeadDim>
struct Fp8FwdConfig;
// Traits runs either V path; TraitsPrepass, where given, is a kernel for the pre-pass path only.
// TraitsFastSum, where not void: the pre-pass kernel with row sums on the tensor cores, for calls
// that need no exact LSE (Fp8FwdParams::exact_lse false) and no softcap: +2-3% at d 128 (H200,
// RESULTS.md "FP8: row sums on the tensor cores"). At d 256 (2 warpgroups, overlapped GEMMs, 240
// registers) the same measured 9% slower (152 vs 116 B of spills), so d 256 keeps the FADDs.
template <> struct Fp8FwdConfig<64> {
  using Traits = Fp8FwdTraits<64, 192, 128, 2>;
  using TraitsPrepass = Traits;
  using TraitsFastSum = void;
};
// The pre-pass kernel has 3 consumer warpgroups (a third warp per scheduler to hide the softmax's
// latencies) and serial GEMMs to fit them in registers: +9-12% at 4k-16k tokens non-causal over
// 128 x 128 with 2 (H200). (192 x 128 with the overlapped order spilled 164 B at the 160-register
// budget and measured 688 vs 804 TFLOPs/s at 16k on the H100.)
template <> struct Fp8FwdConfig<128> {
  using Traits = Fp8FwdTraits<128, 128, 128, 2>;
  using TraitsPrepass = Fp8FwdTraits<128, 192, 128, 2, false>;
  using TraitsFastSum = Fp8FwdTraits<128, 192, 128, 2, false, true>;
};
// At d 256 the consumers' 240 registers are tight: compiling the transpose into the same kernel
// perturbs their allocation (20 -> 64 spill instructions) and cost 8% at 16k tokens with the
// pre-pass (1166 vs 1270 TFLOPs/s), so the pre-pass path gets its own kernel without it.
template <> struct Fp8FwdConfig<256> {
  using Traits = Fp8FwdTraits<256, 128, 128, 2>;
  using TraitsPrepass = Fp8FwdTraits<256, 128, 128, 2, false>;
  using TraitsFastSum = void;
};

// Max of a row's kN scores as a pairwise tree: depth log2(kN) instead of one kN-long FMNMX chain
// (+1-2% at head dim 128, 1k-16k tokens, H200; the bf16 kernel measured 1-2% slower with it).
// Template recursion keeps every index a compile-time constant (a runtime-bounded loop put the
// array in local memory).
template <int kN>
struct MaxTree {
  static constexpr int kW = kN / 2;
  template <class A>
  CUTE_DEVICE static void fold(A& m) {
    CUTE_UNROLL
    for (int j = 0; j < kW; ++j) m[j] = fmaxf(m[j], m[j + kW]);
    if constexpr (kN % 2) m[0] = fmaxf(m[0], m[kN - 1]);
    if constexpr (kW > 1) MaxTree<kW>::fold(m);
  }
};

// MaxTree's reduction on the bit patterns of floats as signed integers, three at a time with
// Hopper's DPX 3-input max (VIMNMX3): one instruction per two elements instead of one per element.
// Integer order is float order among non-negative floats and places every negative float (sign
// bit set) below them, so the result is the float max whenever that max is >= +0; the caller
// checks the sign and takes the float tree otherwise.
template <int kN>
struct IntMax3Tree {
  static constexpr int kW = kN / 3;
  static constexpr int kRem = kN - 3 * kW;
  template <class A>
  CUTE_DEVICE static void fold(A& m) {
    if constexpr (kN == 2) {
      m[0] = max(m[0], m[1]);
    } else if constexpr (kN > 2) {
      CUTE_UNROLL
      for (int j = 0; j < kW; ++j) m[j] = __vimax3_s32(m[j], m[j + kW], m[j + 2 * kW]);
      if constexpr (kRem == 1) m[0] = max(m[0], m[3 * kW]);
      if constexpr (kRem == 2) m[0] = __vimax3_s32(m[0], m[3 * kW], m[3 * kW + 1]);
      IntMax3Tree<kW>::fold(m);
    }
  }
};

// Four floats -> four e4m3 bytes of one register, a in the lowest byte (round to nearest,
// saturating: P <= 256 is far below e4m3's 448).
CUTE_DEVICE uint32_t pack_e4m3x4(float a, float b, float c, float d) {
  uint16_t lo, hi;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(b), "f"(a));
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(d), "f"(c));
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

// One V tile, staged as TMA delivers it (kBlockN keys x kHeadDim, K's swizzled layout), into one
// Vt stage (kHeadDim rows of kBlockN = 128 key slots: row `dim` is the 128-byte swizzle row at
// dim * 128, its 16-byte chunk c at c ^ (dim & 7)) by the 128 producer threads.
// A warp's unit is 16 keys (slot group g) x 32 dims:
//   * ldmatrix.x4.trans (b16) reads four 8x8 matrices of byte pairs: keys 16g + {0-7, 8-15} x
//     dims {0-15, 16-31} of the block. Lane (j = lane / 4, q = lane % 4) gets, per matrix, keys
//     2q and 2q + 1 at dims 2j and 2j + 1;
//   * two byte permutes per matrix pair give, for dim 2j and for dim 2j + 1, the keys
//     {2q, 2q + 1, 2q + 8, 2q + 9}: exactly slots 4q .. 4q + 3 of group g (fp8_key_of_slot);
//   * stmatrix.x4 writes those words as four 8x8 matrices whose rows are Vt rows.
// So 16 bytes per lane cost one ldmatrix, four PRMTs and one stmatrix.
template <int kHeadDim, class LayoutRaw>
CUTE_DEVICE void transpose_v_tile(uint32_t raw_smem, uint32_t vt_smem) {
  // Staging addresses in 32-bit shared-window arithmetic: plain offset, then the swizzle (both
  // stage bases are 1024-byte aligned, so swizzling the offset equals swizzling the address).
  const auto raw_swizzle = LayoutRaw{}.layout_a();
  const auto raw_offset = LayoutRaw{}.layout_b();
  // Thread index read here (volatile: not hoisted), so the per-lane addresses are recomputed
  // per tile rather than kept live, and spilled, across the producer's loop.
  int tid;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
  const int warp = tid / 32, lane = tid % 32;
  const int m = lane / 8, r = lane % 8;                  // matrix, and row, this lane addresses
  const int dim_lane = 16 * (m >> 1) + (m & 1) + 2 * r;  // its stmatrix row, within 32 dims
  CUTE_UNROLL
  for (int gi = 0; gi < 2; ++gi) {
    const int g = 2 * warp + gi;  // 8 slot groups, 2 per warp
    const int key = 16 * g + 8 * (m & 1) + r;
    CUTE_UNROLL
    for (int db = 0; db < kHeadDim / 32; ++db) {
      const uint32_t src =
          raw_smem + uint32_t(raw_swizzle(int(raw_offset(key, 32 * db + 16 * (m >> 1), 0))));
      uint32_t r0, r1, r2, r3;
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                   : "r"(src)
                   : "memory");
      const uint32_t dim = 32 * db + dim_lane;
      const uint32_t dst = vt_smem + dim * 128 + ((uint32_t(g) ^ (dim & 7)) << 4);
      asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(dst),
                   "r"(__byte_perm(r0, r1, 0x6420)), "r"(__byte_perm(r0, r1, 0x7531)),
                   "r"(__byte_perm(r2, r3, 0x6420)), "r"(__byte_perm(r2, r3, 0x7531))
                   : "memory");
    }
  }
}

// Named barrier of the 128 producer threads (after the epilogue and pingpong barriers).
constexpr uint32_t kBarProducer = kBarPingpong0 + 3;

template <class Traits, bool kSoftcap>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fwd_sm90_fp8_kernel(CUTE_GRID_CONSTANT typename Traits::Params const p) {
  using Element = typename Traits::Element;
  using OutElement = typename Traits::OutElement;
  using SharedStorage = typename Traits::SharedStorage;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages;
  constexpr int kNumMmaWG = Traits::kNumMmaWG;
  constexpr int kNumMmaThreads = Traits::kNumMmaThreads;
  // Consumers release smem stages one arrival per warp (after each lane's own wgmma wait):
  // 8-12 arrivals per stage instead of 256-384 on the same mbarrier word.
  constexpr int kNumMmaWarps = kNumMmaThreads / 32;
  constexpr int kNumProducerWarps = 4;
  constexpr int kRawStages = Traits::kRawStages;
  using ClusterBarrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  using NamedBarrier = cutlass::arch::NamedBarrier;

  extern __shared__ char smem_raw[];
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(smem_raw);
  auto release = [](uint64_t* bar) {
    __syncwarp();
    if ((threadIdx.x & 31) == 0) ClusterBarrier::arrive(bar);
  };

  const int warp_idx = cutlass::canonical_warp_idx_sync();
  const int wg_idx = cutlass::canonical_warp_group_idx();

  if (warp_idx == 0 && cute::elect_one_sync()) {
    prefetch_tma_descriptor(p.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(p.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(p.vt_in_kernel ? p.tma_v.get_tma_descriptor() : p.tma_vt.get_tma_descriptor());
    prefetch_tma_descriptor(p.tma_o.get_tma_descriptor());
    ClusterBarrier::init(&ss.bar.q_full, 1);
    ClusterBarrier::init(&ss.bar.q_empty, kNumMmaWarps);
    CUTE_UNROLL
    for (int s = 0; s < kStages; ++s) {
      ClusterBarrier::init(&ss.bar.k_full[s], 1);
      ClusterBarrier::init(&ss.bar.v_full[s], p.vt_in_kernel ? kNumProducerWarps : 1);
      ClusterBarrier::init(&ss.bar.k_empty[s], kNumMmaWarps);
      ClusterBarrier::init(&ss.bar.v_empty[s], kNumMmaWarps);
    }
    CUTE_UNROLL
    for (int s = 0; s < Traits::kRawStages; ++s) ClusterBarrier::init(&ss.bar.vraw_full[s], 1);
    ClusterBarrier::init(&ss.bar.o_free, 1);
    CUTE_UNROLL
    for (int s = 0; s < 2; ++s) {
      ClusterBarrier::init(&ss.bar.sched_full[s], 1);
      ClusterBarrier::init(&ss.bar.sched_empty[s], kNumMmaWarps);
    }
    cutlass::arch::fence_barrier_init();
  }
  if constexpr (Traits::kRowSumMma) {
    // e4m3 1.0 (0x38) everywhere in the ones tile; nothing writes it again.
    constexpr int kVecs = int(sizeof(ss.smem_ones)) / 16;
    uint4* ones = reinterpret_cast<uint4*>(ss.smem_ones.data());
    for (int i = threadIdx.x; i < kVecs; i += Traits::kNumThreads)
      ones[i] = make_uint4(0x38383838u, 0x38383838u, 0x38383838u, 0x38383838u);
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes -> visible to WGMMA
  }
  __syncthreads();

  Tensor sQ = make_tensor(make_smem_ptr(ss.smem_q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.smem_k.data()), typename Traits::SmemLayoutK{});
  Tensor sVt = make_tensor(make_smem_ptr(ss.smem_vt.data()), typename Traits::SmemLayoutVt{});

  if (wg_idx == 0) {
    // ------------------------------------------------------------------ producer
    // One elected thread issues every TMA load. With vt_in_kernel all 128 threads transpose the
    // staged V into Vt; otherwise the leader alone loads the pre-pass's Vt.
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    const bool transpose = Traits::kCanTranspose && p.vt_in_kernel;
    const bool leader = warp_idx == 0 && cute::elect_one_sync();
    if (!transpose && !leader) return;
    const uint32_t vt_smem = cute::cast_smem_ptr_to_uint(ss.smem_vt.data());
    const uint32_t raw_smem = cute::cast_smem_ptr_to_uint(ss.smem_vraw.data());

    Tensor mQ = p.tma_q.get_tma_tensor(make_shape(p.seqlen_q, p.head_dim, p.heads_q, p.batch));
    Tensor mK = p.tma_k.get_tma_tensor(make_shape(p.seqlen_k, p.head_dim, p.heads_k, p.batch));
    Tensor mV = p.tma_v.get_tma_tensor(make_shape(p.seqlen_k, p.head_dim, p.heads_k, p.batch));
    Tensor mVt = p.tma_vt.get_tma_tensor(make_shape(p.head_dim, p.seqlen_k, p.heads_k, p.batch));
    Tensor sVraw = make_tensor(make_smem_ptr(ss.smem_vraw.data()), typename Traits::SmemLayoutVraw{});
    int k_stage = 0, v_stage = 0, raw_stage = 0;
    uint32_t k_phase = 0, v_phase = 0, raw_phase = 0;
    int tiles_done = 0;
    // Dynamic scheduler: the leader claims the next tile and publishes it to the consumers
    // (sched_full) and, when transposing, to the other producer threads (the named barrier; the
    // slot is not rewritten before every producer thread has passed the next tile's barrier).
    auto next_tile = [&](int tile, int sched) {
      if (p.tile_counter == nullptr) return tile + int(gridDim.x);
      const int slot = sched & 1;
      if (leader) {
        const int next = atomicAdd(p.tile_counter, 1) + int(gridDim.x);
        ClusterBarrier::wait(&ss.bar.sched_empty[slot], ((sched >> 1) & 1) ^ 1);
        ss.bar.sched_tile[slot] = next;
        ClusterBarrier::arrive(&ss.bar.sched_full[slot]);
      }
      if (transpose) NamedBarrier::sync(128, kBarProducer);
      return *reinterpret_cast<volatile int*>(&ss.bar.sched_tile[slot]);
    };
    for (int item = blockIdx.x, sched = 0; item < p.num_tiles; item = next_tile(item, sched++)) {
      int m_block, head, batch, piece;
      tile_coord<Traits>(p, split_item(p, item, piece), m_block, head, batch);
      const BlockRange r = piece_range(
          block_range<kBlockM, kBlockN>(m_block, p.seqlen_q, p.seqlen_k, p.window_left, p.window_right),
          piece, p.split_pieces);
      if (r.n_min >= r.n_max) continue;
      const int head_k = head / p.group;

      Tensor gQ = local_tile(mQ(_, _, head, batch), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                             make_coord(m_block, _0{}));
      Tensor gK = local_tile(mK(_, _, head_k, batch), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                             make_coord(_, _0{}));  // (kBlockN, d, n)
      Tensor gV = local_tile(mV(_, _, head_k, batch), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                             make_coord(_, _0{}));  // (kBlockN, d, n)
      Tensor gVt = local_tile(mVt(_, _, head_k, batch), Shape<Int<kHeadDim>, Int<kBlockN>>{},
                              make_coord(_0{}, _));  // (d, kBlockN, n)
      auto tQ = tma_partition(p.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
      auto tK = tma_partition(p.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
      auto tV = tma_partition(p.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sVraw), group_modes<0, 2>(gV));
      auto tVt = tma_partition(p.tma_vt, _0{}, Layout<_1>{}, group_modes<0, 2>(sVt), group_modes<0, 2>(gVt));
      Tensor tQg = get<0>(tQ);
      Tensor tQs = get<1>(tQ);
      Tensor tKg = get<0>(tK);
      Tensor tKs = get<1>(tK);
      Tensor tVg = get<0>(tV);
      Tensor tVs = get<1>(tV);

      // Leader only.
      auto load_k = [&](int n) {
        ClusterBarrier::wait(&ss.bar.k_empty[k_stage], k_phase ^ 1);
        TxBarrier::arrive_and_expect_tx(&ss.bar.k_full[k_stage], Traits::kTmaBytesKV);
        copy(p.tma_k.with(ss.bar.k_full[k_stage], 0, TMA::CacheHintSm90::EVICT_LAST), tKg(_, n),
             tKs(_, k_stage));
        if (++k_stage == kStages) { k_stage = 0; k_phase ^= 1; }
      };
      // Leader only, pre-pass mode: Vt straight into its stage.
      auto load_vt = [&](int n) {
        ClusterBarrier::wait(&ss.bar.v_empty[v_stage], v_phase ^ 1);
        TxBarrier::arrive_and_expect_tx(&ss.bar.v_full[v_stage], Traits::kTmaBytesKV);
        copy(p.tma_vt.with(ss.bar.v_full[v_stage], 0, TMA::CacheHintSm90::EVICT_LAST),
             get<0>(tVt)(_, n), get<1>(tVt)(_, v_stage));
        if (++v_stage == kStages) { v_stage = 0; v_phase ^= 1; }
      };
      // Leader only, transpose mode; the staging stage was last read before the previous
      // kBarProducer sync.
      int raw_load_stage = raw_stage;
      auto load_v_raw = [&](int n) {
        TxBarrier::arrive_and_expect_tx(&ss.bar.vraw_full[raw_load_stage], Traits::kTmaBytesKV);
        copy(p.tma_v.with(ss.bar.vraw_full[raw_load_stage], 0, TMA::CacheHintSm90::EVICT_LAST),
             tVg(_, n), tVs(_, raw_load_stage));
        if (++raw_load_stage == kRawStages) raw_load_stage = 0;
      };

      const BlockOrder order(r, m_block, p.rotate_blocks);
      if (leader) {
        load_k(order(0));
        if (tiles_done > 0) ClusterBarrier::wait(&ss.bar.q_empty, (tiles_done - 1) & 1);
        TxBarrier::arrive_and_expect_tx(&ss.bar.q_full, Traits::kTmaBytesQ);
        copy(p.tma_q.with(ss.bar.q_full, 0, TMA::CacheHintSm90::EVICT_FIRST), tQg, tQs);
        if (transpose) {
          // O of the previous tile may still be in the staging buffers (kOAliasRaw).
          if (Traits::kOAliasRaw && tiles_done > 0)
            ClusterBarrier::wait(&ss.bar.o_free, (tiles_done - 1) & 1);
          load_v_raw(order(0));
        }
      }
      if (!transpose) {
        for (int j = 1; j < order.count(); ++j) {
          load_k(order(j));
          load_vt(order(j - 1));
        }
        load_vt(order(order.count() - 1));
        ++tiles_done;
        continue;
      }
      // (compiled only where the kernel can transpose: otherwise unreachable)
      if constexpr (Traits::kCanTranspose) for (int j = 0; j < order.count(); ++j) {
        if (leader && j + 1 < order.count()) {
          load_k(order(j + 1));
          load_v_raw(order(j + 1));
        }
        __syncwarp();
        ClusterBarrier::wait(&ss.bar.vraw_full[raw_stage], raw_phase);
        ClusterBarrier::wait(&ss.bar.v_empty[v_stage], v_phase ^ 1);
        transpose_v_tile<kHeadDim, typename Traits::SmemLayoutVraw>(
            raw_smem + raw_stage * Traits::kTmaBytesKV, vt_smem + v_stage * Traits::kTmaBytesKV);
        cutlass::arch::fence_view_async_shared();  // generic-proxy writes -> visible to WGMMA
        __syncwarp();
        if ((threadIdx.x & 31) == 0) ClusterBarrier::arrive(&ss.bar.v_full[v_stage]);
        // Every thread's reads of this staging stage are done before the leader reloads it.
        NamedBarrier::sync(128, kBarProducer);
        if (++v_stage == kStages) { v_stage = 0; v_phase ^= 1; }
        if (++raw_stage == kRawStages) { raw_stage = 0; raw_phase ^= 1; }
      }
      ++tiles_done;
    }
    return;
  }

  // -------------------------------------------------------------------- consumers
  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
  const int mma_tid = threadIdx.x - 128;
  const int mma_wg = wg_idx - 1;
  if (mma_wg == kNumMmaWG - 1) NamedBarrier::arrive(256, kBarPingpong0 + 0);
  auto pingpong_wait = [&] { NamedBarrier::sync(256, kBarPingpong0 + mma_wg); };
  auto pingpong_pass = [&] { NamedBarrier::arrive(256, kBarPingpong0 + (mma_wg + 1) % kNumMmaWG); };

  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(mma_tid);
  auto thr_pv = mma_pv.get_thread_slice(mma_tid);

  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);    // (MMA, MMA_M, MMA_K)
  Tensor tSrK = thr_qk.partition_fragment_B(sK);    // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);   // (MMA, MMA_N, MMA_K, stage)
  Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
  Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  // P as the e4m3 A operand: ((4, 2, 2), MMA_M = 1, kBlockN / 32), 4 registers per 32 keys.
  Tensor tOrP = make_tensor<Element>(partition_shape_A(mma_pv, Shape<Int<kBlockM>, Int<kBlockN>>{}));
  static_assert(decltype(size(tOrP))::value == decltype(size(tSrS))::value);
  // kRowSumMma: P x ones -> the block's row sums (every column of a row holds its whole sum).
  typename Traits::TiledMmaSum mma_sum;
  Tensor sOnes = make_tensor(make_smem_ptr(ss.smem_ones.data()), typename Traits::SmemLayoutOnes{});
  Tensor tSumB = mma_sum.get_thread_slice(mma_tid).partition_fragment_B(sOnes);  // (MMA, 1, MMA_K)
  Tensor tSum = partition_fragment_C(mma_sum, Shape<Int<kBlockM>, _8>{});
  Tensor Sum = make_tensor(tSum.data(), acc_rowcol(tSum.layout()));
  static_assert(!Traits::kRowSumMma || decltype(size<1>(tSumB))::value == 1);

  Tensor S = make_tensor(tSrS.data(), acc_rowcol(tSrS.layout()));
  Tensor O = make_tensor(tOrO.data(), acc_rowcol(tOrO.layout()));
  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor cS = make_tensor(tScS.data(), acc_rowcol(tScS.layout()));
  constexpr int kRows = decltype(size<0>(S))::value;
  constexpr int kCols = decltype(size<1>(S))::value;
  // Running max of the log2-scaled logits (-inf: nothing visible yet), row sums relative to
  // (running max - kMaxOffset), O rescale factors, per-row q multipliers.
  float row_max[kRows], row_sum[kRows], row_scale[kRows], row_mult[kRows];
  // P = exp2(score - (max - kMaxOffset)) <= 2^(kMaxOffset + kRescaleSlack) = 256 (e4m3 max 448)
  // with the stale max the slack allows (rescale_o in fwd_sm90_kernel.h).
  constexpr float kMaxOffset = 5.f;
  constexpr float kRescaleSlack = 3.f;
  // The serial loop (d 128 pre-pass kernel) skips the integer max's negative-partial vote while
  // every row's running max is >= -kRescaleSlack (max_safe below): +4% at d 128 16k, within 1%
  // elsewhere there; the same at d 64 measured 3% slower, so the other kernels vote every block
  // (H200; RESULTS.md "FP8: block max on integer bits").
  constexpr bool kSkipSafeVote = Traits::kSerialGemms;

  int k_stage = 0, v_stage = 0;
  uint32_t k_phase = 0, v_phase = 0;
  int tiles_done = 0;
  auto next_tile = [&](int tile, int sched) {
    if (p.tile_counter == nullptr) return tile + int(gridDim.x);
    const int slot = sched & 1;
    ClusterBarrier::wait(&ss.bar.sched_full[slot], (sched >> 1) & 1);
    const int next = ss.bar.sched_tile[slot];
    release(&ss.bar.sched_empty[slot]);
    return next;
  };

  for (int item = blockIdx.x, sched = 0; item < p.num_tiles; item = next_tile(item, sched++)) {
    int m_block, head, batch, piece;
    const int tile = split_item(p, item, piece);
    tile_coord<Traits>(p, tile, m_block, head, batch);
    // (a piece is never empty: the host plan gives each at least kFp8MinPieceBlocks blocks)
    const BlockRange r = piece_range(
        block_range<kBlockM, kBlockN>(m_block, p.seqlen_q, p.seqlen_k, p.window_left, p.window_right),
        piece, p.split_pieces);

    if (r.n_min >= r.n_max) {
      write_empty_tile<kBlockM, kNumMmaThreads>(p, m_block, head, batch, mma_tid);
      continue;
    }
    const int head_k = head / p.group;
    const float* k_descale = p.k_descale + (int64_t(batch) * p.heads_k + head_k) * p.k_scale_blocks;
    const float v_descale = p.v_descale[int64_t(batch) * p.heads_k + head_k];

    const TileMask<kRows, kBlockM, kBlockN> mask(p, cS, m_block);
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const int row = m_block * kBlockM + get<0>(cS(i, 0));
      row_max[i] = -INFINITY;
      row_sum[i] = 0.f;
      const int qb = min(row, p.seqlen_q - 1) / kFp8ScaleBlock;
      const float qd = p.q_descale[(int64_t(batch) * p.heads_q + head) * p.q_scale_blocks + qb];
      row_mult[i] = qd * (kSoftcap ? p.softcap_scale : p.scale_log2);
    }

    // Whether every row of this warp has a running max >= -kRescaleSlack (set by each softmax_step
    // for the next where kSkipSafeVote): then a block max below 0 cannot move any row's max (it
    // moves only past max + slack >= 0), so a wrong negative integer max needs no fallback, and
    // the step skips the negative-partial vote.
    bool max_safe = false;

    // softcap, mask, online softmax of block n with k descale kd. `needs_mask`: the block's mask
    // test, computed here unless the caller passes it (a bool; the serial order computes it
    // before its QK^T wait); the other orders test here, as before (testing at their call sites
    // measured 3% slower at d 256, H200).
    auto softmax_step = [&](int n, float kd, bool first, auto needs_mask) {
      float row_c[kRows];  // log2 scale of each row's raw logits for this block
      if constexpr (kSoftcap) {
        CUTE_UNROLL
        for (int i = 0; i < kRows; ++i) {
          const float m = row_mult[i] * kd;
          CUTE_UNROLL
          for (int j = 0; j < kCols; ++j) S(i, j) = fast_tanh(S(i, j) * m);
          row_c[i] = p.scale_log2;
        }
      } else {
        // Clamped above 0 so masked -inf logits stay -inf (a zero descale would make them NaN).
        CUTE_UNROLL
        for (int i = 0; i < kRows; ++i) row_c[i] = fmaxf(row_mult[i] * kd, 1e-30f);
      }
      bool masked;
      if constexpr (std::is_same_v<decltype(needs_mask), bool>) masked = needs_mask;
      else masked = mask.block_needs_mask(n);
      if (masked) mask.apply(S, cS, n);
      // Each thread's partial block maxima on integer bits (IntMax3Tree, half the instructions of
      // the float tree). A negative partial (all of the thread's scores in that row negative, or
      // masked) is not the float max: then the whole warp, after a vote, redoes its partials as
      // float trees. Either way the partials are then right as floats, so the quad reduces them
      // with fmaxf (non-negative floats order like their bits).
      // (+1-1.5% at d 128 (+4% at 16k with kSkipSafeVote), +2.5% at d 256 16k, +3-4% at d 64,
      // H200; RESULTS.md "FP8: block max on integer bits". A per-thread fallback, or a warp vote
      // after the quad shuffles, measured no better than the float tree.)
      float raw_max[kRows];
      bool negative = false;
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) {
        int32_t m[kCols];
        CUTE_UNROLL
        for (int j = 0; j < kCols; ++j) m[j] = __float_as_int(S(i, j));
        IntMax3Tree<kCols>::fold(m);
        raw_max[i] = __int_as_float(m[0]);
        negative |= m[0] < 0;
      }
      const bool check = kSkipSafeVote ? first || !max_safe : true;
      if (check && __any_sync(0xffffffffu, negative)) {
        CUTE_UNROLL
        for (int i = 0; i < kRows; ++i) {
          float m[kCols];
          CUTE_UNROLL
          for (int j = 0; j < kCols; ++j) m[j] = S(i, j);
          MaxTree<kCols>::fold(m);
          // (fmaxf from -inf: an all-NaN row gives -inf, as the chain did)
          raw_max[i] = fmaxf(-INFINITY, m[0]);
        }
      }
      // (The shuffles in a loop of their own, as measured: inside the loop below they schedule
      // differently.)
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) raw_max[i] = quad_max(raw_max[i]);
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) {
        const float mx = raw_max[i];
        const float block_max = mx == -INFINITY ? -INFINITY : mx * row_c[i];
        // The running max moves only when this block's exceeds it by more than the slack (a row
        // with nothing visible yet: -inf > -inf + slack is false, it stays -inf).
        const bool grow = first || block_max > row_max[i] + kRescaleSlack;
        const float new_max = grow ? fmaxf(row_max[i], block_max) : row_max[i];
        // Nothing visible yet: subtract 0 so exp2 sees -inf, not NaN.
        const float sub = new_max == -INFINITY ? 0.f : new_max - kMaxOffset;
        row_scale[i] =
            grow && !first ? exp2f(row_max[i] - (new_max == -INFINITY ? 0.f : new_max)) : 1.f;
        row_max[i] = new_max;
        if constexpr (Traits::kRowSumMma) {  // the sum GEMM adds P's sums (take_sums)
          CUTE_UNROLL
          for (int j = 0; j < kCols; ++j) S(i, j) = exp2f(fmaf(S(i, j), row_c[i], -sub));
          row_sum[i] = first ? 0.f : row_sum[i] * row_scale[i];
        } else {
          float sum = 0.f;
          CUTE_UNROLL
          for (int j = 0; j < kCols; ++j) {
            S(i, j) = exp2f(fmaf(S(i, j), row_c[i], -sub));
            sum += S(i, j);
          }
          row_sum[i] = first ? sum : row_sum[i] * row_scale[i] + sum;
        }
      }
      if constexpr (kSkipSafeVote) {
        bool safe = true;
        CUTE_UNROLL
        for (int i = 0; i < kRows; ++i) safe &= row_max[i] >= -kRescaleSlack;  // -inf: not safe
        max_safe = __all_sync(0xffffffffu, safe);
      }
    };
    // kRowSumMma: the PV GEMM of a block and its sum GEMM, issued together (one commit group each).
    auto issue_pv = [&](int stage) {
      wgmma_issue<false, true>(mma_pv, tOrP, tOrV(_, _, _, stage), tOrO);
      if constexpr (Traits::kRowSumMma) wgmma_issue<true, true>(mma_sum, tOrP, tSumB, tSum);
    };
    // kRowSumMma, once that block's sum GEMM has finished (before the next softmax step, which
    // rescales row_sum): its row sums into row_sum.
    auto take_sums = [&] {
      if constexpr (Traits::kRowSumMma) {
        warpgroup_fence_operand(tSum);
        CUTE_UNROLL
        for (int i = 0; i < kRows; ++i) row_sum[i] += Sum(i, 0);
      }
    };

    // Accumulator registers -> e4m3 A fragment. In each 32-key slice the accumulator holds, per
    // 8-column group g, (row r: c, c+1; row r+8: c, c+1); register a0 takes row r of groups 0-1,
    // a1 row r+8 of groups 0-1, a2/a3 the same for groups 2-3 (see fp8_key_of_slot).
    auto convert_p = [&] {
      Tensor rP32 = recast<uint32_t>(tOrP);
      CUTE_UNROLL
      for (int s = 0; s < kBlockN / 32; ++s) {
        CUTE_UNROLL
        for (int t = 0; t < 4; ++t) {
          const int b = 16 * s + (t & 1) * 2 + (t >> 1) * 8;
          rP32(4 * s + t) = pack_e4m3x4(tSrS(b), tSrS(b + 1), tSrS(b + 4), tSrS(b + 5));
        }
      }
    };

    constexpr std::false_type kTestMaskHere{};
    const BlockOrder order(r, m_block, p.rotate_blocks);
    float kd_next = k_descale[order(0)];
    ClusterBarrier::wait(&ss.bar.q_full, tiles_done & 1);

    ClusterBarrier::wait(&ss.bar.k_full[k_stage], k_phase);
    pingpong_wait();
    wgmma_issue<true, false>(mma_qk, tSrQ, tSrK(_, _, _, k_stage), tSrS);
    pingpong_pass();
    float kd = kd_next;
    if (order.count() > 1) kd_next = k_descale[order(1)];
    warpgroup_wait<0>();
    warpgroup_fence_operand(tSrS);
    release(&ss.bar.k_empty[k_stage]);
    if (++k_stage == kStages) { k_stage = 0; k_phase ^= 1; }
    softmax_step(order(0), kd, true, kTestMaskHere);
    convert_p();
    clear(tOrO);

    for (int j = 1; j < order.count(); ++j) {
      if constexpr (Traits::kSerialGemms) {
        // The pingpong turn covers both GEMMs (passing it after the PV issue measured 2-4% slower
        // at 16k tokens, no turn at all noisier).
        // Both data waits come before the turn and the mask test before the QK^T wait, so that
        // their latencies stay out of the turn and out of the chain after the GEMMs (+1-2% at
        // 4k-8k tokens, even at 16k; H200, RESULTS.md "FP8: P through shared memory").
        ClusterBarrier::wait(&ss.bar.v_full[v_stage], v_phase);
        ClusterBarrier::wait(&ss.bar.k_full[k_stage], k_phase);
        pingpong_wait();
        issue_pv(v_stage);
        kd = kd_next;
        if (j + 1 < order.count()) kd_next = k_descale[order(j + 1)];
        warpgroup_wait<0>();
        warpgroup_fence_operand(tOrO);
        warpgroup_fence_operand(tOrP);
        release(&ss.bar.v_empty[v_stage]);
        if (++v_stage == kStages) { v_stage = 0; v_phase ^= 1; }
        take_sums();
        wgmma_issue<true, false>(mma_qk, tSrQ, tSrK(_, _, _, k_stage), tSrS);
        pingpong_pass();
        const bool needs_mask = mask.block_needs_mask(order(j));
        warpgroup_wait<0>();
        warpgroup_fence_operand(tSrS);
        release(&ss.bar.k_empty[k_stage]);
        if (++k_stage == kStages) { k_stage = 0; k_phase ^= 1; }
        softmax_step(order(j), kd, false, needs_mask);
        rescale_o(O, row_scale);
        convert_p();
        continue;
      }
      ClusterBarrier::wait(&ss.bar.k_full[k_stage], k_phase);
      pingpong_wait();
      wgmma_issue<true, false>(mma_qk, tSrQ, tSrK(_, _, _, k_stage), tSrS);
      ClusterBarrier::wait(&ss.bar.v_full[v_stage], v_phase);
      wgmma_issue<false, true>(mma_pv, tOrP, tOrV(_, _, _, v_stage), tOrO);
      pingpong_pass();
      kd = kd_next;
      if (j + 1 < order.count()) kd_next = k_descale[order(j + 1)];
      warpgroup_wait<1>();
      warpgroup_fence_operand(tSrS);
      release(&ss.bar.k_empty[k_stage]);
      if (++k_stage == kStages) { k_stage = 0; k_phase ^= 1; }
      softmax_step(order(j), kd, false, kTestMaskHere);
      // (No softmax_before_wait here: the PV wait hoisted above the softmax measured 8% faster
      // at head dim 128 than the overlapped order; see fwd_sm90_kernel.h.)
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
      warpgroup_fence_operand(tOrP);
      release(&ss.bar.v_empty[v_stage]);
      if (++v_stage == kStages) { v_stage = 0; v_phase ^= 1; }
      rescale_o(O, row_scale);
      convert_p();
    }

    // Every QK^T of this tile is done: sQ may take the next tile's Q.
    release(&ss.bar.q_empty);

    ClusterBarrier::wait(&ss.bar.v_full[v_stage], v_phase);
    issue_pv(v_stage);
    warpgroup_wait<0>();
    warpgroup_fence_operand(tOrO);
    release(&ss.bar.v_empty[v_stage]);
    if (++v_stage == kStages) { v_stage = 0; v_phase ^= 1; }
    take_sums();

    if (piece >= 0) {
      // Split tail: leave this piece's O, max and partial sums (thread-interleaved, so a warp's
      // accesses are contiguous); the tile's last piece to get here merges them all and goes on
      // to the epilogue, the others are done with it.
      constexpr int kOCols = decltype(size<1>(O))::value;
      constexpr int kStat = kRows * kOCols;  // index of the first max
      static_assert(kRows == 2 && kStat == kHeadDim / 2, "kPieceFloats assumes 2 rows per thread");
      float* tile_part = p.split_part + int64_t(tile - p.split_first) * p.split_pieces * Traits::kPieceFloats;
      float* mine = tile_part + piece * Traits::kPieceFloats + mma_tid;
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) {
        CUTE_UNROLL
        for (int c = 0; c < kOCols; ++c) mine[(i * kOCols + c) * kNumMmaThreads] = O(i, c);
        mine[(kStat + i) * kNumMmaThreads] = row_max[i];
        mine[(kStat + kRows + i) * kNumMmaThreads] = row_sum[i];
      }
      __threadfence();
      NamedBarrier::sync(kNumMmaThreads, kBarEpilogue);
      if (mma_tid == 0) {
        const int done = atomicAdd(&p.split_flags[tile - p.split_first], 1);
        ss.bar.split_last = done == p.split_pieces - 1;
      }
      NamedBarrier::sync(kNumMmaThreads, kBarEpilogue);
      if (!*reinterpret_cast<volatile int*>(&ss.bar.split_last)) {
        ++tiles_done;
        continue;
      }
      // Merge every piece, this one's too (read back), in piece order: the result does not depend
      // on which piece came last (bitwise deterministic).
      __threadfence();
      CUTE_UNROLL
      for (int i = 0; i < kRows; ++i) {
        row_max[i] = -INFINITY;
        row_sum[i] = 0.f;
        CUTE_UNROLL
        for (int c = 0; c < kOCols; ++c) O(i, c) = 0.f;
      }
      for (int q = 0; q < p.split_pieces; ++q) {
        const float* other = tile_part + q * Traits::kPieceFloats + mma_tid;
        CUTE_UNROLL
        for (int i = 0; i < kRows; ++i) {
          const float m_q = __ldcg(other + (kStat + i) * kNumMmaThreads);
          const float s_q = __ldcg(other + (kStat + kRows + i) * kNumMmaThreads);
          // O and the sums of each piece are relative to its own running max (minus kMaxOffset).
          const float m = fmaxf(row_max[i], m_q);
          const bool none = m == -INFINITY;  // no visible key so far
          const float f_acc = none ? 1.f : exp2f(row_max[i] - m);
          const float f_q = none ? 0.f : exp2f(m_q - m);
          row_max[i] = m;
          row_sum[i] = row_sum[i] * f_acc + s_q * f_q;
          CUTE_UNROLL
          for (int c = 0; c < kOCols; ++c)
            O(i, c) = O(i, c) * f_acc + __ldcg(other + (i * kOCols + c) * kNumMmaThreads) * f_q;
        }
      }
    }

    // Finalize: v_descale / rowsum (0 for an empty row); LSE in natural log (-inf if empty).
    float lse[kRows];
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      // (With kRowSumMma every thread already holds its rows' whole sums.)
      const float sum = Traits::kRowSumMma ? row_sum[i] : quad_sum(row_sum[i]);
      const bool empty = sum == 0.f;  // (a NaN sum, from NaN inputs, stays NaN)
      const float inv = empty ? 0.f : v_descale / sum;
      lse[i] = empty ? -INFINITY : (row_max[i] - kMaxOffset) * float(M_LN2) + __logf(sum);
      CUTE_UNROLL
      for (int c = 0; c < size<1>(O); ++c) O(i, c) *= inv;
    }

    // Epilogue: registers -> sO (stmatrix) -> TMA store. sO is reused across tiles: the previous
    // tile's store must have read it. With kOAliasRaw in transpose mode, sO is the V staging the
    // producer refills for the next tile, so the store is waited for here and o_free released.
    OutElement* o_smem = Traits::kOAliasRaw ? reinterpret_cast<OutElement*>(ss.smem_vraw.data())
                                            : ss.smem_o.data();
    Tensor sO = make_tensor(make_smem_ptr(o_smem), typename Traits::SmemLayoutO{});
    if (mma_tid == 0) tma_store_wait<0>();
    NamedBarrier::sync(kNumMmaThreads, kBarEpilogue);
    stage_acc_to_smem<OutElement>(mma_pv, tOrO, sO, mma_tid);
    cutlass::arch::fence_view_async_shared();
    NamedBarrier::sync(kNumMmaThreads, kBarEpilogue);
    if (mma_tid == 0) {
      tma_store_o<kBlockM, kHeadDim>(p, sO, m_block, head, batch);
      tma_store_arrive();
      if (Traits::kOAliasRaw && p.vt_in_kernel) {
        tma_store_wait<0>();
        ClusterBarrier::arrive(&ss.bar.o_free);
      }
    }
    write_lse<kBlockM>(p, cS, lse, m_block, head, batch, mma_tid);
    ++tiles_done;
  }
  if (mma_tid == 0) tma_store_wait<0>();
}

// ---------------------------------------------------------------------------------------------
// Host launch
// ---------------------------------------------------------------------------------------------

template <class Traits, bool kSoftcap>
cudaError_t launch_fwd_sm90_fp8(const Fp8FwdParams& fp, bool vt_in_kernel, const Fp8SplitPlan& plan,
                                size_t split_offset, cudaStream_t stream) {
  using Element = typename Traits::Element;
  using OutElement = typename Traits::OutElement;
  using Params = typename Traits::Params;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim;
  if (vt_in_kernel && !Traits::kCanTranspose) return cudaErrorNotSupported;

  auto mQ = fwd_gmem_tensor<Element const>(fp.q, fp.seqlen_q, fp.head_dim, fp.heads_q, fp.batch,
                                           fp.q_row_stride, fp.q_head_stride, fp.q_batch_stride);
  auto mK = fwd_gmem_tensor<Element const>(fp.k, fp.seqlen_k, fp.head_dim, fp.heads_k, fp.batch,
                                           fp.k_row_stride, fp.k_head_stride, fp.k_batch_stride);
  auto mV = fwd_gmem_tensor<Element const>(fp.v, fp.seqlen_k, fp.head_dim, fp.heads_k, fp.batch,
                                           fp.v_row_stride, fp.v_head_stride, fp.v_batch_stride);
  auto mO = fwd_gmem_tensor<OutElement>(fp.out, fp.seqlen_q, fp.head_dim, fp.heads_q, fp.batch,
                                        fp.o_row_stride, fp.o_head_stride, fp.o_batch_stride);
  // The pre-pass's Vt in the workspace: (d, key slot, head, batch), dense (B, Hk, Dv, Sk_pad). Its
  // extent along the keys is Sk_pad: the pre-pass zero-filled the padding slots (a permuted slot
  // below Sk may hold a key >= Sk, so TMA's zero fill at Sk would not be enough). Described even
  // when unused (vt_in_kernel): nothing reads through it then.
  const int64_t sk_pad = fwd_fp8_seqlen_k_padded(fp.seqlen_k);
  const Element* vt = reinterpret_cast<const Element*>(static_cast<const char*>(fp.workspace) + kFp8VtOffset);
  Tensor mVt = make_tensor(make_gmem_ptr(vt),
                           make_layout(make_shape(fp.head_dim_v, int(sk_pad), fp.heads_k, fp.batch),
                                       make_stride(sk_pad, _1{}, sk_pad * fp.head_dim_v,
                                                   sk_pad * fp.head_dim_v * fp.heads_k)));

  Params p;
  p.tma_q = make_tma_copy(SM90_TMA_LOAD{}, mQ, typename Traits::SmemLayoutQ{},
                          Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{});
  p.tma_k = make_tma_copy(SM90_TMA_LOAD{}, mK, take<0, 2>(typename Traits::SmemLayoutK{}),
                          Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{});
  p.tma_v = make_tma_copy(SM90_TMA_LOAD{}, mV, take<0, 2>(typename Traits::SmemLayoutVraw{}),
                          Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{});
  p.tma_vt = make_tma_copy(SM90_TMA_LOAD{}, mVt, take<0, 2>(typename Traits::SmemLayoutVt{}),
                           Shape<Int<kHeadDim>, Int<kBlockN>>{}, _1{});
  p.tma_o = make_tma_copy(SM90_TMA_STORE{}, mO, typename Traits::SmemLayoutO{},
                          Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{});
  p.vt_in_kernel = vt_in_kernel;
  p.q_descale = fp.q_descale;
  p.k_descale = fp.k_descale;
  p.v_descale = fp.v_descale;
  p.q_scale_blocks = (fp.seqlen_q + kFp8ScaleBlock - 1) / kFp8ScaleBlock;
  p.k_scale_blocks = (fp.seqlen_k + kFp8ScaleBlock - 1) / kFp8ScaleBlock;
  // The dynamic scheduler's counter lives at the start of the workspace (always >= kFp8VtOffset).
  cudaError_t err = fill_fwd_params<kBlockM, kSoftcap>(p, fp, stream);
  if (err != cudaSuccess) return err;
  p.split_first = p.num_tiles;
  p.split_pieces = 1;
  p.split_flags = nullptr;
  p.split_part = nullptr;
  if (plan.pieces > 1) {
    // The host plan counted this kernel's tiles (fwd_fp8_block_m); the counters start at 0.
    if (plan.tiles != p.num_tiles || p.tile_counter == nullptr) return cudaErrorInvalidValue;
    char* region = static_cast<char*>(fp.workspace) + split_offset;
    p.split_first = plan.first;
    p.split_pieces = plan.pieces;
    p.split_flags = reinterpret_cast<int*>(region);
    p.split_part = reinterpret_cast<float*>(region + kFp8SplitFlagBytes);
    p.num_tiles = plan.items();
    err = cudaMemsetAsync(p.split_flags, 0, sizeof(int) * plan.split_tiles(), stream);
    if (err != cudaSuccess) return err;
  }
  return launch_persistent<Traits, kSoftcap>(fwd_sm90_fp8_kernel<Traits, kSoftcap>, p, fp.num_sms,
                                             stream);
}

template <int kHeadDim>
cudaError_t run_fwd_sm90_fp8_hdim(const Fp8FwdParams& p, bool vt_in_kernel, const Fp8SplitPlan& plan,
                                  size_t split_offset, cudaStream_t stream) {
  using Traits = typename Fp8FwdConfig<kHeadDim>::Traits;
  using TraitsPrepass = typename Fp8FwdConfig<kHeadDim>::TraitsPrepass;
  using TraitsFastSum = typename Fp8FwdConfig<kHeadDim>::TraitsFastSum;
  if constexpr (!std::is_void_v<TraitsFastSum>) {
    if (!vt_in_kernel && !p.exact_lse && p.mask.softcap == 0.f)
      return launch_fwd_sm90_fp8<TraitsFastSum, false>(p, false, plan, split_offset, stream);
  }
  if (!vt_in_kernel && !std::is_same_v<Traits, TraitsPrepass>) {
    if (p.mask.softcap != 0.f)
      return launch_fwd_sm90_fp8<TraitsPrepass, true>(p, false, plan, split_offset, stream);
    return launch_fwd_sm90_fp8<TraitsPrepass, false>(p, false, plan, split_offset, stream);
  }
  if (p.mask.softcap != 0.f)
    return launch_fwd_sm90_fp8<Traits, true>(p, vt_in_kernel, plan, split_offset, stream);
  return launch_fwd_sm90_fp8<Traits, false>(p, vt_in_kernel, plan, split_offset, stream);
}

}  // namespace jax_flash3::sm90

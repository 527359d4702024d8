// jax_flash3: Hopper FP8 forward, the seam between the dispatcher (fwd_sm90_fp8.cu) and the
// per-head-dim instantiation files (csrc/kernels/instantiations/fwd_sm90_fp8_hdim*.cu).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/params.h"

namespace jax_flash3::sm90 {

// Native head dims of the FP8 kernel; a smaller D (multiple of 16: TMA needs 16-byte rows of
// e4m3) runs in the next one, TMA zero-filling the missing columns.
constexpr int fwd_fp8_native_head_dim(int d) {
  if (d <= 64) return 64;
  if (d <= 128) return 128;
  if (d <= 256) return 256;
  return 0;
}

// Every FP8 tile is kFp8ScaleBlock (128) keys wide, so a K block has exactly one k_descale.
constexpr int kFp8BlockN = kFp8ScaleBlock;

// V reaches the PV GEMM K-major (Vt: d x keys) one of two ways (see fwd_sm90_fp8_kernel.h):
//   * in the kernel: the producer warpgroup transposes each TMA-loaded V tile in shared memory;
//   * by a pre-pass: a small bandwidth-bound kernel writes Vt into the workspace first, and the
//     attention kernel TMA-loads it.
// The in-kernel transpose costs producer issue slots and shared-memory bandwidth per (query
// block, key block) tile; the pre-pass costs one read and one write of V per call. So the
// transpose runs in the kernel when few queries share each key (the pre-pass would be a large
// share of the call), and the pre-pass runs otherwise. Crossovers measured on an H100
// (benchmarks/RESULTS.md, "FP8 in-kernel V transpose"): in the kernel while the queries per KV
// head (Sq times the GQA group) are at most 2048 (d <= 128) or 512 (d 256); 1024 at d 128
// without a mask since its pre-pass kernel has 3 consumer warpgroups (H200, "FP8 v5").
// JAX_FLASH3_FP8_V_TRANSPOSE=kernel|prepass overrides the choice (benchmarks); unset or auto:
// the rule above.
bool fwd_fp8_transpose_in_kernel(const Fp8FwdParams& p);

// Workspace: [0, 16) the dynamic scheduler's tile counter; with the pre-pass, Vt at kFp8VtOffset:
// e4m3 (B, Hk, Dv, Sk_pad), Sk_pad = Sk rounded up to kFp8BlockN, key order permuted within each
// 16-key group (fp8_key_of_slot) so P's accumulator registers are directly the PV A fragment.
constexpr size_t kFp8VtOffset = 256;

inline int64_t fwd_fp8_seqlen_k_padded(int seqlen_k) {
  return (int64_t(seqlen_k) + kFp8BlockN - 1) / kFp8BlockN * kFp8BlockN;
}

// The key stored at K-slot `slot` of a 16-wide group of a Vt row (in shared memory, and in the
// pre-pass's workspace copy). WGMMA's f32 accumulator gives thread quad q the columns
// {2q, 2q+1, 2q+8, 2q+9} of each 16 columns; the e4m3 A operand expects K indices {4q .. 4q+3}.
// Storing key 2q + (i & 1) + 8 * (i >> 1) at slot 4q + i makes them agree.
__host__ __device__ inline int fp8_key_of_slot(int slot) {
  const int g = slot & ~15, k = slot & 15;
  return g + 2 * (k >> 2) + (k & 1) + 8 * ((k >> 1) & 1);
}

// Query rows per tile of the kernel that runs (fwd_sm90_fp8_kernel.h, Fp8FwdConfig, which
// static_asserts the same numbers): d 64 192; d 128 128 with the in-kernel transpose, 192 with the
// pre-pass; d 256 128.
constexpr int fwd_fp8_block_m(int head_dim, bool vt_in_kernel) {
  const int d = fwd_fp8_native_head_dim(head_dim);
  return d == 64 ? 192 : d == 128 ? (vt_in_kernel ? 128 : 192) : 128;
}

// Split tail. The persistent grid takes equal tiles in index order, so with T tiles on G CTAs the
// last round runs T % G of them while the other SMs idle (16k tokens at d 128: 1376 tiles of 192
// rows on 132 SMs, 56 in the last round: 5% of the call). Where every tile sees the same key
// blocks (no mask, or one query block per head: decoding, short chunks), the last T % G tiles
// are cut into k pieces of their key range, k = G / (T % G)
// (at most kFp8MaxPieces, each piece >= kFp8MinPieceBlocks blocks): the last round then takes
// 1 / k of a tile's time. Fewer tiles than SMs is the same case (T % G = T), split-KV in effect.
// Each piece leaves its unnormalized O, running max and partial row sums in the workspace; the
// piece that finishes last (a per-tile counter) reads all k back in piece order, merges them and
// stores the tile. JAX_FLASH3_FP8_SPLIT=0 turns it off (benchmarks).
constexpr int kFp8MaxPieces = 8;
constexpr int kFp8MinPieceBlocks = 4;
// Piece slots the workspace reserves (G >= rem * k; more SMs than this: k shrinks to fit).
constexpr int kFp8MaxPieceSlots = 132;
struct Fp8SplitPlan {
  int tiles;   // T
  int first;   // tiles [first, T) are split (first == T: none)
  int pieces;  // k (1: none)
  // Work items: tiles [0, first) whole, then piece q of tile t as first + (t - first) * k + q.
  constexpr int split_tiles() const { return tiles - first; }
  constexpr int items() const { return first + split_tiles() * pieces; }
};
// Floats one piece leaves per consumer thread: its O fragment plus max and sum of 2 rows.
constexpr int fwd_fp8_piece_floats_per_row(int head_dim) { return fwd_fp8_native_head_dim(head_dim) + 8; }
constexpr size_t fwd_fp8_piece_bytes(int head_dim, bool vt_in_kernel) {
  return size_t(4) * fwd_fp8_block_m(head_dim, vt_in_kernel) * fwd_fp8_piece_floats_per_row(head_dim);
}
// The split region's layout behind `base` bytes of workspace: per-tile counters, then the pieces.
constexpr size_t kFp8SplitFlagBytes = 1024;  // >= kFp8MaxPieceSlots ints
static_assert(kFp8SplitFlagBytes >= sizeof(int) * kFp8MaxPieceSlots);
constexpr size_t fwd_fp8_split_offset(size_t base) { return (base + 255) / 256 * 256; }

// The plan for a launch on num_sms CTAs whose workspace holds max_slots piece slots.
Fp8SplitPlan fwd_fp8_split_plan(const Fp8FwdParams& p, bool vt_in_kernel, int num_sms, int max_slots);

// Launches the attention kernel; without vt_in_kernel, Vt must already be in the workspace. With
// plan.pieces > 1 the split region starts at split_offset bytes into the workspace.
template <int kHeadDim>
cudaError_t run_fwd_sm90_fp8_hdim(const Fp8FwdParams& p, bool vt_in_kernel, const Fp8SplitPlan& plan,
                                  size_t split_offset, cudaStream_t stream);

}  // namespace jax_flash3::sm90

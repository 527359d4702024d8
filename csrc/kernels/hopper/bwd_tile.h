// jax_flash3 Hopper backward: tile configuration per head dim, shared by the host-side workspace
// arithmetic (bwd_sm90.cu) and the kernels (bwd_kernel.h). No CUDA/CuTe includes here.
#pragma once

#include <cstddef>
#include <cstdint>

namespace jax_flash3 {
namespace bwd_sm90 {

// Head dims we instantiate; a smaller D (multiple of 8) runs on the next one, zero-padded.
constexpr int kHeadDims[] = {64, 96, 128, 192, 256};

inline int padded_head_dim(int d) {
  for (int hd : kHeadDims) {
    if (d <= hd) return hd;
  }
  return -1;
}

// kBlockM (query rows per step) x kBlockN (keys per CTA), two consumer warpgroups.
// Register budget per thread (fp32 accumulators, 2 WGs = 256 threads):
//   dK/dV-in-registers (hdim <= 128): each WG owns kBlockN/2 = 64 keys; S^T and dP^T are
//   64 x kBlockM each (kBlockM/2 regs), dK and dV 64 x D each (D/2 regs), dQ a 1/2 of kBlockM x D.
//     hdim 64 : 128 x 128 -> S,dP 64+64, dK,dV 32+32, dQ 32  = 224
//     hdim 96 :  64 x 128 -> S,dP 32+32, dK,dV 48+48, dQ 24  = 184
//     hdim 128:  64 x 128 -> S,dP 32+32, dK,dV 64+64, dQ 32  = 224
//   hdim 192/256: 64 x 64 with P and dS through shared memory; the WGs split dK/dV/dQ along D:
//     hdim 256: S,dP 16+16, dK,dV 64+64, dQ 64 = 224 regs; smem Q,dO 2 stages = 128 KB, K,V 64 KB,
//     P,dS double-buffered 32 KB -> 224 KB (< 227 KB): no room for an fp32 dQ tile, so (at hdim
//     192 too) it is staged in the consumed stage's Q/dO buffers (bwd_kernel.h, kDqInStage).
//   hdim 128 without softcap takes 80 query rows per step instead (S,dP 40+40, dK,dV 64+64,
//   dQ^T 40): 25% more work per barrier and per pass over K/V in smem. 80 rows are not a WGMMA
//   M, so dQ is computed transposed (dQ^T = K^T dS^T, the WGs split D). Causal and windowed
//   calls take them too (H200: causal +6-12% at 512-16k, RESULTS.md backward v10). Softcap keeps
//   64 rows: there its extra tanh' fragment already makes ptxas serialize the wgmma (C7512).
constexpr int block_m(int hd) { return hd == 64 ? 128 : 64; }
// The query-block height a call runs with: softcap is the only thing that picks it.
constexpr int block_m_for(int hd, bool softcap) { return hd == 128 && !softcap ? 80 : block_m(hd); }
constexpr int block_n(int hd) { return hd <= 128 ? 128 : 64; }

// Rows of the fp32 workspace arrays are padded to a multiple of 128 (of the query block if that
// does not divide 128), so every query block lies inside them.
constexpr int seq_pad_unit(int bm) { return 128 % bm == 0 ? 128 : bm; }

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Workspace layout (all offsets 256-byte aligned):
//   dq_accum  float [B][Hq][Sq_pad][hd]      zeroed each call (by the preprocess kernel), row-major
//   lse_log2  float [B][Hq][Sq_pad]          lse * log2(e); +inf where lse = -inf or row >= Sq
//   dpsum     float [B][Hq][Sq_pad]          rowsum(dO * O) - dlse
//   semaphore int   [B][Hq][Sq_pad / 64]     deterministic dQ ordering, zeroed each call (likewise)
//                                            (one per query block: every block has >= 64 rows)
struct WorkspaceLayout {
  int64_t seq_pad = 0;
  size_t dq_accum = 0, lse_log2 = 0, dpsum = 0, semaphore = 0, total = 0;

  WorkspaceLayout(int batch, int heads_q, int seqlen_q, int hd, int bm) {
    seq_pad = round_up(seqlen_q, seq_pad_unit(bm));
    const int64_t rows = int64_t(batch) * heads_q * seq_pad;
    size_t off = 0;
    auto take = [&](size_t bytes) {
      size_t at = off;
      off += size_t(round_up(int64_t(bytes), 256));
      return at;
    };
    dq_accum = take(size_t(rows) * hd * sizeof(float));
    semaphore = take(size_t(rows / 64) * sizeof(int));
    lse_log2 = take(size_t(rows) * sizeof(float));
    dpsum = take(size_t(rows) * sizeof(float));
    total = off;
  }
};

}  // namespace bwd_sm90
}  // namespace jax_flash3

// jax_flash3: the contract between the FFI handlers (csrc/ffi) and the kernels (csrc/kernels).
//
// Layout is jax.nn.dot_product_attention's: q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv),
// out (B, Sq, Hq, Dv), lse float32 (B, Hq, Sq), natural log. Strides are in elements and let a
// kernel read views; the handlers pass the dense strides XLA gives them.
//
// Masking is normalized by the handler before a kernel sees it: query row i sees key column j iff
//   i + Sk - Sq - window_left <= j <= i + Sk - Sq + window_right
// with window_left / window_right < 0 meaning unbounded on that side. `causal` is true exactly when
// window_right == 0 and window_left < 0 (kept so kernels can specialize). softcap == 0 means off.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace jax_flash3 {

enum class DType : int { kBF16 = 0, kFP16 = 1, kFP8E4M3 = 2 };

struct MaskParams {
  bool causal = false;
  int window_left = -1;   // < 0: unbounded
  int window_right = -1;  // < 0: unbounded
  float softcap = 0.f;    // 0: off; otherwise logits = softcap * tanh(logits / softcap)
};

struct FwdParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // (B, Hq, Sq)

  int batch = 0, seqlen_q = 0, seqlen_k = 0, heads_q = 0, heads_k = 0, head_dim = 0,
      head_dim_v = 0;
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;

  float softmax_scale = 1.f;
  MaskParams mask;
  DType dtype = DType::kBF16;

  // Scratch owned by XLA (an extra output of the custom call), `workspace_bytes` long, contents
  // undefined on entry. Size from fwd_workspace_bytes().
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int num_sms = 0;
};

struct BwdParams : FwdParams {
  const void* dout = nullptr;  // (B, Sq, Hq, Dv), same strides as out
  const float* dlse = nullptr; // (B, Hq, Sq): cotangent of lse; dS = P * (dP - (rowsum(dO*O) - dlse))
  void* dq = nullptr;          // (B, Sq, Hq, D), same strides as q
  void* dk = nullptr;          // (B, Sk, Hk, D), same strides as k
  void* dv = nullptr;          // (B, Sk, Hk, Dv), same strides as v
  bool deterministic = false;
};

// FP8 (float8_e4m3fn) forward. q/k/v are e4m3 with block scales; out is bfloat16; lse as above.
// Dequantized values: q_real[b, i, h, :] = q[b, i, h, :] * q_descale[b, h, i / kFp8ScaleBlock],
// k_real[b, j, h, :] = k[b, j, h, :] * k_descale[b, h, j / kFp8ScaleBlock], v_real = v * v_descale[b, h].
// Dense float32 arrays: q_descale (B, Hq, ceil(Sq / 128)), k_descale (B, Hk, ceil(Sk / 128)),
// v_descale (B, Hk). Descales are expected to be >= 0 (quantization scales).
constexpr int kFp8ScaleBlock = 128;

struct Fp8FwdParams : FwdParams {
  const float* q_descale = nullptr;
  const float* k_descale = nullptr;
  const float* v_descale = nullptr;
  // Whether the LSE must come from fp32 sums of the exps (the caller returns it or differentiates
  // through it). false lets a kernel take its row sums from the tensor cores: O is then
  // normalized by sums of the e4m3 P it multiplied, and the LSE carries that rounding.
  bool exact_lse = true;
};

// Bytes of scratch each direction needs. Exported to Python through the binding so the custom
// call can ask XLA for exactly this much.
size_t fwd_workspace_bytes(const FwdParams& p);
size_t bwd_workspace_bytes(const BwdParams& p);
size_t fwd_fp8_workspace_bytes(const Fp8FwdParams& p);

// Enqueue on `stream`; never synchronize. Return the first CUDA error seen (launch included).
cudaError_t run_fwd(const FwdParams& p, cudaStream_t stream);
cudaError_t run_bwd(const BwdParams& p, cudaStream_t stream);
cudaError_t run_fwd_fp8(const Fp8FwdParams& p, cudaStream_t stream);

}  // namespace jax_flash3

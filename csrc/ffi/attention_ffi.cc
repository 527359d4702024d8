// jax_flash3: decode FFI buffers and attributes into FwdParams/BwdParams, validate, launch.
// Every failure is returned as an ffi::Error with a message; nothing aborts, nothing syncs.
#include "ffi/attention_ffi.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/params.h"

namespace jax_flash3 {
namespace {

std::string DimsString(ffi::Span<const int64_t> dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + ")";
}

// One (..., S, H, D) operand with its leading dims folded into a batch.
struct Operand {
  int64_t batch = 1;
  int64_t seq = 0, heads = 0, dim = 0;
};

ffi::Error Decode(const char* name, ffi::Span<const int64_t> dims, Operand* op) {
  if (dims.size() < 4) {
    return ffi::Error::InvalidArgument(std::string("jax_flash3: ") + name +
                                       " must have rank >= 4, got " + DimsString(dims));
  }
  size_t r = dims.size();
  for (size_t i = 0; i + 3 < r; ++i) op->batch *= dims[i];
  op->seq = dims[r - 3];
  op->heads = dims[r - 2];
  op->dim = dims[r - 1];
  return ffi::Error::Success();
}

ffi::Error ToDType(ffi::DataType t, bool fp8, DType* out) {
  if (fp8) {
    if (t == ffi::DataType::F8E4M3FN) {
      *out = DType::kFP8E4M3;
      return ffi::Error::Success();
    }
    return ffi::Error::InvalidArgument("jax_flash3: fp8 q/k/v must be float8_e4m3fn");
  }
  switch (t) {
    case ffi::DataType::BF16: *out = DType::kBF16; return ffi::Error::Success();
    case ffi::DataType::F16: *out = DType::kFP16; return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument(
          "jax_flash3: q/k/v must be bfloat16 or float16 on the CUDA path");
  }
}

int NumSms() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 132;
  static int cached[64] = {};
  if (device >= 0 && device < 64 && cached[device]) return cached[device];
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) sms = 132;
  if (device >= 0 && device < 64) cached[device] = sms;
  return sms;
}

// Shapes, dtypes and attributes common to forward and backward; fills `p`.
ffi::Error FillCommon(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, float softmax_scale,
                      int32_t window_left, int32_t window_right, float softcap, FwdParams* p,
                      bool fp8 = false) {
  Operand oq, ok, ov;
  if (auto e = Decode("q", q.dimensions(), &oq); e.failure()) return e;
  if (auto e = Decode("k", k.dimensions(), &ok); e.failure()) return e;
  if (auto e = Decode("v", v.dimensions(), &ov); e.failure()) return e;
  if (q.element_type() != k.element_type() || q.element_type() != v.element_type()) {
    return ffi::Error::InvalidArgument("jax_flash3: q, k and v must share one dtype");
  }
  if (auto e = ToDType(q.element_type(), fp8, &p->dtype); e.failure()) return e;
  if (oq.batch != ok.batch || oq.batch != ov.batch || ok.seq != ov.seq || ok.heads != ov.heads ||
      oq.dim != ok.dim) {
    return ffi::Error::InvalidArgument(
        "jax_flash3: inconsistent shapes q " + DimsString(q.dimensions()) + ", k " +
        DimsString(k.dimensions()) + ", v " + DimsString(v.dimensions()));
  }
  if (ok.heads < 1 || oq.heads % ok.heads != 0) {
    return ffi::Error::InvalidArgument("jax_flash3: query heads must be a multiple of KV heads");
  }
  if (oq.dim % 8 || ov.dim % 8 || oq.dim > 256 || ov.dim > 256 || oq.dim < 8 || ov.dim < 8) {
    return ffi::Error::InvalidArgument(
        "jax_flash3: head dims must be multiples of 8 in [8, 256] on the CUDA path");
  }
  if (oq.seq < 1 || ok.seq < 1 || oq.batch < 1) {
    return ffi::Error::InvalidArgument("jax_flash3: batch and sequence lengths must be >= 1");
  }
  if (oq.batch * oq.seq * oq.heads > INT32_MAX || oq.batch * ok.seq * ok.heads > INT32_MAX) {
    return ffi::Error::InvalidArgument("jax_flash3: too many rows for int32 indexing");
  }
  if (!(softmax_scale > 0.f) || softcap < 0.f || window_left < -1 || window_right < -1) {
    return ffi::Error::InvalidArgument("jax_flash3: bad softmax_scale/softcap/window attribute");
  }
  p->q = q.untyped_data();
  p->k = k.untyped_data();
  p->v = v.untyped_data();
  p->batch = static_cast<int>(oq.batch);
  p->seqlen_q = static_cast<int>(oq.seq);
  p->seqlen_k = static_cast<int>(ok.seq);
  p->heads_q = static_cast<int>(oq.heads);
  p->heads_k = static_cast<int>(ok.heads);
  p->head_dim = static_cast<int>(oq.dim);
  p->head_dim_v = static_cast<int>(ov.dim);
  // Dense (B, S, H, D) strides, in elements.
  p->q_head_stride = p->head_dim;
  p->q_row_stride = int64_t(p->heads_q) * p->head_dim;
  p->q_batch_stride = p->q_row_stride * p->seqlen_q;
  p->k_head_stride = p->head_dim;
  p->k_row_stride = int64_t(p->heads_k) * p->head_dim;
  p->k_batch_stride = p->k_row_stride * p->seqlen_k;
  p->v_head_stride = p->head_dim_v;
  p->v_row_stride = int64_t(p->heads_k) * p->head_dim_v;
  p->v_batch_stride = p->v_row_stride * p->seqlen_k;
  p->o_head_stride = p->head_dim_v;
  p->o_row_stride = int64_t(p->heads_q) * p->head_dim_v;
  p->o_batch_stride = p->o_row_stride * p->seqlen_q;
  p->softmax_scale = softmax_scale;
  // A window of seqlen_q + seqlen_k or more already spans every key of every row, so clamping to
  // that keeps the mask and keeps the kernels' int32 index arithmetic (row + offset + window)
  // from overflowing on huge windows such as 2**31 - 1.
  const int64_t window_cap = int64_t(p->seqlen_q) + p->seqlen_k;
  auto clamp_window = [&](int32_t w) {
    return w < 0 ? -1 : static_cast<int>(std::min<int64_t>(w, window_cap));
  };
  p->mask.window_left = clamp_window(window_left);
  p->mask.window_right = clamp_window(window_right);
  p->mask.causal = p->mask.window_right == 0 && p->mask.window_left < 0;
  p->mask.softcap = softcap;
  p->num_sms = NumSms();
  return ffi::Error::Success();
}

ffi::Error CheckShape(const char* name, ffi::Span<const int64_t> got, ffi::Span<const int64_t> want) {
  bool same = got.size() == want.size();
  for (size_t i = 0; same && i < got.size(); ++i) same = got[i] == want[i];
  if (!same) {
    return ffi::Error::InvalidArgument(std::string("jax_flash3: ") + name + " has shape " +
                                       DimsString(got) + ", expected " + DimsString(want));
  }
  return ffi::Error::Success();
}

ffi::Error LaunchError(const char* what, cudaError_t err) {
  return ffi::Error::Internal(std::string("jax_flash3: ") + what + " failed: " +
                              cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

}  // namespace

ffi::Error FwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   float softmax_scale, int32_t window_left, int32_t window_right, float softcap,
                   int32_t sm_margin, ffi::Result<ffi::AnyBuffer> out,
                   ffi::Result<ffi::Buffer<ffi::F32>> lse,
                   ffi::Result<ffi::Buffer<ffi::U8>> workspace) {
  FwdParams p;
  if (auto e = FillCommon(q, k, v, softmax_scale, window_left, window_right, softcap, &p);
      e.failure()) {
    return e;
  }
  if (sm_margin < 0) {
    return ffi::Error::InvalidArgument("jax_flash3: sm_margin must be >= 0");
  }
  p.num_sms = sm_margin < p.num_sms ? p.num_sms - sm_margin : 1;
  if (out->element_type() != q.element_type()) {
    return ffi::Error::InvalidArgument("jax_flash3: out must have q's dtype");
  }
  if (out->element_count() != size_t(p.batch) * p.seqlen_q * p.heads_q * p.head_dim_v ||
      lse->element_count() != size_t(p.batch) * p.heads_q * p.seqlen_q) {
    return ffi::Error::InvalidArgument("jax_flash3: out/lse sizes do not match q and v");
  }
  p.out = out->untyped_data();
  p.lse = lse->typed_data();
  p.workspace = workspace->untyped_data();
  p.workspace_bytes = workspace->size_bytes();
  if (p.workspace_bytes < fwd_workspace_bytes(p)) {
    return ffi::Error::InvalidArgument("jax_flash3: forward workspace too small");
  }
  if (cudaError_t err = run_fwd(p, stream); err != cudaSuccess) {
    return LaunchError("attention forward launch", err);
  }
  return ffi::Error::Success();
}

namespace {

// dims == leading + tail, or an InvalidArgument naming the descale.
ffi::Error CheckDescale(const char* name, ffi::Span<const int64_t> got,
                        ffi::Span<const int64_t> operand_dims, std::vector<int64_t> tail) {
  std::vector<int64_t> want(operand_dims.begin(), operand_dims.end() - 3);
  want.insert(want.end(), tail.begin(), tail.end());
  bool same = got.size() == want.size();
  for (size_t i = 0; same && i < got.size(); ++i) same = got[i] == want[i];
  if (!same) {
    return ffi::Error::InvalidArgument(
        std::string("jax_flash3: ") + name + " has shape " + DimsString(got) + ", expected " +
        DimsString(ffi::Span<const int64_t>(want.data(), want.size())));
  }
  return ffi::Error::Success();
}

}  // namespace

ffi::Error FwdFp8Impl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                      ffi::Buffer<ffi::F32> q_descale, ffi::Buffer<ffi::F32> k_descale,
                      ffi::Buffer<ffi::F32> v_descale, bool exact_lse, float softmax_scale,
                      int32_t window_left, int32_t window_right, float softcap,
                      ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                      ffi::Result<ffi::Buffer<ffi::U8>> workspace) {
  Fp8FwdParams p;
  if (auto e = FillCommon(q, k, v, softmax_scale, window_left, window_right, softcap, &p,
                          /*fp8=*/true);
      e.failure()) {
    return e;
  }
  if (p.head_dim_v != p.head_dim) {
    return ffi::Error::InvalidArgument("jax_flash3: the fp8 forward needs q/k and v head dims equal");
  }
  if (q.dimensions().size() != k.dimensions().size() ||
      q.dimensions().size() != v.dimensions().size()) {
    return ffi::Error::InvalidArgument("jax_flash3: fp8 q, k and v must have the same rank");
  }
  const int64_t q_blocks = (p.seqlen_q + kFp8ScaleBlock - 1) / kFp8ScaleBlock;
  const int64_t k_blocks = (p.seqlen_k + kFp8ScaleBlock - 1) / kFp8ScaleBlock;
  if (auto e = CheckDescale("q_descale", q_descale.dimensions(), q.dimensions(), {p.heads_q, q_blocks});
      e.failure()) {
    return e;
  }
  if (auto e = CheckDescale("k_descale", k_descale.dimensions(), k.dimensions(), {p.heads_k, k_blocks});
      e.failure()) {
    return e;
  }
  if (auto e = CheckDescale("v_descale", v_descale.dimensions(), v.dimensions(), {p.heads_k});
      e.failure()) {
    return e;
  }
  if (out->element_type() != ffi::DataType::BF16) {
    return ffi::Error::InvalidArgument("jax_flash3: the fp8 forward's out must be bfloat16");
  }
  if (out->element_count() != size_t(p.batch) * p.seqlen_q * p.heads_q * p.head_dim_v ||
      lse->element_count() != size_t(p.batch) * p.heads_q * p.seqlen_q) {
    return ffi::Error::InvalidArgument("jax_flash3: out/lse sizes do not match q and v");
  }
  p.exact_lse = exact_lse;
  p.q_descale = q_descale.typed_data();
  p.k_descale = k_descale.typed_data();
  p.v_descale = v_descale.typed_data();
  p.out = out->untyped_data();
  p.lse = lse->typed_data();
  p.workspace = workspace->untyped_data();
  p.workspace_bytes = workspace->size_bytes();
  if (p.workspace_bytes < fwd_fp8_workspace_bytes(p)) {
    return ffi::Error::InvalidArgument("jax_flash3: fp8 forward workspace too small");
  }
  if (cudaError_t err = run_fwd_fp8(p, stream); err != cudaSuccess) {
    return LaunchError("fp8 attention forward launch", err);
  }
  return ffi::Error::Success();
}

ffi::Error BwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                   ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse, ffi::AnyBuffer dout,
                   ffi::Buffer<ffi::F32> dlse, bool deterministic, float softmax_scale,
                   int32_t window_left, int32_t window_right, float softcap,
                   ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                   ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::Buffer<ffi::U8>> workspace) {
  BwdParams p;
  if (auto e = FillCommon(q, k, v, softmax_scale, window_left, window_right, softcap, &p);
      e.failure()) {
    return e;
  }
  if (auto e = CheckShape("out", out.dimensions(), dout.dimensions()); e.failure()) return e;
  if (auto e = CheckShape("dlse", dlse.dimensions(), lse.dimensions()); e.failure()) return e;
  if (auto e = CheckShape("dq", dq->dimensions(), q.dimensions()); e.failure()) return e;
  if (auto e = CheckShape("dk", dk->dimensions(), k.dimensions()); e.failure()) return e;
  if (auto e = CheckShape("dv", dv->dimensions(), v.dimensions()); e.failure()) return e;
  if (out.element_type() != q.element_type() || dout.element_type() != q.element_type() ||
      dq->element_type() != q.element_type() || dk->element_type() != q.element_type() ||
      dv->element_type() != q.element_type()) {
    return ffi::Error::InvalidArgument("jax_flash3: out/dout/dq/dk/dv must have q's dtype");
  }
  if (out.element_count() != size_t(p.batch) * p.seqlen_q * p.heads_q * p.head_dim_v ||
      lse.element_count() != size_t(p.batch) * p.heads_q * p.seqlen_q) {
    return ffi::Error::InvalidArgument("jax_flash3: out/lse sizes do not match q and v");
  }
  p.out = const_cast<void*>(out.untyped_data());
  p.lse = const_cast<float*>(lse.typed_data());
  p.dout = dout.untyped_data();
  p.dlse = dlse.typed_data();
  p.dq = dq->untyped_data();
  p.dk = dk->untyped_data();
  p.dv = dv->untyped_data();
  p.deterministic = deterministic;
  p.workspace = workspace->untyped_data();
  p.workspace_bytes = workspace->size_bytes();
  if (p.workspace_bytes < bwd_workspace_bytes(p)) {
    return ffi::Error::InvalidArgument("jax_flash3: backward workspace too small");
  }
  if (cudaError_t err = run_bwd(p, stream); err != cudaSuccess) {
    return LaunchError("attention backward launch", err);
  }
  return ffi::Error::Success();
}

}  // namespace jax_flash3

// jax_flash3: standalone GPU harness for the Hopper forward kernel (no JAX, no FFI).
//
// Correctness: random normal inputs, outputs poisoned with NaN bytes, run_fwd_sm90 vs an fp32
// reference attention (one warp per query row) computed on the GPU from the same 16-bit inputs.
// Timing: the FA3 paper grid (16k tokens, hidden 2048), CUDA events, warm-up, median.
//
// Build (see benchmarks/RESULTS.md for the exact command): this file + fwd_sm90.cu + the
// instantiation objects, with -DJAX_FLASH3_HAS_FWD_SM90_<DT>_HDIM<D> for each object linked.
//   ./fwd_harness            correctness + timing
//   ./fwd_harness check      correctness only
//   ./fwd_harness bench      timing only
//   ./fwd_harness small      a few small configs (for compute-sanitizer)
//   ./fwd_harness one D S causal   one grid point (16k tokens, hidden 2048), e.g. under ncu
// FWD_BENCH_D=64 (a head dim) restricts the timing grid to that head dim.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/kernels.h"

using namespace jax_flash3;

#define CHECK_CUDA(x)                                                                       \
  do {                                                                                      \
    cudaError_t e_ = (x);                                                                   \
    if (e_ != cudaSuccess) {                                                                \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, \
                   __LINE__, #x);                                                           \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

template <typename T> __device__ float to_f(T x);
template <> __device__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ T from_f(float x);
template <> __device__ __nv_bfloat16 from_f(float x) { return __float2bfloat16(x); }
template <> __device__ __half from_f(float x) { return __float2half(x); }

__device__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return uint32_t(x);
}

template <typename T>
__global__ void fill_normal(T* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float u1 = (hash32(seed * 0x9E3779B97F4A7C15ULL + 2 * i) + 1.f) * 2.3283064e-10f;
    const float u2 = hash32(seed * 0x9E3779B97F4A7C15ULL + 2 * i + 1) * 2.3283064e-10f;
    p[i] = from_f<T>(sqrtf(-2.f * logf(u1)) * cospif(2.f * u2));
  }
}

// fp32 reference: one warp per (batch, head, query row); dims strided over lanes.
template <typename T>
__global__ void ref_attention(FwdParams p, float* out, float* lse) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  const int i = warp % p.seqlen_q, h = (warp / p.seqlen_q) % p.heads_q, b = warp / (p.seqlen_q * p.heads_q);
  if (b >= p.batch) return;
  const int hk = h / (p.heads_q / p.heads_k), D = p.head_dim;
  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;
  float qv[8], acc[8];
  for (int t = 0; t < 8; ++t) {
    const int d = lane + 32 * t;
    qv[t] = d < D ? to_f(q[d]) : 0.f;
    acc[t] = 0.f;
  }
  const int off = p.seqlen_k - p.seqlen_q;
  int lo = 0, hi = p.seqlen_k - 1;
  if (p.mask.window_left >= 0) lo = max(lo, i + off - p.mask.window_left);
  if (p.mask.window_right >= 0) hi = min(hi, i + off + p.mask.window_right);
  float m = -INFINITY, l = 0.f;
  for (int j = lo; j <= hi; ++j) {
    float s = 0.f;
    for (int t = 0; t < 8; ++t) {
      const int d = lane + 32 * t;
      if (d < D) s += qv[t] * to_f(k[j * p.k_row_stride + d]);
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    s *= p.softmax_scale;
    if (p.mask.softcap != 0.f) s = p.mask.softcap * tanhf(s / p.mask.softcap);
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new), e = expf(s - m_new);
    l = l * corr + e;
    for (int t = 0; t < 8; ++t) {
      const int d = lane + 32 * t;
      if (d < D) acc[t] = acc[t] * corr + e * to_f(v[j * p.v_row_stride + d]);
    }
    m = m_new;
  }
  float* o = out + ((size_t(b) * p.seqlen_q + i) * p.heads_q + h) * D;
  for (int t = 0; t < 8; ++t) {
    const int d = lane + 32 * t;
    if (d < D) o[d] = l > 0.f ? acc[t] / l : 0.f;
  }
  if (lane == 0) lse[(size_t(b) * p.heads_q + h) * p.seqlen_q + i] = l > 0.f ? m + logf(l) : -INFINITY;
}

struct Config {
  DType dtype;
  int batch, sq, sk, hq, hk, d;
  bool causal;
  int wl, wr;
  float softcap;
};

static const char* dname(DType t) { return t == DType::kBF16 ? "bf16" : "fp16"; }

struct Buffers {
  void *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  float* lse = nullptr;
  void* workspace = nullptr;
  size_t cap_in = 0, cap_out = 0, cap_lse = 0;
  void ensure(size_t nq, size_t nkv, size_t nlse) {
    const size_t in = std::max(nq, nkv) * 2, out = nq * 2, l = nlse * 4;
    if (in > cap_in) { cudaFree(q); cudaFree(k); cudaFree(v); CHECK_CUDA(cudaMalloc(&q, in)); CHECK_CUDA(cudaMalloc(&k, in)); CHECK_CUDA(cudaMalloc(&v, in)); cap_in = in; }
    if (out > cap_out) { cudaFree(o); CHECK_CUDA(cudaMalloc(&o, out)); cap_out = out; }
    if (l > cap_lse) { cudaFree(lse); CHECK_CUDA(cudaMalloc(&lse, l)); cap_lse = l; }
    if (workspace == nullptr) CHECK_CUDA(cudaMalloc(&workspace, 1 << 20));
  }
};

static FwdParams make_params(const Config& c, Buffers& buf) {
  FwdParams p;
  p.q = buf.q; p.k = buf.k; p.v = buf.v; p.out = buf.o; p.lse = buf.lse;
  p.batch = c.batch; p.seqlen_q = c.sq; p.seqlen_k = c.sk; p.heads_q = c.hq; p.heads_k = c.hk;
  p.head_dim = p.head_dim_v = c.d;
  p.q_row_stride = int64_t(c.hq) * c.d; p.q_head_stride = c.d; p.q_batch_stride = int64_t(c.sq) * c.hq * c.d;
  p.k_row_stride = int64_t(c.hk) * c.d; p.k_head_stride = c.d; p.k_batch_stride = int64_t(c.sk) * c.hk * c.d;
  p.v_row_stride = p.k_row_stride; p.v_head_stride = p.k_head_stride; p.v_batch_stride = p.k_batch_stride;
  p.o_row_stride = p.q_row_stride; p.o_head_stride = p.q_head_stride; p.o_batch_stride = p.q_batch_stride;
  p.softmax_scale = 1.f / std::sqrt(float(c.d));
  p.mask.causal = c.causal;
  p.mask.window_left = c.causal ? -1 : c.wl;
  p.mask.window_right = c.causal ? 0 : c.wr;
  p.mask.softcap = c.softcap;
  p.dtype = c.dtype;
  p.workspace = buf.workspace;
  p.workspace_bytes = fwd_sm90_workspace_bytes(p);
  return p;
}

static void fill_inputs(const Config& c, Buffers& buf, uint64_t seed) {
  const size_t nq = size_t(c.batch) * c.sq * c.hq * c.d, nkv = size_t(c.batch) * c.sk * c.hk * c.d;
  if (c.dtype == DType::kBF16) {
    fill_normal<<<1024, 256>>>(static_cast<__nv_bfloat16*>(buf.q), nq, seed);
    fill_normal<<<1024, 256>>>(static_cast<__nv_bfloat16*>(buf.k), nkv, seed + 1);
    fill_normal<<<1024, 256>>>(static_cast<__nv_bfloat16*>(buf.v), nkv, seed + 2);
  } else {
    fill_normal<<<1024, 256>>>(static_cast<__half*>(buf.q), nq, seed);
    fill_normal<<<1024, 256>>>(static_cast<__half*>(buf.k), nkv, seed + 1);
    fill_normal<<<1024, 256>>>(static_cast<__half*>(buf.v), nkv, seed + 2);
  }
  CHECK_CUDA(cudaGetLastError());
}

static float host_to_f(uint16_t bits, DType t) {
  if (t == DType::kBF16) { uint32_t u = uint32_t(bits) << 16; float f; std::memcpy(&f, &u, 4); return f; }
  __half_raw r; r.x = bits; return __half2float(__half(r));
}

static bool check(const Config& c, Buffers& buf, uint64_t seed) {
  const size_t nq = size_t(c.batch) * c.sq * c.hq * c.d, nkv = size_t(c.batch) * c.sk * c.hk * c.d;
  const size_t nlse = size_t(c.batch) * c.hq * c.sq;
  buf.ensure(nq, nkv, nlse);
  fill_inputs(c, buf, seed);
  FwdParams p = make_params(c, buf);
  char desc[256];
  std::snprintf(desc, sizeof(desc), "%s d=%3d B=%d Sq=%5d Sk=%5d Hq=%2d Hk=%2d causal=%d wl=%5d wr=%5d softcap=%g",
                dname(c.dtype), c.d, c.batch, c.sq, c.sk, c.hq, c.hk, c.causal, p.mask.window_left,
                p.mask.window_right, c.softcap);
  if (!fwd_sm90_supported(p)) { std::printf("SKIP (unsupported) %s\n", desc); return true; }
  CHECK_CUDA(cudaMemset(buf.o, 0xFF, nq * 2));       // NaN in bf16 and fp16
  CHECK_CUDA(cudaMemset(buf.lse, 0xFF, nlse * 4));   // NaN in fp32
  float *ref_o, *ref_lse;
  CHECK_CUDA(cudaMalloc(&ref_o, nq * 4));
  CHECK_CUDA(cudaMalloc(&ref_lse, nlse * 4));
  CHECK_CUDA(run_fwd_sm90(p, 0));
  const int warps = c.batch * c.hq * c.sq;
  if (c.dtype == DType::kBF16) ref_attention<__nv_bfloat16><<<(warps + 7) / 8, 256>>>(p, ref_o, ref_lse);
  else ref_attention<__half><<<(warps + 7) / 8, 256>>>(p, ref_o, ref_lse);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> ho(nq);
  std::vector<float> hr(nq), hl(nlse), hrl(nlse);
  CHECK_CUDA(cudaMemcpy(ho.data(), buf.o, nq * 2, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(hr.data(), ref_o, nq * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(hl.data(), buf.lse, nlse * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(hrl.data(), ref_lse, nlse * 4, cudaMemcpyDeviceToHost));
  cudaFree(ref_o); cudaFree(ref_lse);
  double max_err = 0, se = 0, sr = 0, lse_err = 0;
  size_t nan_o = 0, lse_bad = 0, empty_rows = 0;
  for (size_t i = 0; i < nq; ++i) {
    const float o = host_to_f(ho[i], c.dtype);
    if (!std::isfinite(o)) { ++nan_o; continue; }
    const double e = std::fabs(double(o) - hr[i]);
    max_err = std::max(max_err, e); se += e * e; sr += double(hr[i]) * hr[i];
  }
  for (size_t i = 0; i < nlse; ++i) {
    if (std::isinf(hrl[i]) && hrl[i] < 0) {
      ++empty_rows;
      if (!(std::isinf(hl[i]) && hl[i] < 0)) ++lse_bad;
    } else if (!std::isfinite(hl[i])) {
      ++lse_bad;
    } else {
      lse_err = std::max(lse_err, double(std::fabs(hl[i] - hrl[i])));
    }
  }
  const double rel = sr > 0 ? std::sqrt(se / sr) : std::sqrt(se);
  // 16-bit output rounding alone gives ~2^-9 relative; P in 16 bits adds about as much.
  const double rel_tol = c.dtype == DType::kBF16 ? 1.5e-2 : 4e-3;
  const double abs_tol = c.dtype == DType::kBF16 ? 4e-2 : 1e-2;
  const bool ok = nan_o == 0 && lse_bad == 0 && rel <= rel_tol && max_err <= abs_tol && lse_err <= 2e-3;
  std::printf("%s %s | max_abs %.2e rel_l2 %.2e lse_max %.2e nonfinite_o %zu lse_bad %zu empty_rows %zu\n",
              ok ? "PASS" : "FAIL", desc, max_err, rel, lse_err, nan_o, lse_bad, empty_rows);
  return ok;
}

static std::vector<Config> correctness_configs(bool small) {
  std::vector<Config> v;
  const DType B = DType::kBF16, H = DType::kFP16;
  if (small) {
    v.push_back({B, 1, 113, 113, 2, 1, 128, false, -1, -1, 0});
    v.push_back({B, 1, 200, 77, 2, 2, 128, true, -1, -1, 0});
    v.push_back({B, 2, 17, 300, 4, 1, 64, false, 20, 5, 0});
    v.push_back({B, 1, 130, 257, 2, 1, 256, true, -1, -1, 30.f});
    v.push_back({H, 1, 130, 257, 4, 2, 128, false, 40, 40, 0});
    return v;
  }
  const int dims[] = {64, 80, 96, 128, 192, 256};
  for (int d : dims) {
    for (DType t : {B, H}) {
      v.push_back({t, 2, 113, 113, 4, 4, d, false, -1, -1, 0});
      v.push_back({t, 1, 1000, 1000, 4, 1, d, true, -1, -1, 0});
    }
    v.push_back({B, 1, 1, 1, 8, 8, d, false, -1, -1, 0});
    v.push_back({B, 3, 17, 4097, 8, 1, d, false, -1, -1, 0});
    v.push_back({B, 1, 4097, 17, 8, 2, d, true, -1, -1, 0});     // causal Sq > Sk: empty rows
    v.push_back({B, 1, 1000, 4097, 4, 1, d, true, -1, -1, 0});   // causal Sq < Sk
    v.push_back({B, 2, 1000, 1000, 8, 2, d, false, 100, 30, 0});  // local window
    v.push_back({B, 1, 4097, 4097, 2, 2, d, false, 256, -1, 0});  // left window only
    v.push_back({B, 1, 113, 1000, 4, 4, d, false, -1, 64, 0});    // right window only
    v.push_back({B, 1, 1000, 113, 4, 4, d, false, 3, 0, 0});      // narrow, Sq > Sk: empty rows
    v.push_back({B, 1, 1000, 1000, 8, 1, d, true, -1, -1, 50.f}); // softcap + causal + MQA
    v.push_back({H, 2, 1000, 4097, 8, 8, d, false, -1, -1, 20.f});
    v.push_back({B, 1, 4097, 4097, 1, 1, d, false, -1, -1, 0});
  }
  return v;
}

// A point of the timing grid: 16k tokens (batch = 16384 / s), hidden 2048 (heads = 2048 / d), bf16.
static Config grid_config(int d, int s, bool causal) {
  const int heads = std::max(1, 2048 / d);
  return Config{DType::kBF16, std::max(1, 16384 / s), s, s, heads, heads, d, causal, -1, -1, 0};
}

static double time_config(const Config& c, Buffers& buf, int reps) {
  const size_t nq = size_t(c.batch) * c.sq * c.hq * c.d, nkv = size_t(c.batch) * c.sk * c.hk * c.d;
  buf.ensure(nq, nkv, size_t(c.batch) * c.hq * c.sq);
  fill_inputs(c, buf, 1234);
  FwdParams p = make_params(c, buf);
  if (!fwd_sm90_supported(p)) return -1;
  for (int i = 0; i < 3; ++i) CHECK_CUDA(run_fwd_sm90(p, 0));
  std::vector<float> ms(reps);
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0)); CHECK_CUDA(cudaEventCreate(&e1));
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaEventRecord(e0));
    CHECK_CUDA(run_fwd_sm90(p, 0));
    CHECK_CUDA(cudaEventRecord(e1));
    CHECK_CUDA(cudaEventSynchronize(e1));
    CHECK_CUDA(cudaEventElapsedTime(&ms[r], e0, e1));
  }
  cudaEventDestroy(e0); cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  const double t = ms[reps / 2] * 1e-3;
  const double flops = 4.0 * c.batch * c.hq * double(c.sq) * c.sk * c.d / (c.causal ? 2 : 1);
  return flops / t * 1e-12;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  Buffers buf;
  int failures = 0, total = 0;
  if (mode == "all" || mode == "check" || mode == "small") {
    uint64_t seed = 42;
    for (const Config& c : correctness_configs(mode == "small")) {
      ++total;
      if (!check(c, buf, seed++)) ++failures;
    }
    std::printf("correctness: %d / %d failed\n", failures, total);
  }
  if (mode == "one") {
    if (argc < 5) {
      std::fprintf(stderr, "usage: fwd_harness one D S causal\n");
      return 2;
    }
    const int d = std::atoi(argv[2]), s = std::atoi(argv[3]);
    const bool causal = std::atoi(argv[4]) != 0;
    const Config c = grid_config(d, s, causal);
    std::printf("BENCH bf16 D%d S%d %s %7.1f TFLOPs/s\n", d, s, causal ? "causal" : "full",
                time_config(c, buf, 20));
    return 0;
  }
  if (mode == "all" || mode == "bench") {
    std::vector<std::string> lines;
    const char* only_d = std::getenv("FWD_BENCH_D");
    for (int d : {64, 128, 256}) {
      if (only_d && std::atoi(only_d) != d) continue;
      for (int causal : {0, 1, 2}) {
        std::string line = "d=" + std::to_string(d) + (causal == 1 ? " causal    " : causal == 2 ? " nc-dynamic" : " non-causal");
        for (int s : {512, 1024, 2048, 4096, 8192, 16384}) {
          Config c = grid_config(d, s, causal == 1);
          if (causal == 2) c.wl = c.wr = 1 << 28;  // unbounded window, but dynamic scheduler
          const double tf = time_config(c, buf, 20);
          char cell[32];
          std::snprintf(cell, sizeof(cell), " %6.0f", tf);
          line += cell;
        }
        lines.push_back(line);
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
      }
    }
    std::printf("\nbf16 fwd TFLOPs/s, 16k tokens, hidden 2048; seq   512   1024   2048   4096   8192  16384\n");
    for (auto& l : lines) std::printf("%s\n", l.c_str());
  }
  return failures == 0 ? 0 : 1;
}

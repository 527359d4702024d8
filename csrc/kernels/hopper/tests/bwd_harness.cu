// Standalone check + benchmark for the Hopper backward (run_bwd_sm90).
//
// Correctness: random inputs; out/lse and the reference dQ/dK/dV from plain fp32 GPU kernels in
// this file (materialized scores); outputs poisoned with 0xFF (NaN) before each run; max and
// relative errors vs the reference; two deterministic runs compared bit for bit.
// Timing: FA3 grid (16k tokens: batch = 16384 / seq, heads = 2048 / hdim), cudaEvents, warm-up,
// median of 10; bwd TFLOPs/s = 2.5 * 4 * B * H * S^2 * D / t (halved when causal).
//
// Build (from the repo root; NVF = the CMake flags):
//   NVF="-gencode=arch=compute_90a,code=sm_90a -O3 --use_fast_math --expt-relaxed-constexpr -std=c++17
//        -DNDEBUG -DCUTLASS_DEBUG_TRACE_LEVEL=0 -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
//        -I<cutlass_library>/source/include -Icsrc"
//   HAS="-DJAX_FLASH3_HAS_BWD_SM90_BF16_HDIM128 ..."   (one per instantiation linked in)
//   nvcc $NVF -c csrc/kernels/instantiations/bwd_sm90_bf16_hdim128.cu -o build-bwd/t128.o
//   nvcc $NVF $HAS -c csrc/kernels/hopper/bwd_sm90.cu -o build-bwd/bwd_sm90.o
//   nvcc $NVF $HAS csrc/kernels/hopper/tests/bwd_harness.cu build-bwd/bwd_sm90.o build-bwd/t128.o
//        -o build-bwd/bwd_harness
// Usage: bwd_harness [check|small|bench|all] (default all) | bwd_harness one D S causal det
// (small: three small configs per head dim, for compute-sanitizer)
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

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

// ------------------------------------------------------------------------------------------------
// element helpers
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ float ld(const void* p, int64_t i, bool fp16) {
  return fp16 ? __half2float(reinterpret_cast<const __half*>(p)[i])
              : __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
}
__device__ __forceinline__ void st(void* p, int64_t i, float v, bool fp16) {
  if (fp16) reinterpret_cast<__half*>(p)[i] = __float2half(v);
  else reinterpret_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(v);
}

__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
  return uint32_t(x);
}
// approx N(0, 1) * scale (sum of 4 uniforms)
__global__ void k_randn(void* p, int64_t n, uint64_t seed, float scale, bool fp16, bool is_f32) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int r = 0; r < 4; ++r) s += (hash32(seed * 0x9E3779B97F4A7C15ull + uint64_t(i) * 4 + r) >> 8) * (1.f / 16777216.f);
    float v = (s - 2.f) * 1.7320508f * scale;
    if (is_f32) reinterpret_cast<float*>(p)[i] = v;
    else st(p, i, v, fp16);
  }
}

struct Cfg {
  int B, Sq, Sk, Hq, Hk, D;
  bool causal;
  int wl, wr;
  float softcap;
  bool fp16;
  bool dlse;
};

// layout (B, S, H, D) dense
__device__ __forceinline__ int64_t idx4(int b, int s, int h, int d, int S, int H, int D) {
  return ((int64_t(b) * S + s) * H + h) * D + d;
}

// S'[bh, i, j] (softcapped, scaled) or -inf when masked
__global__ void k_ref_scores(Cfg c, const void* q, const void* k, float* S, float scale) {
  const int64_t n = int64_t(c.B) * c.Hq * c.Sq * c.Sk;
  const int group = c.Hq / c.Hk;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    int j = int(t % c.Sk);
    int64_t r = t / c.Sk;
    int i = int(r % c.Sq);
    int bh = int(r / c.Sq);
    int h = bh % c.Hq, b = bh / c.Hq;
    int off = c.Sk - c.Sq;
    bool vis = (c.wl < 0 || j >= i + off - c.wl) && (c.wr < 0 || j <= i + off + c.wr);
    float s = -INFINITY;
    if (vis) {
      float acc = 0.f;
      for (int d = 0; d < c.D; ++d)
        acc += ld(q, idx4(b, i, h, d, c.Sq, c.Hq, c.D), c.fp16) * ld(k, idx4(b, j, h / group, d, c.Sk, c.Hk, c.D), c.fp16);
      s = acc * scale;
      if (c.softcap > 0.f) s = c.softcap * tanhf(s / c.softcap);
    }
    S[t] = s;
  }
}

// one block per row (b, h, i): lse and out
__global__ void k_ref_fwd_row(Cfg c, const float* S, const void* v, void* out, float* lse) {
  const int row = blockIdx.x;  // bh * Sq + i
  const int i = row % c.Sq, bh = row / c.Sq, h = bh % c.Hq, b = bh / c.Hq;
  const int group = c.Hq / c.Hk;
  const float* s = S + int64_t(row) * c.Sk;
  __shared__ float red[256];
  float m = -INFINITY;
  for (int j = threadIdx.x; j < c.Sk; j += blockDim.x) m = fmaxf(m, s[j]);
  red[threadIdx.x] = m;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + w]);
    __syncthreads();
  }
  m = red[0];
  __syncthreads();
  float sum = 0.f;
  if (m != -INFINITY)
    for (int j = threadIdx.x; j < c.Sk; j += blockDim.x) sum += expf(s[j] - m);
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  sum = red[0];
  const float l = (m == -INFINITY) ? -INFINITY : m + logf(sum);
  if (threadIdx.x == 0) lse[row] = l;
  for (int d = threadIdx.x; d < c.D; d += blockDim.x) {
    float acc = 0.f;
    if (l != -INFINITY)
      for (int j = 0; j < c.Sk; ++j) {
        if (s[j] == -INFINITY) continue;
        acc += expf(s[j] - l) * ld(v, idx4(b, j, h / group, d, c.Sk, c.Hk, c.D), c.fp16);
      }
    st(out, idx4(b, i, h, d, c.Sq, c.Hq, c.D), acc, c.fp16);
  }
}

// delta[row] = sum(dO * O) - dlse
__global__ void k_ref_delta(Cfg c, const void* out, const void* dout, const float* dlse, float* delta) {
  const int64_t n = int64_t(c.B) * c.Hq * c.Sq;
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < n; row += int64_t(gridDim.x) * blockDim.x) {
    int i = int(row % c.Sq), bh = int(row / c.Sq), h = bh % c.Hq, b = bh / c.Hq;
    float acc = 0.f;
    for (int d = 0; d < c.D; ++d) acc += ld(out, idx4(b, i, h, d, c.Sq, c.Hq, c.D), c.fp16) * ld(dout, idx4(b, i, h, d, c.Sq, c.Hq, c.D), c.fp16);
    delta[row] = acc - (dlse ? dlse[row] : 0.f);
  }
}

// S -> P (in place into P), dS (into S)
__global__ void k_ref_pds(Cfg c, float* S, float* P, const float* lse, const float* delta, const void* dout, const void* v) {
  const int64_t n = int64_t(c.B) * c.Hq * c.Sq * c.Sk;
  const int group = c.Hq / c.Hk;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    int j = int(t % c.Sk);
    int64_t r = t / c.Sk;
    int i = int(r % c.Sq);
    int bh = int(r / c.Sq);
    int h = bh % c.Hq, b = bh / c.Hq;
    float s = S[t];
    float l = lse[r];
    float p = (s == -INFINITY || l == -INFINITY) ? 0.f : expf(s - l);
    float dp = 0.f;
    for (int d = 0; d < c.D; ++d)
      dp += ld(dout, idx4(b, i, h, d, c.Sq, c.Hq, c.D), c.fp16) * ld(v, idx4(b, j, h / group, d, c.Sk, c.Hk, c.D), c.fp16);
    float ds = p * (dp - delta[r]);
    if (c.softcap > 0.f && s != -INFINITY) {
      float tt = s / c.softcap;
      ds *= 1.f - tt * tt;
    }
    P[t] = p;
    S[t] = ds;
  }
}

__global__ void k_ref_dq(Cfg c, const float* dS, const void* k, float* dq, float scale) {
  const int64_t n = int64_t(c.B) * c.Sq * c.Hq * c.D;
  const int group = c.Hq / c.Hk;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    int d = int(t % c.D); int64_t r = t / c.D; int h = int(r % c.Hq); r /= c.Hq; int i = int(r % c.Sq); int b = int(r / c.Sq);
    const float* ds = dS + ((int64_t(b) * c.Hq + h) * c.Sq + i) * c.Sk;
    float acc = 0.f;
    for (int j = 0; j < c.Sk; ++j) acc += ds[j] * ld(k, idx4(b, j, h / group, d, c.Sk, c.Hk, c.D), c.fp16);
    dq[t] = acc * scale;
  }
}

// dK (use_p = false, src = Q, scaled) or dV (use_p = true, src = dO)
__global__ void k_ref_dkv(Cfg c, const float* M, const void* src, float* dst, float scale) {
  const int64_t n = int64_t(c.B) * c.Sk * c.Hk * c.D;
  const int group = c.Hq / c.Hk;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    int d = int(t % c.D); int64_t r = t / c.D; int hk = int(r % c.Hk); r /= c.Hk; int j = int(r % c.Sk); int b = int(r / c.Sk);
    float acc = 0.f;
    for (int g = 0; g < group; ++g) {
      int h = hk * group + g;
      const float* m = M + (int64_t(b) * c.Hq + h) * c.Sq * c.Sk + j;
      for (int i = 0; i < c.Sq; ++i) acc += m[int64_t(i) * c.Sk] * ld(src, idx4(b, i, h, d, c.Sq, c.Hq, c.D), c.fp16);
    }
    dst[t] = acc * scale;
  }
}

struct Err {
  double max_abs, max_ref, rel_l2;
  int64_t nan_count;
};
__global__ void k_err(const void* a, const float* ref, int64_t n, bool fp16, double* acc /*4*/) {
  double e2 = 0, r2 = 0, emax = 0, rmax = 0, nan = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float x = ld(a, i, fp16), r = ref[i];
    if (!isfinite(x)) { nan += 1; continue; }
    double e = fabs(double(x) - r);
    e2 += e * e; r2 += double(r) * r; emax = fmax(emax, e); rmax = fmax(rmax, fabs(double(r)));
  }
  atomicAdd(&acc[0], e2); atomicAdd(&acc[1], r2); atomicAdd(&acc[4], nan);
  // max via CAS on the bit pattern (non-negative doubles order like their bits)
  atomicMax(reinterpret_cast<unsigned long long*>(&acc[2]), __double_as_longlong(emax));
  atomicMax(reinterpret_cast<unsigned long long*>(&acc[3]), __double_as_longlong(rmax));
}

static Err compare(const void* a, const float* ref, int64_t n, bool fp16) {
  double* acc;
  CK(cudaMalloc(&acc, 5 * sizeof(double)));
  CK(cudaMemset(acc, 0, 5 * sizeof(double)));
  k_err<<<256, 256>>>(a, ref, n, fp16, acc);
  CK(cudaGetLastError());
  double h[5];
  CK(cudaMemcpy(h, acc, sizeof(h), cudaMemcpyDeviceToHost));
  CK(cudaFree(acc));
  return Err{h[2], h[3], h[1] > 0 ? std::sqrt(h[0] / h[1]) : std::sqrt(h[0]), int64_t(h[4])};
}

static void fill(void* p, int64_t n, uint64_t seed, float scale, bool fp16, bool f32 = false) {
  k_randn<<<1024, 256>>>(p, n, seed, scale, fp16, f32);
  CK(cudaGetLastError());
}

struct Bufs {
  void *q, *k, *v, *out, *dout, *dq, *dk, *dv, *ws;
  float *lse, *dlse;
  size_t ws_bytes;
};

static BwdParams make_params(const Cfg& c, const Bufs& b, bool det, int num_sms) {
  BwdParams p;
  p.q = b.q; p.k = b.k; p.v = b.v; p.out = b.out; p.lse = b.lse;
  p.batch = c.B; p.seqlen_q = c.Sq; p.seqlen_k = c.Sk; p.heads_q = c.Hq; p.heads_k = c.Hk;
  p.head_dim = c.D; p.head_dim_v = c.D;
  p.q_row_stride = int64_t(c.Hq) * c.D; p.q_head_stride = c.D; p.q_batch_stride = int64_t(c.Sq) * c.Hq * c.D;
  p.k_row_stride = int64_t(c.Hk) * c.D; p.k_head_stride = c.D; p.k_batch_stride = int64_t(c.Sk) * c.Hk * c.D;
  p.v_row_stride = p.k_row_stride; p.v_head_stride = p.k_head_stride; p.v_batch_stride = p.k_batch_stride;
  p.o_row_stride = p.q_row_stride; p.o_head_stride = p.q_head_stride; p.o_batch_stride = p.q_batch_stride;
  p.softmax_scale = 1.f / std::sqrt(float(c.D));
  p.mask.causal = c.causal; p.mask.window_left = c.wl; p.mask.window_right = c.wr; p.mask.softcap = c.softcap;
  p.dtype = c.fp16 ? DType::kFP16 : DType::kBF16;
  p.workspace = b.ws; p.workspace_bytes = b.ws_bytes; p.num_sms = num_sms;
  p.dout = b.dout; p.dlse = b.dlse; p.dq = b.dq; p.dk = b.dk; p.dv = b.dv; p.deterministic = det;
  return p;
}

static std::string cfg_name(const Cfg& c) {
  char buf[256];
  snprintf(buf, sizeof(buf), "%s D%-3d B%d Sq%-5d Sk%-5d H%d/%d %s wl%d wr%d cap%.0f%s", c.fp16 ? "fp16" : "bf16", c.D, c.B, c.Sq, c.Sk,
           c.Hq, c.Hk, c.causal ? "causal" : "full  ", c.wl, c.wr, c.softcap, c.dlse ? " dlse" : "");
  return buf;
}

static int g_fail = 0;

static void check(Cfg c, int num_sms, uint64_t seed) {
  if (c.causal) { c.wr = 0; if (c.wl >= 0) c.causal = false; }
  {
    Bufs probe{};
    probe.q = probe.k = probe.v = probe.out = probe.dout = probe.dq = probe.dk = probe.dv = nullptr;
    if (!bwd_sm90_supported(make_params(c, probe, false, num_sms))) {
      printf("SKIP  %s (not supported by this build)\n", cfg_name(c).c_str());
      return;
    }
  }
  const int64_t nq = int64_t(c.B) * c.Sq * c.Hq * c.D, nk = int64_t(c.B) * c.Sk * c.Hk * c.D;
  const int64_t nrow = int64_t(c.B) * c.Hq * c.Sq, nS = nrow * c.Sk;
  Bufs b{};
  CK(cudaMalloc(&b.q, nq * 2)); CK(cudaMalloc(&b.k, nk * 2)); CK(cudaMalloc(&b.v, nk * 2));
  CK(cudaMalloc(&b.out, nq * 2)); CK(cudaMalloc(&b.dout, nq * 2)); CK(cudaMalloc(&b.dq, nq * 2));
  CK(cudaMalloc(&b.dk, nk * 2)); CK(cudaMalloc(&b.dv, nk * 2));
  CK(cudaMalloc(&b.lse, nrow * 4)); CK(cudaMalloc(&b.dlse, nrow * 4));
  float *S, *P, *delta, *rdq, *rdk, *rdv;
  CK(cudaMalloc(&S, nS * 4)); CK(cudaMalloc(&P, nS * 4)); CK(cudaMalloc(&delta, nrow * 4));
  CK(cudaMalloc(&rdq, nq * 4)); CK(cudaMalloc(&rdk, nk * 4)); CK(cudaMalloc(&rdv, nk * 4));
  fill(b.q, nq, seed + 1, 1.f, c.fp16); fill(b.k, nk, seed + 2, 1.f, c.fp16); fill(b.v, nk, seed + 3, 1.f, c.fp16);
  fill(b.dout, nq, seed + 4, 1.f, c.fp16);
  if (c.dlse) fill(b.dlse, nrow, seed + 5, 0.3f, false, true);
  else CK(cudaMemset(b.dlse, 0, nrow * 4));

  BwdParams p = make_params(c, b, false, num_sms);
  const float scale = p.softmax_scale;
  k_ref_scores<<<2048, 256>>>(c, b.q, b.k, S, scale);
  k_ref_fwd_row<<<unsigned(nrow), 256>>>(c, S, b.v, b.out, b.lse);
  k_ref_delta<<<256, 256>>>(c, b.out, b.dout, b.dlse, delta);
  k_ref_pds<<<2048, 256>>>(c, S, P, b.lse, delta, b.dout, b.v);
  k_ref_dq<<<2048, 256>>>(c, S, b.k, rdq, scale);
  k_ref_dkv<<<2048, 256>>>(c, S, b.q, rdk, scale);
  k_ref_dkv<<<2048, 256>>>(c, P, b.dout, rdv, 1.f);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());

  const std::string name = cfg_name(c);
  if (!bwd_sm90_supported(p)) {
    printf("SKIP  %s (not supported by this build)\n", name.c_str());
  } else {
    b.ws_bytes = bwd_sm90_workspace_bytes(p);
    {
      // The FFI size query (jax_flash3_bwd_workspace_bytes) sees shapes and windows, not the
      // softcap: the size it gets must be enough, and it is what the harness allocates.
      BwdParams shape_only = p;
      shape_only.mask.softcap = 0.f;
      const size_t query = bwd_sm90_workspace_bytes(shape_only);
      if (query < b.ws_bytes) {
        printf("FAIL %s workspace query %zu < %zu needed\n", name.c_str(), query, b.ws_bytes);
        ++g_fail;
      }
      b.ws_bytes = query;
    }
    CK(cudaMalloc(&b.ws, std::max<size_t>(b.ws_bytes, 16)));
    std::vector<char> det_prev[3];
    for (int run = 0; run < 3; ++run) {  // run 0: default; runs 1, 2: deterministic
      const bool det = run > 0;
      p = make_params(c, b, det, num_sms);
      CK(cudaMemset(b.ws, 0xFF, b.ws_bytes));
      CK(cudaMemset(b.dq, 0xFF, nq * 2)); CK(cudaMemset(b.dk, 0xFF, nk * 2)); CK(cudaMemset(b.dv, 0xFF, nk * 2));
      CK(run_bwd_sm90(p, 0));
      CK(cudaDeviceSynchronize());
      Err eq = compare(b.dq, rdq, nq, c.fp16), ek = compare(b.dk, rdk, nk, c.fp16), ev = compare(b.dv, rdv, nk, c.fp16);
      // bf16 output rounding alone is ~2^-9 relative; accumulated bf16 P/dS rounding adds more.
      const double tol = c.fp16 ? 1e-2 : 2.5e-2;
      bool ok = eq.nan_count == 0 && ek.nan_count == 0 && ev.nan_count == 0 && eq.rel_l2 < tol && ek.rel_l2 < tol &&
                ev.rel_l2 < tol;
      bool bit_ok = true;
      if (det) {
        std::vector<char> cur[3] = {std::vector<char>(nq * 2), std::vector<char>(nk * 2), std::vector<char>(nk * 2)};
        CK(cudaMemcpy(cur[0].data(), b.dq, nq * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(cur[1].data(), b.dk, nk * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(cur[2].data(), b.dv, nk * 2, cudaMemcpyDeviceToHost));
        if (run == 2) bit_ok = cur[0] == det_prev[0] && cur[1] == det_prev[1] && cur[2] == det_prev[2];
        for (int t = 0; t < 3; ++t) det_prev[t] = std::move(cur[t]);
      }
      ok = ok && bit_ok;
      if (!ok) ++g_fail;
      printf("%s %s%s dQ %.2e/%.2e (%.1e) dK %.2e/%.2e (%.1e) dV %.2e/%.2e (%.1e) nan %lld/%lld/%lld%s\n", ok ? "PASS" : "FAIL",
             name.c_str(), det ? " det" : "    ", eq.rel_l2, eq.max_abs, eq.max_ref, ek.rel_l2, ek.max_abs, ek.max_ref,
             ev.rel_l2, ev.max_abs, ev.max_ref, (long long)eq.nan_count, (long long)ek.nan_count, (long long)ev.nan_count,
             run == 2 ? (bit_ok ? " bitwise-identical" : " NOT-BITWISE-IDENTICAL") : "");
      fflush(stdout);
    }
    CK(cudaFree(b.ws));
  }
  for (void* ptr : {b.q, b.k, b.v, b.out, b.dout, b.dq, b.dk, b.dv}) CK(cudaFree(ptr));
  for (float* ptr : {b.lse, b.dlse, S, P, delta, rdq, rdk, rdv}) CK(cudaFree(ptr));
}

// lse for the timing runs: log(Sk) + small noise (the values only need to keep P finite)
__global__ void k_fake_lse(float* lse, int64_t n, float base) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    lse[i] = base + 0.1f * float(i % 7);
}

static void bench(int D, int S, bool causal, bool det, bool fp16, int num_sms, const char* tag = "") {
  Cfg c{16384 / S, S, S, 2048 / D, 2048 / D, D, causal, -1, causal ? 0 : -1, 0.f, fp16, false};
  const int64_t nq = int64_t(c.B) * c.Sq * c.Hq * c.D, nk = int64_t(c.B) * c.Sk * c.Hk * c.D;
  const int64_t nrow = int64_t(c.B) * c.Hq * c.Sq;
  Bufs b{};
  CK(cudaMalloc(&b.q, nq * 2)); CK(cudaMalloc(&b.k, nk * 2)); CK(cudaMalloc(&b.v, nk * 2));
  CK(cudaMalloc(&b.out, nq * 2)); CK(cudaMalloc(&b.dout, nq * 2)); CK(cudaMalloc(&b.dq, nq * 2));
  CK(cudaMalloc(&b.dk, nk * 2)); CK(cudaMalloc(&b.dv, nk * 2));
  CK(cudaMalloc(&b.lse, nrow * 4)); CK(cudaMalloc(&b.dlse, nrow * 4));
  fill(b.q, nq, 11, 1.f, fp16); fill(b.k, nk, 12, 1.f, fp16); fill(b.v, nk, 13, 1.f, fp16);
  fill(b.out, nq, 14, 0.3f, fp16); fill(b.dout, nq, 15, 1.f, fp16);
  k_fake_lse<<<256, 256>>>(b.lse, nrow, std::log(float(S)) + 2.f);
  CK(cudaMemset(b.dlse, 0, nrow * 4));
  BwdParams p = make_params(c, b, det, num_sms);
  if (!bwd_sm90_supported(p)) {
    printf("SKIP bench D%d S%d\n", D, S);
    return;
  }
  b.ws_bytes = bwd_sm90_workspace_bytes(p);
  CK(cudaMalloc(&b.ws, b.ws_bytes));
  p = make_params(c, b, det, num_sms);
  for (int i = 0; i < 3; ++i) CK(run_bwd_sm90(p, 0));
  CK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  std::vector<float> ts;
  for (int r = 0; r < 10; ++r) {
    CK(cudaEventRecord(e0));
    CK(run_bwd_sm90(p, 0));
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end());
  const float ms = ts[ts.size() / 2];
  double flops = 2.5 * 4.0 * c.B * c.Hq * double(S) * S * D * (causal ? 0.5 : 1.0);
  printf("BENCH %s D%-3d S%-5d B%-2d H%-2d %s %s %8.3f ms %6.1f TFLOPs/s %s\n", fp16 ? "fp16" : "bf16", D, S, c.B, c.Hq,
         causal ? "causal" : "full  ", det ? "det" : "   ", ms, flops / ms * 1e-9, tag);
  fflush(stdout);
  CK(cudaEventDestroy(e0)); CK(cudaEventDestroy(e1));
  for (void* ptr : {b.q, b.k, b.v, b.out, b.dout, b.dq, b.dk, b.dv, b.ws}) CK(cudaFree(ptr));
  for (float* ptr : {b.lse, b.dlse}) CK(cudaFree(ptr));
}

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "all";
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const int sms = prop.multiProcessorCount;
  if (mode == "check" || mode == "all") {
    uint64_t seed = 1000;
    const int dims[] = {64, 80, 96, 128, 192, 256};
    for (int D : dims) {
      // B, Sq, Sk, Hq, Hk, D, causal, wl, wr, softcap, fp16, dlse
      check({2, 113, 113, 2, 2, D, false, -1, -1, 0.f, false, false}, sms, seed++);
      check({1, 1000, 4097, 4, 2, D, true, -1, -1, 0.f, false, true}, sms, seed++);
      check({1, 4097, 1000, 2, 1, D, false, 100, 37, 0.f, false, false}, sms, seed++);
      check({1, 17, 1000, 2, 2, D, false, -1, -1, 30.f, false, false}, sms, seed++);
      check({2, 1000, 113, 4, 1, D, true, -1, -1, 0.f, false, false}, sms, seed++);  // rows 0..886 see nothing
      check({1, 1, 17, 2, 2, D, true, -1, -1, 0.f, false, false}, sms, seed++);
      check({1, 1000, 1000, 2, 2, D, true, -1, -1, 20.f, true, true}, sms, seed++);
      // No mask, no softcap (hdim 128 runs 80-row query blocks): Sq not a multiple of 80, GQA, dlse.
      check({1, 1000, 517, 4, 2, D, false, -1, -1, 0.f, false, true}, sms, seed++);
      check({2, 161, 300, 2, 2, D, false, -1, -1, 0.f, false, false}, sms, seed++);
      // Only a left window limit (the longest-first order walks the key blocks from the end).
      check({2, 1000, 1500, 2, 1, D, false, 200, -1, 0.f, false, false}, sms, seed++);
      // Causal with (batch, KV head) pairs in two L2 sections of 2 and 1 (hdim 128: 16 MB each).
      if (D == 128) check({3, 4096, 4096, 4, 1, D, true, -1, -1, 0.f, false, false}, sms, seed++);
    }
    printf("check failures: %d\n", g_fail);
  }
  if (mode == "small") {  // a few small configs per head dim, for compute-sanitizer
    uint64_t seed = 5000;
    for (int D : {64, 96, 128, 192, 256}) {
      check({1, 113, 200, 2, 1, D, false, -1, -1, 0.f, false, false}, sms, seed++);
      check({1, 130, 130, 2, 2, D, true, -1, -1, 0.f, false, true}, sms, seed++);
      check({1, 17, 150, 2, 2, D, false, -1, -1, 30.f, false, false}, sms, seed++);
      check({1, 161, 90, 4, 2, D, false, -1, -1, 0.f, false, true}, sms, seed++);
    }
    printf("check failures: %d\n", g_fail);
  }
  if (mode == "one" && argc >= 6) {  // one D S causal det: a single timing config (for ncu)
    bench(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]) != 0, atoi(argv[5]) != 0, false, sms);
    return 0;
  }
  if (mode == "bench" || mode == "all") {
    for (int D : {64, 128, 256}) {
      for (int S : {1024, 4096, 16384}) bench(D, S, false, false, false, sms);
      bench(D, 8192, false, false, false, sms);
      bench(D, 8192, true, false, false, sms);
      bench(D, 8192, false, true, false, sms);
      bench(D, 8192, true, true, false, sms);
    }
  }
  return g_fail ? 1 : 0;
}

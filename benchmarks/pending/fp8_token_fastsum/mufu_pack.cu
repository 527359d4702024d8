// jax_flash3 microbenchmark: how busy one to four warps per scheduler keep the MUFU in the
// FP8 softmax's per-score patterns. One CTA per SM, W warps per SMSP (4 * W warps); each thread
// runs 64 independent scores per round (2 rows x 32, as a consumer thread of the d128 kernel).
//   sum : FFMA -> ex2 -> FADD into one running sum per row (the exact-LSE kernel)
//   pack: FFMA -> ex2 -> cvt.rn.satfinite.e4m3x2.f32 per pair (the fast-sum kernel: no FADD)
//   ex2 : ex2 alone
// Prints cycles per ex2 warp-instruction per SMSP (8.0 = the MUFU's 16 / clk / SM).
// Build: nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -o mufu_pack mufu_pack.cu
#include <cstdint>
#include <cstdio>
#include <cuda_runtime.h>

template <int kMode>
__global__ void k(float* out, int rounds, float c, long long* cyc) {
  float s[64];
  for (int j = 0; j < 64; ++j) s[j] = threadIdx.x * 1e-3f + j * 1e-2f;
  float acc = 0.f;
  uint32_t bits = 0;
  __syncthreads();
  const long long t0 = clock64();
  for (int r = 0; r < rounds; ++r) {
    const float sub0 = 3.f + r * 1e-6f, sub1 = 2.f - r * 1e-6f;  // per-row max, changes per round
    float sum0 = 0.f, sum1 = 0.f;
    float p[64];
#pragma unroll
    for (int j = 0; j < 64; ++j) {
      const float x = kMode == 2 ? s[j] : fmaf(s[j], c, j < 32 ? -sub0 : -sub1);
      asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(p[j]) : "f"(x));
      if (kMode == 0) (j < 32 ? sum0 : sum1) += p[j];
    }
    if (kMode == 0) acc += sum0 + sum1;
    if (kMode == 1) {
#pragma unroll
      for (int j = 0; j < 64; j += 2) {
        uint16_t h;
        asm volatile("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(h) : "f"(p[j + 1]), "f"(p[j]));
        bits ^= uint32_t(h) << (j & 16);
      }
    }
#pragma unroll
    for (int j = 0; j < 64; ++j) s[j] = kMode == 2 ? p[j] * -0.5f : s[j] * 0.999f + 1e-4f;
  }
  __syncthreads();
  const long long t1 = clock64();
  for (int j = 0; j < 64; ++j) acc += s[j];
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc + float(bits);
}

int main() {
  int sms;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  float* out;
  long long* cyc;
  cudaMalloc(&out, sms * 1024 * 4);
  cudaMalloc(&cyc, sms * 8);
  const int rounds = 2000;
  const char* names[3] = {"sum  (ffma+ex2+fadd)", "pack (ffma+ex2+f2fp)", "ex2 only           "};
  for (int mode = 0; mode < 3; ++mode)
    for (int w = 1; w <= 4; ++w) {
      const int threads = 128 * w;
      for (int rep = 0; rep < 2; ++rep) {
        if (mode == 0) k<0><<<sms, threads>>>(out, rounds, 0.7f, cyc);
        if (mode == 1) k<1><<<sms, threads>>>(out, rounds, 0.7f, cyc);
        if (mode == 2) k<2><<<sms, threads>>>(out, rounds, 0.7f, cyc);
      }
      cudaDeviceSynchronize();
      long long c;
      cudaMemcpy(&c, cyc, 8, cudaMemcpyDeviceToHost);
      const double per = double(c) / (double(w) * rounds * 64);  // per SMSP
      std::printf("%s warps/SMSP %d: %.2f cycles per ex2 warp-instruction per SMSP (%.2f per warp)\n",
                  names[mode], w, per, per * w);
    }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) std::printf("CUDA error: %s\n", cudaGetErrorString(e));
  return e == cudaSuccess ? 0 : 1;
}

// MUFU.EX2 throughput by warps per scheduler: one CTA per SM, W warps per SMSP (4*W warps),
// each thread runs an FFMA -> ex2 -> FADD chain over 64 independent scores per round, like the
// FP8 softmax. Prints cycles per warp-instruction of ex2 per SMSP.
#include <cstdio>
#include <cuda_runtime.h>
__global__ void k(float* out, int rounds, float c, float sub, long long* cyc) {
  float s[64];
  for (int j = 0; j < 64; ++j) s[j] = threadIdx.x * 1e-3f + j * 1e-2f;
  float acc = 0.f;
  __syncthreads();
  long long t0 = clock64();
  for (int r = 0; r < rounds; ++r) {
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < 64; ++j) {
      float p;
      asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(p) : "f"(fmaf(s[j], c, -sub)));
      sum += p;
    }
    acc += sum;
#pragma unroll
    for (int j = 0; j < 64; ++j) s[j] = s[j] * 0.999f + 1e-4f;  // keep inputs live and changing
  }
  __syncthreads();
  long long t1 = clock64();
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
__global__ void k_only(float* out, int rounds, float c, float sub, long long* cyc) {
  float s[64];
  for (int j = 0; j < 64; ++j) s[j] = threadIdx.x * 1e-3f + j * 1e-2f;
  float acc = 0.f;
  __syncthreads();
  long long t0 = clock64();
  for (int r = 0; r < rounds; ++r) {
#pragma unroll
    for (int j = 0; j < 64; ++j) {
      float p;
      asm volatile("ex2.approx.ftz.f32 %0, %1;" : "=f"(p) : "f"(s[j]));
      s[j] = p * -0.5f;  // dependent across rounds, independent within
    }
  }
  __syncthreads();
  long long t1 = clock64();
  for (int j = 0; j < 64; ++j) acc += s[j];
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}
int main() {
  int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  float* out; long long* cyc; cudaMalloc(&out, sms * 1024 * 4); cudaMalloc(&cyc, sms * 8);
  const int rounds = 2000;
  for (int variant = 0; variant < 2; ++variant)
    for (int w = 1; w <= 4; ++w) {
      int threads = 128 * w;
      for (int rep = 0; rep < 2; ++rep) {
        if (variant == 0) k<<<sms, threads>>>(out, rounds, 0.7f, 3.f, cyc);
        else k_only<<<sms, threads>>>(out, rounds, 0.7f, 3.f, cyc);
      }
      cudaDeviceSynchronize();
      long long c; cudaMemcpy(&c, cyc, 8, cudaMemcpyDeviceToHost);
      // per SMSP: w warps x rounds x 64 ex2 instructions
      double per = double(c) / (double(w) * rounds * 64);
      std::printf("%s warps/SMSP %d: %.2f cycles per ex2 warp-instruction per SMSP (%.2f per warp)\n",
                  variant == 0 ? "ffma+ex2+fadd" : "ex2 only     ", w, per, per * w);
    }
  return 0;
}

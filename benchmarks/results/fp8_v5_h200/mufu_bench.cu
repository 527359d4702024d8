#include <cuda_fp16.h>
#include <cstdio>
#include <cstdint>
__device__ __forceinline__ uint32_t ex2h2(uint32_t x){uint32_t y; asm volatile("ex2.approx.f16x2 %0, %1;":"=r"(y):"r"(x)); return y;}
__device__ __forceinline__ float ex2f(float x){float y; asm volatile("ex2.approx.ftz.f32 %0, %1;":"=f"(y):"f"(x)); return y;}
__device__ __forceinline__ uint32_t ex2bf2(uint32_t x){uint32_t y; asm volatile("ex2.approx.ftz.bf16x2 %0, %1;":"=r"(y):"r"(x)); return y;}
// 8 independent chains per thread, N iterations
template<int MODE>
__global__ void k(float* out, int iters, float seed){
  float f[8]; uint32_t h[8];
  for(int i=0;i<8;++i){ f[i]=seed*(threadIdx.x+i)*1e-6f - 1.f; __half2 t=__floats2half2_rn(f[i],f[i]*0.5f); h[i]=*(uint32_t*)&t; }
  for(int it=0; it<iters; ++it){
    #pragma unroll
    for(int i=0;i<8;++i){
      if(MODE==0) f[i]=ex2f(f[i])-1.f;            // MUFU f32 + FADD
      else if(MODE==1) h[i]=ex2h2(h[i])^0x80008000u; // f16x2 (+LOP)
      else if(MODE==2) h[i]=ex2bf2(h[i])^0x80008000u;
      else f[i]=exp2f(f[i])-1.f;
    }
  }
  float s=0; for(int i=0;i<8;++i) s+=f[i]+__uint_as_float(h[i]);
  out[blockIdx.x*blockDim.x+threadIdx.x]=s;
}
int main(){
  float* o; cudaMalloc(&o, 132*8*1024*4);
  int iters=4096;
  for(int mode=0; mode<4; ++mode){
    cudaEvent_t a,b; cudaEventCreate(&a); cudaEventCreate(&b);
    for(int rep=0; rep<3; ++rep){
    cudaEventRecord(a);
    if(mode==0) k<0><<<132*8,1024/1>>>(o,iters,1.f);
    if(mode==1) k<1><<<132*8,1024>>>(o,iters,1.f);
    if(mode==2) k<2><<<132*8,1024>>>(o,iters,1.f);
    if(mode==3) k<3><<<132*8,1024>>>(o,iters,1.f);
    cudaEventRecord(b); cudaEventSynchronize(b);
    float ms; cudaEventElapsedTime(&ms,a,b);
    double insts = 132.0*8*1024*iters*8; // MUFU thread-instructions
    printf("mode %d: %.3f ms, %.2f MUFU-instr/clk/SM at 1.98GHz-equivalent: %.2f Ginstr/s per SM\n", mode, ms, insts/(ms*1e-3)/132/1.98e9, insts/(ms*1e-3)/132/1e9);
    }
  }
  printf("%s\n", cudaGetErrorString(cudaGetLastError()));
}

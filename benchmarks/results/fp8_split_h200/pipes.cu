// Per-SM throughput of the softmax's instruction kinds (one 1024-thread block per SM, cycles by clock64).
#include <cstdio>
#include <cstdint>
__device__ __forceinline__ float ex2f(float x){float y; asm volatile("ex2.approx.ftz.f32 %0, %1;":"=f"(y):"f"(x)); return y;}
__device__ __forceinline__ uint32_t cvt8(float a, float b){uint16_t h; asm volatile("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;":"=h"(h):"f"(a),"f"(b)); return h;}
__device__ __forceinline__ uint32_t cvth(float a, float b){uint32_t h; asm volatile("cvt.rn.f16x2.f32 %0, %1, %2;":"=r"(h):"f"(a),"f"(b)); return h;}
__device__ __forceinline__ uint32_t cvt8h(uint32_t x){uint16_t h; asm volatile("cvt.rn.satfinite.e4m3x2.f16x2 %0, %1;":"=h"(h):"r"(x)); return h;}
template<int MODE>
__global__ void k(float* out, long long* cyc, int iters, float seed){
  float f[8]; uint32_t u[8];
  for(int i=0;i<8;++i){ f[i]=seed*(threadIdx.x+i)*1e-6f - 1.f; u[i]=threadIdx.x*i; }
  __syncthreads();
  long long t0=clock64();
  for(int it=0; it<iters; ++it){
    #pragma unroll
    for(int i=0;i<8;++i){
      if(MODE==0) f[i]=ex2f(f[i]);                               // 1 MUFU
      else if(MODE==1) u[i]=cvt8(__uint_as_float(u[i]), f[i]);   // 1 F2FP e4m3x2
      else if(MODE==2) { f[i]=ex2f(f[i]); u[i]=cvt8(__uint_as_float(u[i]), f[i]); } // MUFU + F2FP
      else if(MODE==3) u[i]=cvth(__uint_as_float(u[i]), f[i]);   // F2FP f16x2
      else if(MODE==4) u[i]=cvt8h(u[i]);                         // f16x2 -> e4m3x2
      else if(MODE==5) { f[i]=ex2f(f[i]); u[i]=cvt8(__uint_as_float(u[i]), f[i]); u[i]=cvt8(__uint_as_float(u[i]), f[i]); } // MUFU + 2 F2FP
    }
  }
  long long t1=clock64();
  __syncthreads();
  float s=0; for(int i=0;i<8;++i) s+=f[i]+__uint_as_float(u[i]);
  out[blockIdx.x*blockDim.x+threadIdx.x]=s;
  if(threadIdx.x==0) cyc[blockIdx.x]=t1-t0;
}
int main(){
  float* o; long long* c; cudaMalloc(&o, 132*1024*4); cudaMalloc(&c, 132*8);
  int iters=8192; const char* names[]={"MUFU.EX2","F2FP e4m3x2.f32","MUFU+F2FP e4m3","F2FP f16x2.f32","cvt e4m3x2.f16x2","MUFU+2xF2FP e4m3"};
  for(int mode=0; mode<6; ++mode){
    for(int rep=0; rep<2; ++rep){
      if(mode==0) k<0><<<132,1024>>>(o,c,iters,1.f);
      if(mode==1) k<1><<<132,1024>>>(o,c,iters,1.f);
      if(mode==2) k<2><<<132,1024>>>(o,c,iters,1.f);
      if(mode==3) k<3><<<132,1024>>>(o,c,iters,1.f);
      if(mode==4) k<4><<<132,1024>>>(o,c,iters,1.f);
      if(mode==5) k<5><<<132,1024>>>(o,c,iters,1.f);
      cudaDeviceSynchronize();
      long long cy; cudaMemcpy(&cy, c, 8, cudaMemcpyDeviceToHost);
      double per = 1024.0*iters*8/cy;  // loop-iterations (one per chain element) per clock per SM
      printf("%-20s: %.2f element-steps/clk/SM (each step = the op list)\n", names[mode], per);
    }
  }
  printf("%s\n", cudaGetErrorString(cudaGetLastError()));
}

#!/bin/bash
# d256 (and d128) after the final change vs HEAD: harness interleaved, then JAX interleaved.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
{
for r in 1 2 3; do for b in base new; do for d in 256 128; do
  FP8_BENCH_D=$d FP8_BENCH_NO_BF16=1 timeout 60 ./h_$b bench 2>&1 | grep "^fp8" | sed -n '1,2p' | sed "s/^/$b r$r /"
done; done; done
cd ../
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
for lib in libbase lib libbase lib; do
JAX_FLASH3_LIBRARY=$PWD/build-p8/$lib/libjax_flash3_cuda.so timeout 100 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 128 256 --seqs 16384 --causal 0 2>&1 | tail -2 | sed "s/^/$lib /"
done
} 2>&1 | tee $O/ab.txt

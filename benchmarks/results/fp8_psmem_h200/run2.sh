#!/bin/bash
# Chain trimming (JAX_FLASH3_FP8_TRIM=1: K/V waits before the turn, mask test before the QK wait) vs base.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
{
nvidia-smi --query-gpu=name,clocks.sm,power.limit --format=csv,noheader
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 ./h_tr1 check > $O/check_tr1_prepass.txt 2>&1; echo "tr1 check prepass rc=$? $(tail -1 $O/check_tr1_prepass.txt)"; grep FAIL $O/check_tr1_prepass.txt | head -4
timeout 120 ./h_tr1 check > $O/check_tr1.txt 2>&1; echo "tr1 check auto rc=$? $(tail -1 $O/check_tr1.txt)"; grep FAIL $O/check_tr1.txt | head -4
for r in 1 2 3 4; do for b in base tr1; do
  FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./h_$b bench 2>&1 | grep "^fp8" | sed -n '1,2p' | sed "s/^/$b r$r /"
done; done
echo "t=$(( $(date +%s)-T0 ))"
} 2>&1 | tee $O/run2.txt
cd ../..
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
for lib in build-p6/run2/libbase build-p6/run2/lib build-p6/run2/libbase build-p6/run2/lib; do
JAX_FLASH3_LIBRARY=$PWD/$lib/libjax_flash3_cuda.so timeout 100 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 128 --seqs 16384 --causal 0 > $O/bench_$(basename $lib).txt 2>&1; echo "bench $lib rc=$? t=$(( $(date +%s)-T0 ))" | tee -a $O/run2.txt; tail -2 $O/bench_$(basename $lib).txt | tee -a $O/run2.txt
done

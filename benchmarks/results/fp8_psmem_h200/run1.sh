#!/bin/bash
# P through smem (kPSmem 1: overlapped order, wait hoisted by ptxas; 2: softmax pinned before the PV wait) vs base.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
{
nvidia-smi --query-gpu=name,clocks.sm,power.limit --format=csv,noheader
for b in ps2 ps1; do
  JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 ./h_$b check > $O/check_${b}_prepass.txt 2>&1; echo "$b check prepass rc=$? $(tail -1 $O/check_${b}_prepass.txt)"; grep FAIL $O/check_${b}_prepass.txt | head -4
done
timeout 120 ./h_ps2 check > $O/check_ps2.txt 2>&1; echo "ps2 check auto rc=$? $(tail -1 $O/check_ps2.txt)"; grep FAIL $O/check_ps2.txt | head -4
echo "t=$(( $(date +%s)-T0 ))"
for r in 1 2 3; do for b in base ps1 ps2; do
  FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./h_$b bench 2>&1 | grep "^fp8" | sed -n '1,2p' | sed "s/^/$b r$r /"
done; done
echo "t=$(( $(date +%s)-T0 ))"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 90 compute-sanitizer --tool racecheck ./h_ps2 small > $O/racecheck_ps2.txt 2>&1; echo "racecheck ps2 prepass rc=$? $(tail -1 $O/racecheck_ps2.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 90 compute-sanitizer --tool memcheck ./h_ps2 small > $O/memcheck_ps2.txt 2>&1; echo "memcheck ps2 prepass rc=$? $(tail -1 $O/memcheck_ps2.txt)"
echo "t=$(( $(date +%s)-T0 ))"
} 2>&1 | tee $O/run1.txt
cd ..; cd ..
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-p6/run/lib/libjax_flash3_cuda.so
if grep -q "ps2 check prepass rc=0" $O/run1.txt; then
timeout 200 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8.txt 2>&1; echo "pytest fp8 rc=$? $(tail -1 $O/gpu_tests_fp8.txt) t=$(( $(date +%s)-T0 ))" | tee -a $O/run1.txt; grep FAILED $O/gpu_tests_fp8.txt | head | tee -a $O/run1.txt
timeout 150 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 128 256 --seqs 16384 --causal 0 1 > $O/bench_fp8.txt 2>&1; echo "bench rc=$? t=$(( $(date +%s)-T0 ))" | tee -a $O/run1.txt; tail -8 $O/bench_fp8.txt | tee -a $O/run1.txt
fi

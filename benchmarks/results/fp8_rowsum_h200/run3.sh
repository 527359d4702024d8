#!/bin/bash
# Session 7: fast sums in the d256 pre-pass kernel too (overlapped GEMM order): checks, A/B in one
# process, FP8 GPU tests, sanitizers, JAX bench.
R=$PWD; cd "$(dirname "$0")/.."; D=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins3.tar.xz
{
date +%T
export FP8_HARNESS_FAST_SUM=1
for mode in prepass auto; do
  JAX_FLASH3_FP8_V_TRANSPOSE=$mode timeout 100 ./bin3/hf check > $O/check_${mode}_fast.txt 2>&1; echo "check $mode fast rc=$? $(tail -1 $O/check_${mode}_fast.txt)"; grep FAIL $O/check_${mode}_fast.txt | head -5
done
JAX_FLASH3_FP8_SPLIT=0 JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 100 ./bin3/hf check > $O/check_nosplit_fast.txt 2>&1; echo "check split-off prepass fast rc=$? $(tail -1 $O/check_nosplit_fast.txt)"; grep FAIL $O/check_nosplit_fast.txt | head -3
grep "d=256" $O/check_prepass_fast.txt | grep sm90 | head -6
unset FP8_HARNESS_FAST_SUM
date +%T
for cfg in "256 16384 0" "256 8192 0" "256 4096 0" "256 16384 1" "128 16384 0"; do timeout 60 ./bin3/hf ab $cfg 40 4 | grep "^ab"; done
date +%T
cd $R; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$D/bin3/libjax_flash3_cuda.so
timeout 150 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8.txt 2>&1; echo "pytest -m gpu tests/test_fp8.py rc=$? $(tail -1 $O/gpu_tests_fp8.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_fp8.txt | head
timeout 120 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 128 256 --seqs 16384 --causal 0 1 --out $O/bench_fp8.json 2>&1 | tail -5
date +%T
cd $D; export FP8_HARNESS_FAST_SUM=1
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 100 compute-sanitizer --tool memcheck ./bin3/hf small > $O/memcheck_fast.txt 2>&1; echo "memcheck prepass fast rc=$? $(tail -1 $O/memcheck_fast.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 100 compute-sanitizer --tool racecheck ./bin3/hf small > $O/racecheck_fast.txt 2>&1; echo "racecheck prepass fast rc=$? $(tail -1 $O/racecheck_fast.txt)"
date +%T
} 2>&1 | tee $O/run3.txt

#!/bin/bash
# Session 7: fast sums in the d128 in-kernel-transpose kernel too (128 x 128, 2 warpgroups,
# overlapped GEMMs): checks, A/B in one process at the sizes that use it, sanitizer, no-LSE tests.
R=$PWD; cd "$(dirname "$0")/.."; D=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins5.tar.xz
{
date +%T
export FP8_HARNESS_FAST_SUM=1
for mode in kernel auto; do
  JAX_FLASH3_FP8_V_TRANSPOSE=$mode timeout 100 ./bin5/hf check > $O/check_${mode}_fast.txt 2>&1; echo "check $mode fast rc=$? $(tail -1 $O/check_${mode}_fast.txt)"; grep FAIL $O/check_${mode}_fast.txt | head -5
done
unset FP8_HARNESS_FAST_SUM
for cfg in "128 1024 0" "128 512 0" "128 2048 1" "128 1024 1" "96 1024 0"; do timeout 60 ./bin5/hf ab $cfg 40 4 | grep "^ab"; done
date +%T
cd $R; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$D/bin5/libjax_flash3_cuda.so
timeout 100 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs -k "without_lse" > $O/gpu_tests_no_lse.txt 2>&1; echo "no-lse tests rc=$? $(tail -1 $O/gpu_tests_no_lse.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_no_lse.txt | head
date +%T
cd $D; export FP8_HARNESS_FAST_SUM=1
JAX_FLASH3_FP8_V_TRANSPOSE=kernel timeout 80 compute-sanitizer --tool racecheck ./bin5/hf small > $O/racecheck_kernel_fast.txt 2>&1; echo "racecheck in-kernel fast rc=$? $(tail -1 $O/racecheck_kernel_fast.txt)"
date +%T
} 2>&1 | tee $O/run5.txt

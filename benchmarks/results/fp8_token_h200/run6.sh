#!/bin/bash
# Optimistic exps in the FP8 d128 serial loop (o1) vs base (h0): checks, A/B, FP8 GPU tests.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
{
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 150 ./o1 check > $O/check_o1_prepass.txt 2>&1; echo "o1 check prepass rc=$? $(tail -1 $O/check_o1_prepass.txt)"; grep FAIL $O/check_o1_prepass.txt | head -5
FP8_HARNESS_NO_OUTLIERS=1 JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 150 ./o1 check > $O/check_o1_noout.txt 2>&1; echo "o1 check prepass no-outliers rc=$? $(tail -1 $O/check_o1_noout.txt)"; grep FAIL $O/check_o1_noout.txt | head -5
timeout 150 ./o1 check > $O/check_o1_auto.txt 2>&1; echo "o1 check auto rc=$? $(tail -1 $O/check_o1_auto.txt)"; grep FAIL $O/check_o1_auto.txt | head -5
orders=("h0 o1" "o1 h0" "h0 o1" "o1 h0")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  a=$(timeout 30 ./$v one 128 16384 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  b=$(timeout 30 ./$v one 128 8192 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  c=$(timeout 30 ./$v one 128 4096 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  d=$(timeout 30 ./$v one 128 16384 1 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  echo "r$r $v  16k $a  8k $b  4k $c  16k-causal $d"
done; done
echo "t=$(( $(date +%s)-T0 ))"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 100 compute-sanitizer --tool memcheck ./o1 small > $O/memcheck_o1.txt 2>&1; echo "memcheck o1 rc=$? $(grep 'ERROR SUMMARY' $O/memcheck_o1.txt)"
cd ..
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-y/lib/libjax_flash3_cuda.so
timeout 300 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8.txt 2>&1; echo "pytest fp8 rc=$? $(tail -1 $O/gpu_tests_fp8.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_fp8.txt | head
echo "t=$(( $(date +%s)-T0 ))"
} 2>&1 | tee $O/run.txt

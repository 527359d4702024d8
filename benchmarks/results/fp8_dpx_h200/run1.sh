#!/bin/bash
# DPX block max: h1 = JF3_FP8_DPX=1 (d64/128/256), h2 = DPX=2 at d128 (no negative fallback: timing bound), h0 base.
R=$PWD; cd "$(dirname "$0")/.."; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $O/gpu.txt
one(){ timeout 30 ./$1 one $2 $3 $4 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1; }
{
date
for mode in prepass auto; do
JAX_FLASH3_FP8_V_TRANSPOSE=$mode timeout 100 ./h1 check > $O/check_h1_$mode.txt 2>&1; echo "h1 check $mode rc=$? $(grep -c PASS $O/check_h1_$mode.txt) pass $(grep -c FAIL $O/check_h1_$mode.txt) fail"; grep FAIL $O/check_h1_$mode.txt | head -5
done
date
orders=("h0 h1 h2" "h2 h0 h1" "h1 h2 h0")
for r in 0 1 2; do for v in ${orders[$r]}; do
  echo "r$r $v  d128: 16k $(one $v 128 16384 0)  8k $(one $v 128 8192 0)  4k $(one $v 128 4096 0)  16k-causal $(one $v 128 16384 1)"
done; for v in h0 h1; do
  echo "r$r $v  d128 2k $(one $v 128 2048 0) | d256 16k $(one $v 256 16384 0) causal $(one $v 256 16384 1) | d64 16k $(one $v 64 16384 0)"
done; done
date
cd $R; D=$R/build-c1; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
JAX_FLASH3_LIBRARY=$D/lib_h1/libjax_flash3_cuda.so timeout 200 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8_h1.txt 2>&1; echo "pytest fp8 lib h1 rc=$? $(tail -1 $O/gpu_tests_fp8_h1.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_fp8_h1.txt | head
JAX_FLASH3_LIBRARY=$D/lib_h0/libjax_flash3_cuda.so timeout 60 python3 -m pytest -m gpu tests/test_fp8.py -k "running_max and negative" -p no:cacheprovider -q -rfs > $O/gpu_tests_neg_h0.txt 2>&1; echo "pytest negative lib h0 rc=$? $(tail -1 $O/gpu_tests_neg_h0.txt)"
date
} 2>&1 | tee $O/run.txt

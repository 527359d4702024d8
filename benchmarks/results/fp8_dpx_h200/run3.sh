#!/bin/bash
# DPX variants at d128: h3 = partial-max vote before the shuffles, h4 = per-thread fallback; h2 = no fallback (bound); h0 base.
R=$PWD; cd "$(dirname "$0")/.."; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
one(){ timeout 30 ./$1 one $2 $3 $4 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1; }
{
date
for v in h3 h4; do for mode in prepass auto; do
JAX_FLASH3_FP8_V_TRANSPOSE=$mode timeout 100 ./$v check > $O/check_${v}_$mode.txt 2>&1; echo "$v check $mode rc=$? $(grep -c PASS $O/check_${v}_$mode.txt) pass $(grep -c FAIL $O/check_${v}_$mode.txt) fail"; grep FAIL $O/check_${v}_$mode.txt | head -5
done; done
orders=("h0 h2 h3 h4" "h4 h0 h2 h3" "h3 h4 h0 h2" "h2 h3 h4 h0")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  echo "r$r $v  d128: 16k $(one $v 128 16384 0)  8k $(one $v 128 8192 0)  4k $(one $v 128 4096 0)  16k-causal $(one $v 128 16384 1)"
done; done
date
cd $R; D=$R/build-c1; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
for L in h3 h4; do
JAX_FLASH3_LIBRARY=$D/lib_$L/libjax_flash3_cuda.so timeout 150 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8_$L.txt 2>&1; echo "pytest fp8 lib $L rc=$? $(tail -1 $O/gpu_tests_fp8_$L.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_fp8_$L.txt | head
done
for L in h0 h1; do
JAX_FLASH3_LIBRARY=$D/lib_$L/libjax_flash3_cuda.so timeout 60 python3 -m pytest -m gpu tests/test_fp8.py -k "running_max and negative" -p no:cacheprovider -q -rfs > $O/gpu_tests_neg_$L.txt 2>&1; echo "pytest negative lib $L rc=$? $(tail -1 $O/gpu_tests_neg_$L.txt)"
done
JAX_FLASH3_LIBRARY=$D/lib_h0/libjax_flash3_cuda.so timeout 100 python3 build-c2/run/diag.py 2>&1 | tail -5 | tee $O/diag.txt
date
} 2>&1 | tee $O/run.txt

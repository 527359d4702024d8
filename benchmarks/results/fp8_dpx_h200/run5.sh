#!/bin/bash
# h6 = committed (integer max + vote every block), h7 = vote skipped while max_safe (d128), h8 = a vote-free copy of the step while max_safe (all dims).
R=$PWD; cd "$(dirname "$0")/.."; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
one(){ timeout 30 ./$1 one $2 $3 $4 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1; }
{
date
for v in h7 h8; do for mode in prepass auto; do
JAX_FLASH3_FP8_V_TRANSPOSE=$mode timeout 100 ./$v check > $O/check_${v}_$mode.txt 2>&1; echo "$v check $mode rc=$? $(grep -c PASS $O/check_${v}_$mode.txt) pass $(grep -c FAIL $O/check_${v}_$mode.txt) fail"; grep FAIL $O/check_${v}_$mode.txt | head -5
done; done
compute-sanitizer --tool memcheck ./h8 small > $O/memcheck_h8.txt 2>&1; echo "memcheck h8 rc=$? $(tail -1 $O/memcheck_h8.txt)"
orders=("h6 h7 h8" "h8 h6 h7" "h7 h8 h6" "h6 h8 h7")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  echo "r$r $v  d128: 16k $(one $v 128 16384 0)  8k $(one $v 128 8192 0)  4k $(one $v 128 4096 0)  2k $(one $v 128 2048 0)  16k-causal $(one $v 128 16384 1)"
done; for v in h6 h8; do
  echo "r$r $v  d64 16k $(one $v 64 16384 0) 4k $(one $v 64 4096 0) causal $(one $v 64 16384 1) | d256 16k $(one $v 256 16384 0) 4k $(one $v 256 4096 0) causal $(one $v 256 16384 1)"
done; done
date
cd $R; D=$R/build-c1; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
JAX_FLASH3_LIBRARY=$D/lib_h8/libjax_flash3_cuda.so timeout 150 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8_h8.txt 2>&1; echo "pytest fp8 lib h8 rc=$? $(tail -1 $O/gpu_tests_fp8_h8.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_fp8_h8.txt | head
for L in h8 h6; do
JAX_FLASH3_LIBRARY=$D/lib_$L/libjax_flash3_cuda.so timeout 100 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 128 256 --seqs 16384 --causal 0 > $O/bench_jax_$L.txt 2>&1; echo "bench lib $L rc=$?"; tail -3 $O/bench_jax_$L.txt
done
date
} 2>&1 | tee $O/run.txt

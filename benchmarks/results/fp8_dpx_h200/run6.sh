#!/bin/bash
# h9 = integer max, vote skipped while max_safe (JF3_FP8_DPX=2) at every head dim, vs h6 = committed.
R=$PWD; cd "$(dirname "$0")/.."; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
one(){ timeout 30 ./$1 one $2 $3 $4 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1; }
{
date
for mode in prepass auto; do
JAX_FLASH3_FP8_V_TRANSPOSE=$mode timeout 100 ./h9 check > $O/check_h9_$mode.txt 2>&1; echo "h9 check $mode rc=$? $(grep -c PASS $O/check_h9_$mode.txt) pass $(grep -c FAIL $O/check_h9_$mode.txt) fail"; grep FAIL $O/check_h9_$mode.txt | head -5
done
for t in memcheck racecheck; do timeout 120 compute-sanitizer --tool $t ./h9 small > $O/${t}_h9.txt 2>&1; echo "$t h9 rc=$? $(tail -1 $O/${t}_h9.txt)"; done
orders=("h6 h9" "h9 h6" "h6 h9" "h9 h6")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  echo "r$r $v  d128: 16k $(one $v 128 16384 0)  8k $(one $v 128 8192 0)  4k $(one $v 128 4096 0)  2k $(one $v 128 2048 0)  16k-causal $(one $v 128 16384 1) | d64 16k $(one $v 64 16384 0) 4k $(one $v 64 4096 0) causal $(one $v 64 16384 1) | d256 16k $(one $v 256 16384 0) 4k $(one $v 256 4096 0) causal $(one $v 256 16384 1)"
done; done
date
cd $R; D=$R/build-c1; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
export JAX_FLASH3_LIBRARY=$D/lib_h9/libjax_flash3_cuda.so
timeout 330 python3 -m pytest -m gpu tests -p no:cacheprovider -q -rfs > $O/gpu_tests_all_h9.txt 2>&1; echo "pytest all gpu lib h9 rc=$? $(tail -1 $O/gpu_tests_all_h9.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_all_h9.txt | head
date
timeout 120 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 64 128 256 --seqs 2048 16384 --causal 0 1 > $O/bench_jax_h9.txt 2>&1; echo "bench rc=$?"; tail -14 $O/bench_jax_h9.txt
date
} 2>&1 | tee $O/run.txt

#!/bin/bash
# Split QK^T in the FP8 d128 serial loop: h0 = HEAD; h1 = QK^T as two 64-key GEMMs, the first
# issued right behind PV(j-1) (turn passed after the second); h2 = same, turn passed after the
# first; h3 = 96 + 32 keys (P in the 32-key part's registers), turn after the second.
R=$PWD; cd "$(dirname "$0")/.."; D=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.sw_power_cap,temperature.gpu --format=csv -lms 200 > $O/smi.csv 2>&1 &
SMI=$!
one(){ timeout 30 ./bin/$1 one $2 $3 $4 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1; }
{
date +%T
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv
for v in h1 h2 h3; do for mode in prepass auto; do
JAX_FLASH3_FP8_V_TRANSPOSE=$mode timeout 100 ./bin/$v check > $O/check_${v}_$mode.txt 2>&1; echo "$v check $mode rc=$? $(grep -c PASS $O/check_${v}_$mode.txt) pass $(grep -c FAIL $O/check_${v}_$mode.txt) fail; $(tail -1 $O/check_${v}_$mode.txt)"; grep FAIL $O/check_${v}_$mode.txt | head -3
done; done
FP8_HARNESS_NO_OUTLIERS=1 JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 100 ./bin/h3 check > $O/check_h3_noout.txt 2>&1; echo "h3 check no-outliers rc=$? $(tail -1 $O/check_h3_noout.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 200 compute-sanitizer --tool memcheck ./bin/h3 small > $O/memcheck_h3.txt 2>&1; echo "memcheck h3 rc=$? $(tail -1 $O/memcheck_h3.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 200 compute-sanitizer --tool racecheck ./bin/h1 small > $O/racecheck_h1.txt 2>&1; echo "racecheck h1 rc=$? $(tail -1 $O/racecheck_h1.txt)"
orders=("h0 h1 h2 h3" "h3 h0 h1 h2" "h2 h3 h0 h1" "h1 h2 h3 h0")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  echo "r$r $v $(date +%T) d128: 16k $(one $v 128 16384 0)  8k $(one $v 128 8192 0)  4k $(one $v 128 4096 0)  causal16k $(one $v 128 16384 1)  causal4k $(one $v 128 4096 1)"
done; done
for v in h0 h1 h3 h0 h1 h3; do echo "long $v d128 16k x600 $(one $v 128 16384 0 600) $(date +%T)"; sleep 1; done
date +%T
cd $R; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
for L in s0 s1 s3 s0 s1 s3; do
JAX_FLASH3_LIBRARY=$D/lib_$L/libjax_flash3_cuda.so timeout 120 python3 benchmarks/bench_attention.py --fp8 --no-bwd --no-cudnn --hdims 128 --seqs 16384 4096 --causal 0 1 > $O/bench_jax_$L.txt 2>&1; echo "bench lib $L rc=$?"; grep -E "^ *128" $O/bench_jax_$L.txt
done
date +%T
for L in s1 s3; do
JAX_FLASH3_LIBRARY=$D/lib_$L/libjax_flash3_cuda.so timeout 200 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -x -rfs > $O/gpu_tests_fp8_$L.txt 2>&1; echo "pytest fp8 lib $L rc=$? $(tail -1 $O/gpu_tests_fp8_$L.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_fp8_$L.txt | head
done
date +%T
} 2>&1 | tee $O/run.txt
kill $SMI

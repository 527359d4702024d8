#!/bin/bash
# FP8 d128 pre-pass kernel: 192 rows, 3 consumer WGs, serial GEMMs (ser: 2 stages, ser3: 3). Checks, sanitizers, A/B, kernel error, GPU tests.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
for h in h_ser h_ser3; do
  timeout 60 ./$h check > $O/c_$h.txt 2>&1; echo "$h check rc=$? $(tail -1 $O/c_$h.txt)"
  JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 60 ./$h check > $O/cp_$h.txt 2>&1; echo "$h check prepass rc=$? $(tail -1 $O/cp_$h.txt)"
  grep FAIL $O/cp_$h.txt | head -3
done
JAX_FLASH3_FP8_V_TRANSPOSE=prepass FP8_HARNESS_NO_OUTLIERS=1 timeout 60 ./h_ser check > $O/cpn.txt 2>&1; echo "ser check prepass no-outliers rc=$? $(tail -1 $O/cpn.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 90 compute-sanitizer --tool memcheck ./h_ser small > $O/mc.txt 2>&1; echo "memcheck prepass rc=$? $(tail -1 $O/mc.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 90 compute-sanitizer --tool racecheck ./h_ser small > $O/rc.txt 2>&1; echo "racecheck prepass rc=$? $(tail -1 $O/rc.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 90 compute-sanitizer --tool synccheck ./h_ser small > $O/sc.txt 2>&1; echo "synccheck prepass rc=$? $(tail -1 $O/sc.txt) t=$(( $(date +%s)-T0 ))"
for r in 1 2 3; do for h in h_base h_ser h_ser3; do
  FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./$h bench 2>&1 | grep "^fp8" | sed -n '1,3p' | sed "s/^/$h r$r /"
done; done > $O/ab.txt 2>&1
cat $O/ab.txt; echo "t=$(( $(date +%s)-T0 ))"
cd ..
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-c9/lib_new/libjax_flash3_cuda.so
timeout 120 python3 build-c9/kerr.py 0 > $O/kerr.txt 2>&1; cat $O/kerr.txt; echo "t=$(( $(date +%s)-T0 ))"
timeout 200 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8.txt 2>&1; echo "pytest fp8 rc=$? $(tail -1 $O/gpu_tests_fp8.txt) t=$(( $(date +%s)-T0 ))"; grep FAILED $O/gpu_tests_fp8.txt | head
timeout 100 python3 benchmarks/bench_attention.py --fp8 --no-bwd --no-cudnn --hdims 128 --seqs 4096 16384 --causal 0 1 --out $O/bench.json > $O/bench.txt 2>&1; echo "bench rc=$?"; tail -8 $O/bench.txt

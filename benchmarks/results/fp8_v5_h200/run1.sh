#!/bin/bash
# FP8 row sums on the tensor cores (ones rows in Vt): checks, sanitizer, MUFU microbench, A/B, kernel error at 16k.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit --format=csv > $O/gpu.txt 2>&1; cat $O/gpu.txt
T0=$(date +%s)
nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -o mu mu.cu && ./mu > $O/mufu.txt 2>&1; cat $O/mufu.txt
timeout 90 ./h_new check > $O/check_new.txt 2>&1; echo "new check rc=$? $(tail -1 $O/check_new.txt) t=$(( $(date +%s)-T0 ))"
grep -i fail $O/check_new.txt | head -5
FP8_HARNESS_NO_OUTLIERS=1 timeout 90 ./h_new check > $O/check_new_noout.txt 2>&1; echo "new check no-outliers rc=$? $(tail -1 $O/check_new_noout.txt)"
timeout 90 compute-sanitizer --tool memcheck ./h_new small > $O/memcheck.txt 2>&1; echo "memcheck rc=$? $(tail -1 $O/memcheck.txt)"
timeout 90 compute-sanitizer --tool racecheck ./h_new small > $O/racecheck.txt 2>&1; echo "racecheck rc=$? $(tail -1 $O/racecheck.txt) t=$(( $(date +%s)-T0 ))"
for r in 1 2 3; do for h in h_base h_new; do for d in 128 64; do
  FP8_BENCH_D=$d FP8_BENCH_NO_BF16=1 timeout 60 ./$h bench 2>&1 | grep "^fp8" | sed -n '1,2p' | sed "s/^/$h r$r /"
done; done; done > $O/ab.txt 2>&1
cat $O/ab.txt; echo "t=$(( $(date +%s)-T0 ))"
cd ..
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
for v in base new; do echo "== kernel error, $v"; JAX_FLASH3_LIBRARY=$PWD/build-ab9/lib_$v/libjax_flash3_cuda.so timeout 120 python3 build-ab9/kerr.py 0; done > $O/kerr.txt 2>&1
cat $O/kerr.txt; echo "t=$(( $(date +%s)-T0 ))"
JAX_FLASH3_LIBRARY=$PWD/build-ab9/lib_new/libjax_flash3_cuda.so timeout 200 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8.txt 2>&1; echo "pytest fp8 rc=$? $(tail -1 $O/gpu_tests_fp8.txt) t=$(( $(date +%s)-T0 ))"; grep FAILED $O/gpu_tests_fp8.txt | head

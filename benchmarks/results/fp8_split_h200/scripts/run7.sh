#!/bin/bash
# Split tail over masked calls with one query block per head: checks, sanitizers, decode A/B, FP8 GPU tests.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O; L=$O/logs; mkdir -p $L
tar xJf bins.tar.xz
T0=$(date +%s)
{
timeout 120 ./h check > $L/check.txt 2>&1; echo "check auto rc=$? $(tail -1 $L/check.txt) split configs $(grep -c 'sm90/' $L/check.txt)"; grep FAIL $L/check.txt | head -5
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 ./h check > $L/check_prepass.txt 2>&1; echo "check prepass rc=$? $(tail -1 $L/check_prepass.txt)"; grep FAIL $L/check_prepass.txt | head -5
FP8_HARNESS_NO_OUTLIERS=1 timeout 120 ./h check > $L/check_noout.txt 2>&1; echo "check no-outliers rc=$? $(tail -1 $L/check_noout.txt)"; grep FAIL $L/check_noout.txt | head -5
for t in memcheck racecheck; do timeout 90 compute-sanitizer --tool $t ./h small > $L/s_$t.txt 2>&1; echo "$t rc=$? $(tail -1 $L/s_$t.txt)"; done
for sp in 1 0 1; do for d in 128 256; do FP8_BENCH_D=$d JAX_FLASH3_FP8_SPLIT=$sp FP8_BENCH_NO_BF16=1 timeout 60 ./h bench 2>&1 | grep "^fp8" | grep -E "sk=8192|non-causal" | sed -n '1,3p' | sed "s/^/split=$sp /"; done; done
echo "t=$(( $(date +%s)-T0 ))"
} > $O/harness.txt 2>&1
cat $O/harness.txt
cd ..
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-p5/lib/libjax_flash3_cuda.so
timeout 300 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $L/gpu_tests_fp8.txt 2>&1; echo "pytest fp8 rc=$? $(tail -1 $L/gpu_tests_fp8.txt) t=$(( $(date +%s)-T0 ))" | tee $O/summary.txt; grep FAILED $L/gpu_tests_fp8.txt | head | tee -a $O/summary.txt
cd $O && tar czf logs.tgz logs && rm -rf logs; ls -la $O

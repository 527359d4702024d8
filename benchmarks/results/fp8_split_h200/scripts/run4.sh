#!/bin/bash
# Split tail, final library: harness checks + sanitizers, A/B, GPU tests, JAX bench, accuracy;
# plus run1's per-instruction stall samples and a clock64 trace of the v5 kernel (one CTA).
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O; L=$O/logs; mkdir -p $L
tar xJf bins.tar.xz
T0=$(date +%s)
{
nvidia-smi --query-gpu=name,clocks.sm,power.limit --format=csv,noheader
timeout 120 ./h_split check > $L/check.txt 2>&1; echo "check auto rc=$? $(tail -1 $L/check.txt) split configs $(grep -c 'sm90/' $L/check.txt)"; grep FAIL $L/check.txt | head -5
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 ./h_split check > $L/check_prepass.txt 2>&1; echo "check prepass rc=$? $(tail -1 $L/check_prepass.txt)"; grep FAIL $L/check_prepass.txt | head -5
FP8_HARNESS_NO_OUTLIERS=1 timeout 120 ./h_split check > $L/check_noout.txt 2>&1; echo "check no-outliers rc=$? $(tail -1 $L/check_noout.txt)"; grep FAIL $L/check_noout.txt | head -5
for t in memcheck racecheck synccheck; do timeout 90 compute-sanitizer --tool $t ./h_split small > $L/s_$t.txt 2>&1; echo "$t rc=$? $(tail -1 $L/s_$t.txt)"; done
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 90 compute-sanitizer --tool memcheck ./h_split small > $L/s_memcheck_prepass.txt 2>&1; echo "memcheck prepass rc=$? $(tail -1 $L/s_memcheck_prepass.txt)"
for sp in 1 0; do FP8_BENCH_D=128 JAX_FLASH3_FP8_SPLIT=$sp FP8_BENCH_NO_BF16=1 timeout 60 ./h_split bench 2>&1 | grep "^fp8" | sed -n '1,3p' | sed "s/^/split=$sp /"; done
echo "t=$(( $(date +%s)-T0 ))"
} > $O/harness.txt 2>&1
cat $O/harness.txt
ncu --import ncu_d128.ncu-rep --page source --csv --print-source sass > $L/src_sass.csv 2>&1
./h_trace one 128 16384 0 5 > $L/trace.txt 2>&1
cd ..
pip install --no-index --no-deps --target /tmp/site .whl/peer/*.whl > /dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-p2/lib/libjax_flash3_cuda.so
timeout 360 python3 -m pytest -m gpu tests -p no:cacheprovider -q -rfs > $L/gpu_tests.txt 2>&1; echo "pytest rc=$? $(tail -1 $L/gpu_tests.txt) t=$(( $(date +%s)-T0 ))" | tee $O/summary.txt; grep FAILED $L/gpu_tests.txt | head | tee -a $O/summary.txt
(cd $O && tar czf logs_pre.tgz logs)
timeout 150 python3 benchmarks/bench_attention.py --fp8 --no-bwd --fa3jax --hdims 64 128 256 --seqs 2048 16384 --causal 0 1 --out $L/bench_fp8.json > $L/bench_fp8.txt 2>&1; echo "bench rc=$? t=$(( $(date +%s)-T0 ))" | tee -a $O/summary.txt; tail -14 $L/bench_fp8.txt | tee -a $O/summary.txt
cd $O && tar czf logs.tgz logs && rm -rf logs logs_pre.tgz; ls -la $O

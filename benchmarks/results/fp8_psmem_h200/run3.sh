#!/bin/bash
# Final library (chain-trimmed FP8 d128 loop + window clamp): harness checks, sanitizers, GPU suite, JAX bench.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O; L=$O/logs; mkdir -p $L
tar xJf bins.tar.xz
T0=$(date +%s)
{
nvidia-smi --query-gpu=name,clocks.sm,power.limit --format=csv,noheader
timeout 120 ./h check > $L/check.txt 2>&1; echo "check auto rc=$? $(tail -1 $L/check.txt)"; grep FAIL $L/check.txt | head -5
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 ./h check > $L/check_prepass.txt 2>&1; echo "check prepass rc=$? $(tail -1 $L/check_prepass.txt)"; grep FAIL $L/check_prepass.txt | head -5
FP8_HARNESS_NO_OUTLIERS=1 timeout 120 ./h check > $L/check_noout.txt 2>&1; echo "check no-outliers rc=$? $(tail -1 $L/check_noout.txt)"; grep FAIL $L/check_noout.txt | head -5
JAX_FLASH3_FP8_SPLIT=0 timeout 120 ./h check > $L/check_nosplit.txt 2>&1; echo "check split-off rc=$? $(tail -1 $L/check_nosplit.txt)"; grep FAIL $L/check_nosplit.txt | head -5
for t in memcheck racecheck synccheck; do JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 90 compute-sanitizer --tool $t ./h small > $L/s_$t.txt 2>&1; echo "$t prepass rc=$? $(tail -1 $L/s_$t.txt)"; done
echo "t=$(( $(date +%s)-T0 ))"
} > $O/harness.txt 2>&1
cat $O/harness.txt
cd ..
pip install --no-index --no-deps --target /tmp/site .whl/peer/*.whl > /dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-p7/lib/libjax_flash3_cuda.so
timeout 330 python3 -m pytest -m gpu tests -p no:cacheprovider -q -rfs > $L/gpu_tests.txt 2>&1; echo "pytest rc=$? $(tail -1 $L/gpu_tests.txt) t=$(( $(date +%s)-T0 ))" | tee $O/summary.txt; grep -E "FAILED|ERROR" $L/gpu_tests.txt | head | tee -a $O/summary.txt
timeout 170 python3 benchmarks/bench_attention.py --fp8 --no-bwd --fa3jax --hdims 64 128 256 --seqs 2048 16384 --causal 0 1 --out $L/bench_fp8.json > $L/bench_fp8.txt 2>&1; echo "bench rc=$? t=$(( $(date +%s)-T0 ))" | tee -a $O/summary.txt; tail -14 $L/bench_fp8.txt | tee -a $O/summary.txt
cd $O && tar czf logs.tgz logs && rm -rf logs; ls -la $O

#!/bin/bash
# Final FP8 v5 library: harness checks + sanitizers on the d128 pre-pass kernel, V-path crossover, GPU tests, accuracy, JAX bench.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
{
timeout 60 ./h_final check > c.txt 2>&1; echo "check auto rc=$? $(tail -1 c.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 60 ./h_final check > cp.txt 2>&1; echo "check prepass rc=$? $(tail -1 cp.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass FP8_HARNESS_NO_OUTLIERS=1 timeout 60 ./h_final check > cpn.txt 2>&1; echo "check prepass no-outliers rc=$? $(tail -1 cpn.txt)"
for t in memcheck racecheck synccheck; do JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 90 compute-sanitizer --tool $t ./h_final small > s_$t.txt 2>&1; echo "$t prepass rc=$? $(tail -1 s_$t.txt)"; done
for r in 1 2; do for m in auto prepass; do
  if [ $m = auto ]; then unset JAX_FLASH3_FP8_V_TRANSPOSE; else export JAX_FLASH3_FP8_V_TRANSPOSE=prepass; fi
  FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./h_final bench 2>&1 | grep "^fp8" | sed -n '1,3p' | sed "s/^/$m r$r /"
done; done; unset JAX_FLASH3_FP8_V_TRANSPOSE
echo "t=$(( $(date +%s)-T0 ))"
} > $O/harness.txt 2>&1
cat $O/harness.txt
cd ..
pip install --no-index --no-deps --target /tmp/site .whl/peer/*.whl > /dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/site XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-c9/lib/libjax_flash3_cuda.so
timeout 330 python3 -m pytest -m gpu tests -p no:cacheprovider -q -rfs > $O/gpu_tests.txt 2>&1; echo "pytest rc=$? $(tail -1 $O/gpu_tests.txt) t=$(( $(date +%s)-T0 ))"; grep FAILED $O/gpu_tests.txt | head
timeout 150 python3 benchmarks/bench_attention.py --fp8 --no-bwd --fa3jax --hdims 64 128 256 --seqs 2048 16384 --causal 0 1 --out $O/bench_fp8.json > $O/bench_fp8.txt 2>&1; echo "bench rc=$? t=$(( $(date +%s)-T0 ))"; tail -14 $O/bench_fp8.txt
timeout 100 python3 benchmarks/fp8_accuracy.py --out $O/fp8_accuracy.json > $O/fp8_accuracy.txt 2>&1; echo "acc rc=$? t=$(( $(date +%s)-T0 ))"; tail -6 $O/fp8_accuracy.txt

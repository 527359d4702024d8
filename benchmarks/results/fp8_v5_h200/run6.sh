#!/bin/bash
# Final library with the d128 unmasked crossover at 1024: harness check + bench, FP8 GPU tests, JAX bench.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
{ timeout 60 ./h_final check > c.txt 2>&1; echo "check auto rc=$? $(tail -1 c.txt)"
FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./h_final bench 2>&1 | grep "^fp8" | sed -n '1,3p'; } > $O/harness.txt 2>&1; cat $O/harness.txt
cd ..
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-c9/lib/libjax_flash3_cuda.so
timeout 150 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8.txt 2>&1; echo "pytest fp8 rc=$? $(tail -1 $O/gpu_tests_fp8.txt)"; grep FAILED $O/gpu_tests_fp8.txt | head
timeout 100 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 128 --seqs 1024 2048 16384 --causal 0 1 --out $O/bench.json > $O/bench.txt 2>&1; echo "bench rc=$?"; tail -7 $O/bench.txt

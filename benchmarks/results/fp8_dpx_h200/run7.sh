#!/bin/bash
# committed library (3d8b2cf): FP8 GPU tests + through-JAX FP8 numbers.
R=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
xz -d -k -f build-c3/lib/libjax_flash3_cuda.so.xz
export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$R/build-c3/lib/libjax_flash3_cuda.so
{
timeout 150 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8_final.txt 2>&1; echo "pytest fp8 rc=$? $(tail -1 $O/gpu_tests_fp8_final.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_fp8_final.txt | head
timeout 150 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 64 128 256 --seqs 16384 --causal 0 1 > $O/bench_jax_final.txt 2>&1; echo "bench rc=$?"; tail -8 $O/bench_jax_final.txt
} 2>&1 | tee $O/run.txt

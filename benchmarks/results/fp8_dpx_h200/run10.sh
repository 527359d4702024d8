#!/bin/bash
# library from f72a1c3's FP8 objects: FP8 GPU tests.
R=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
xz -d -k -f build-c4/lib/libjax_flash3_cuda.so.xz
export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$R/build-c4/lib/libjax_flash3_cuda.so
timeout 100 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8_f72a1c3.txt 2>&1; echo "pytest fp8 rc=$? $(tail -1 $O/gpu_tests_fp8_f72a1c3.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_fp8_f72a1c3.txt | head
timeout 60 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 128 --seqs 16384 --causal 0 2>&1 | tail -2

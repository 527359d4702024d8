#!/bin/bash
# Session 7, final: c82819c's tests against b319164's library (the committed kernel), and the FP8
# grid points through JAX.
R=$PWD; cd "$(dirname "$0")/.."; D=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins1.tar.xz
cd $R; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$D/bin/libjax_flash3_cuda.so
{
date +%T
timeout 150 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8.txt 2>&1; echo "pytest -m gpu tests/test_fp8.py rc=$? $(tail -1 $O/gpu_tests_fp8.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_fp8.txt | head
date +%T
timeout 200 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 64 128 256 --seqs 16384 --causal 0 1 --out $O/bench_fp8.json 2>&1 | tail -7
date +%T
} 2>&1 | tee $O/run4.txt

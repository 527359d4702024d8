#!/bin/bash
# HEAD's library (csrc of 6cb4aaa = 7359b37): the whole GPU suite, the issue's accuracy table, and
# the FP8 grid points through JAX beside cuDNN.
R=$PWD; cd "$(dirname "$0")/.."; D=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf lib_head.tar.xz
cd $R; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$D/lib_head/libjax_flash3_cuda.so
{
date +%T; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 330 python3 -m pytest -m gpu tests -p no:cacheprovider -q -rfs > $O/gpu_suite.txt 2>&1; echo "pytest -m gpu tests rc=$? $(tail -1 $O/gpu_suite.txt)"; grep -E "FAILED|ERROR" $O/gpu_suite.txt | head
date +%T
timeout 120 python3 benchmarks/fp8_accuracy.py --out $O/fp8_accuracy.json 2>&1 | tail -4
date +%T
timeout 150 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 64 128 256 --seqs 16384 --causal 0 1 --out $O/bench_fp8.json 2>&1 | tail -7
date +%T
} 2>&1 | tee $O/run5.txt

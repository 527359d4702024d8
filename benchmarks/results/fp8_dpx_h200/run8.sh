#!/bin/bash
# committed library (3d8b2cf): through-JAX FP8 numbers again (second call).
R=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
xz -d -k -f build-c3/lib/libjax_flash3_cuda.so.xz
export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$R/build-c3/lib/libjax_flash3_cuda.so
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
timeout 150 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 128 256 --seqs 16384 --causal 0 2>&1 | tail -3
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv

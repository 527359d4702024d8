#!/usr/bin/env bash
# One device call: GPU tests + benchmark, logs under $OUT (or ./out). Expects a prebuilt
# jax_flash3/libjax_flash3_cuda.so (carried) and runs from the repository root.
#   bash benchmarks/device_run.sh [tests|bench|all] [extra benchmark args...]
set -uo pipefail
what=${1:-all}; shift || true
out=${OUT:-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, jax_flash3; print(jax.__version__, jax.devices(), jax_flash3.cuda_unavailable_reason())"
if [[ $what == tests || $what == all ]]; then
  timeout ${TEST_TIMEOUT:-330} python3 -m pytest -q -m gpu tests -p no:cacheprovider -rfs 2>&1 | tee "$out/gpu_tests.txt" | tail -25
fi
if [[ $what == bench || $what == all ]]; then
  timeout ${BENCH_TIMEOUT:-400} python3 benchmarks/bench_attention.py --out "$out/bench.json" "$@" 2>&1 | tee "$out/bench.txt"
fi

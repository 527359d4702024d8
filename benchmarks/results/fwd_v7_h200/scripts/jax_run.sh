#!/bin/bash
# GPU pytest + FP8 accuracy + forward grid (fp8, bf16 beside cuDNN and fa3jax) with this library.
O=${OUT:-/tmp/out}; mkdir -p $O
pip install --no-index --no-deps --target /tmp/site .whl/peer/*.whl > /dev/null 2>&1
export JAX_FLASH3_LIBRARY=$PWD/build-c4/libjax_flash3_cuda.so PYTHONPATH=$PWD:/tmp/site XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
T0=$(date +%s)
timeout 300 python3 -m pytest -m gpu tests -p no:cacheprovider -q -rfs > $O/gpu_tests.txt 2>&1; echo "pytest rc=$? $(tail -1 $O/gpu_tests.txt) t=$(( $(date +%s)-T0 ))"
grep -E "FAILED|Error" $O/gpu_tests.txt | head -10
timeout 120 python3 benchmarks/fp8_accuracy.py --out $O/fp8_accuracy.json > $O/fp8_accuracy.txt 2>&1; echo "acc rc=$? t=$(( $(date +%s)-T0 ))"; cat $O/fp8_accuracy.txt
timeout 200 python3 benchmarks/bench_attention.py --fp8 --no-bwd --fa3jax --out $O/grid_fwd.json > $O/grid_fwd.txt 2>&1; echo "grid rc=$? t=$(( $(date +%s)-T0 ))"
tail -45 $O/grid_fwd.txt

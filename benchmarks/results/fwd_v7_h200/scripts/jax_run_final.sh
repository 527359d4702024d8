#!/bin/bash
O=${OUT:-/tmp/out}; mkdir -p $O
pip install --no-index --no-deps --target /tmp/site .whl/peer/*.whl > /dev/null 2>&1
export JAX_FLASH3_LIBRARY=$PWD/build-c4/libjax_flash3_cuda.so PYTHONPATH=$PWD:/tmp/site XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
T0=$(date +%s)
timeout 330 python3 -m pytest -m gpu tests -p no:cacheprovider -q -rfs > $O/gpu_tests_final.txt 2>&1; echo "pytest rc=$? $(tail -1 $O/gpu_tests_final.txt) t=$(( $(date +%s)-T0 ))"
grep -E "FAILED" $O/gpu_tests_final.txt | head -10
timeout 60 python3 benchmarks/bench_attention.py --fp8 --no-bwd --no-cudnn --hdims 128 256 --seqs 16384 --causal 0 --out $O/fp8_final.json > $O/fp8_final.txt 2>&1; echo "bench rc=$? t=$(( $(date +%s)-T0 ))"; tail -3 $O/fp8_final.txt

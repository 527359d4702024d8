#!/bin/bash
cd "$(dirname "$0")/.."; O=${OUT:-/tmp/out}; mkdir -p $O
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-p9/lib/libjax_flash3_cuda.so
timeout 400 python3 -m pytest -m gpu tests -p no:cacheprovider -q -rfs > $O/gpu_tests.txt 2>&1; echo "pytest rc=$? $(tail -1 $O/gpu_tests.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests.txt | head

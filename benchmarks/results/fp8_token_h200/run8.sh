#!/bin/bash
# HEAD library (built this session from the csrc of 3cc62f7; the kernel header since has comment changes only): FP8 GPU tests incl. the new running-max profiles.
cd "$(dirname "$0")/.."; O=${OUT:-/tmp/out}; mkdir -p $O
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-f/lib/libjax_flash3_cuda.so
timeout 300 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8_head.txt 2>&1; echo "pytest fp8 rc=$? $(tail -1 $O/gpu_tests_fp8_head.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_fp8_head.txt | head
timeout 200 python3 -m pytest -m gpu tests/test_fp8.py -k running_max -p no:cacheprovider -q -s 2>&1 | grep -E "jump|flat" | head -24 > $O/running_max_detail.txt

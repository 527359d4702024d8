#!/bin/bash
# One device call (prepared in session 9, not yet run): the bf16/fp16 d128 192-row (3-warpgroup) tile with its rule.
# 1. A/B through JAX with the tile forced (JAX_FLASH3_FWD_TILE=masked: 128 rows = HEAD's kernel;
#    wide: 192 rows); 2. the bf16/fp16 GPU tests with the 192-row tile forced for every call that
#    has two tiles (d64, d128); 3. with what time is left, the FP8 GPU tests under the rule.
set -u
T0=$SECONDS
O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf build-s9/lib3wg.tar.xz -C build-s9   # the library built with the patch (README)
export JAX_FLASH3_LIBRARY=$PWD/build-s9/lib3wg/libjax_flash3_cuda.so XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader
for t in masked wide; do
  echo "== tile $t $(date +%T)"
  JAX_FLASH3_FWD_TILE=$t timeout 80 python3 benchmarks/bench_attention.py --hdims 128 --seqs 512 1024 2048 4096 8192 16384 \
    --causal 0 1 --no-bwd --out /tmp/ab_$t.json 2>&1 | grep -v "^wrote" | tee $O/ab_$t.txt
done
echo "== bf16/fp16 GPU tests, JAX_FLASH3_FWD_TILE=wide $(date +%T)"
left=$(( 270 - (SECONDS - T0) ))
JAX_FLASH3_FWD_TILE=wide timeout $left python3 -m pytest -q -m gpu tests/test_gpu.py tests/test_nan_inputs.py tests/test_ring.py \
  -p no:cacheprovider -rfs 2>&1 | tee $O/gpu_tests_wide.txt | tail -8
left=$(( 290 - (SECONDS - T0) ))
echo "== FP8 GPU tests under the rule, ${left}s $(date +%T)"
if (( left > 30 )); then
  timeout $left python3 -m pytest -q -m gpu tests/test_fp8.py -p no:cacheprovider -rfs 2>&1 | tee $O/gpu_tests_fp8.txt | tail -6
fi
date +%T

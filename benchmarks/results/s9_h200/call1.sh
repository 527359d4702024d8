#!/bin/bash
# Device call 1 (session 9): softmax-token A/B on the d128 fast-sum kernel, then the FP8 grid.
set -u
R=$PWD; FINAL=${OUT:-/tmp/out}; mkdir -p $FINAL /tmp/o_tok
tar xJf build-s9/lib.tar.xz -C build-s9
export JAX_FLASH3_LIBRARY=$R/build-s9/lib/libjax_flash3_cuda.so
OUT=/tmp/o_tok timeout 280 bash benchmarks/pending/fp8_token_fastsum/run.sh > /dev/null 2>&1
echo "run.sh rc=$?"
cp /tmp/o_tok/run.txt $FINAL/tok_run.txt; tar czf $FINAL/tok_logs.tgz -C /tmp/o_tok .
cat $FINAL/tok_run.txt
OUT=$FINAL BENCH_TIMEOUT=270 bash benchmarks/device_run.sh bench --fp8 --no-bwd --hdims 128 256 --seqs 16384 --causal 0 1

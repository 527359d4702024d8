#!/bin/bash
# Timing bounds on the exps of the FP8 d128 serial loop: e1 = no exp2 at all (P = the exp2
# argument; wrong results, timing only); e2 = P written straight as e4m3 bits by an integer
# trick (piecewise-linear 2^x, row sums from the same bytes; approximate by design).
# Then the harness grid of fp8 and bf16 at d128 (same process, CUDA events).
cd "$(dirname "$0")/.."; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins2.tar.xz
one(){ timeout 30 ./bin2/$1 one $2 $3 $4 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1; }
{
date +%T
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 100 ./bin2/e2 check > $O/check_e2.txt 2>&1; echo "e2 check rc=$? $(tail -1 $O/check_e2.txt)"; grep FAIL $O/check_e2.txt | head -5
orders=("h0 e1 e2" "e2 h0 e1" "e1 e2 h0" "h0 e2 e1")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  echo "r$r $v $(date +%T) d128: 16k $(one $v 128 16384 0)  8k $(one $v 128 8192 0)  4k $(one $v 128 4096 0)  causal16k $(one $v 128 16384 1)"
done; done
for r in 1 2; do FP8_BENCH_D=128 timeout 120 ./bin2/h0 bench 2>&1 | grep -E "^(fp8|bf16) " ; done
date +%T
} 2>&1 | tee $O/run2.txt

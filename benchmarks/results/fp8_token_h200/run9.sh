#!/bin/bash
# x1: O rescale before the exps (one basic block for exps + sums + convert); x2: no O rescale (timing only); h0 base.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
{
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 150 ./x1 check > $O/check_x1.txt 2>&1; echo "x1 check prepass rc=$? $(tail -1 $O/check_x1.txt)"; grep FAIL $O/check_x1.txt | head -5
orders=("h0 x1 x2" "x2 x1 h0" "x1 h0 x2" "h0 x2 x1")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  a=$(timeout 30 ./$v one 128 16384 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  b=$(timeout 30 ./$v one 128 8192 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  c=$(timeout 30 ./$v one 128 4096 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  d=$(timeout 30 ./$v one 128 16384 1 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  echo "r$r $v  16k $a  8k $b  4k $c  16k-causal $d"
done; done
} 2>&1 | tee $O/run.txt

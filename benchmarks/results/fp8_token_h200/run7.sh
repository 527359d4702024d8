#!/bin/bash
# e1: optimistic exps without the recompute (wrong only when a P overflows); o6: with the
# mma.sync recompute; h0 base.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
{
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 150 ./o6 check > $O/check_o6.txt 2>&1; echo "o6 check prepass rc=$? $(tail -1 $O/check_o6.txt)"; grep FAIL $O/check_o6.txt | head -5
orders=("h0 e1 o6" "o6 e1 h0" "e1 h0 o6")
for r in 0 1 2; do for v in ${orders[$r]}; do
  a=$(timeout 30 ./$v one 128 16384 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  b=$(timeout 30 ./$v one 128 8192 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  c=$(timeout 30 ./$v one 128 4096 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  echo "r$r $v  16k $a  8k $b  4k $c"
done; done
} 2>&1 | tee $O/run.txt

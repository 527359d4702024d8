#!/bin/bash
# v0 (base) / v1 / v4 serial-softmax variants: check v4, then 6 rounds in rotating order.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
{
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 150 ./h4 check > $O/check_v4.txt 2>&1; echo "v4 check prepass rc=$? $(tail -1 $O/check_v4.txt)"; grep FAIL $O/check_v4.txt | head -3
orders=("0 1 4" "1 4 0" "4 0 1" "0 4 1" "4 1 0" "1 0 4")
for r in 0 1 2 3 4 5; do for v in ${orders[$r]}; do
  a=$(timeout 30 ./h$v one 128 16384 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  b=$(timeout 30 ./h$v one 128 8192 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  c=$(timeout 30 ./h$v one 128 4096 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  d=$(timeout 30 ./h$v one 128 16384 1 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  echo "r$r v$v  16k $a  8k $b  4k $c  16k-causal $d"
done; done
echo "t=$(( $(date +%s)-T0 ))"
} 2>&1 | tee $O/run.txt

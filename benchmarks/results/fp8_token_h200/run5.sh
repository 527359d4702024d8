#!/bin/bash
# Timing bounds (b1: serial loop without the max; b2: without max and row sums; results wrong) vs base.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
{
orders=("h0 b1 b2" "b2 b1 h0" "b1 h0 b2" "h0 b2 b1")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  a=$(timeout 30 ./$v one 128 16384 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  b=$(timeout 30 ./$v one 128 8192 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  echo "r$r $v  16k $a  8k $b"
done; done
} 2>&1 | tee $O/run.txt

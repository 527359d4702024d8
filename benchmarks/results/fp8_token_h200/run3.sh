#!/bin/bash
# Softmax token ring vs base h0. t1: token over the whole softmax step; t2: over the exps only;
# t3 = t1 without the GEMM turn; t4 = t2 without the turn; t5 = t1 with 3 K/V stages.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
{
for v in t1 t2 t3 t4 t5; do
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 150 ./$v check > $O/check_$v.txt 2>&1; echo "$v check prepass rc=$? $(tail -1 $O/check_$v.txt)"; grep FAIL $O/check_$v.txt | head -3
done
orders=("h0 t1 t2 t3 t4 t5" "t5 t4 t3 t2 t1 h0" "t2 t4 h0 t5 t1 t3" "t3 t1 t5 h0 t4 t2")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  a=$(timeout 30 ./$v one 128 16384 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  b=$(timeout 30 ./$v one 128 8192 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  c=$(timeout 30 ./$v one 128 4096 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  d=$(timeout 30 ./$v one 128 16384 1 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  echo "r$r $v  16k $a  8k $b  4k $c  16k-causal $d"
done; done
echo "t=$(( $(date +%s)-T0 ))"
for v in t1 t2; do
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 100 compute-sanitizer --tool synccheck ./$v small > $O/synccheck_$v.txt 2>&1; echo "synccheck $v rc=$? $(grep 'ERROR SUMMARY' $O/synccheck_$v.txt)"
done
echo "t=$(( $(date +%s)-T0 ))"
} 2>&1 | tee $O/run.txt

#!/bin/bash
# Two softmax tokens (t6: around the exps; t7: around the whole step) vs one (t2, exps) vs base h0.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
{
for v in t6 t7; do
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 150 ./$v check > $O/check_$v.txt 2>&1; echo "$v check prepass rc=$? $(tail -1 $O/check_$v.txt)"; grep FAIL $O/check_$v.txt | head -3
done
orders=("h0 t2 t6 t7" "t7 t6 t2 h0" "t6 h0 t7 t2" "t2 t7 h0 t6" "h0 t6 t7 t2")
for r in 0 1 2 3 4; do for v in ${orders[$r]}; do
  a=$(timeout 30 ./$v one 128 16384 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  b=$(timeout 30 ./$v one 128 8192 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  c=$(timeout 30 ./$v one 128 4096 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  d=$(timeout 30 ./$v one 128 16384 1 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
  echo "r$r $v  16k $a  8k $b  4k $c  16k-causal $d"
done; done
echo "t=$(( $(date +%s)-T0 ))"
for v in t6 t7; do
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 100 compute-sanitizer --tool synccheck ./$v small > $O/synccheck_$v.txt 2>&1; echo "synccheck $v rc=$? $(grep 'ERROR SUMMARY' $O/synccheck_$v.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 100 compute-sanitizer --tool racecheck ./$v small > $O/racecheck_$v.txt 2>&1; echo "racecheck $v rc=$? $(tail -1 $O/racecheck_$v.txt)"
done
echo "t=$(( $(date +%s)-T0 ))"
} 2>&1 | tee $O/run.txt

#!/bin/bash
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
for h in h_t1 h_st; do JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 60 ./$h check > $O/cp_$h.txt 2>&1; echo "$h check prepass rc=$? $(tail -1 $O/cp_$h.txt)"; done
for r in 1 2 3; do
  for h in h_t1 h_st h_tok2; do FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./$h bench 2>&1 | grep "^fp8" | sed -n '1,2p' | sed "s/^/$h r$r /"; done
done > $O/ab4.txt 2>&1
cat $O/ab4.txt

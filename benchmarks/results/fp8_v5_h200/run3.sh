#!/bin/bash
# Serial-GEMM variants: pingpong token (tok1: held through QK issue, tok2: none in the loop), d64 serial.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
for h in h_tok1 h_tok2 h_ser64; do
  timeout 60 ./$h check > $O/c_$h.txt 2>&1; echo "$h check rc=$? $(tail -1 $O/c_$h.txt)"
  JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 60 ./$h check > $O/cp_$h.txt 2>&1; echo "$h check prepass rc=$? $(tail -1 $O/cp_$h.txt)"
done
for r in 1 2 3; do
  for h in h_ser h_tok1 h_tok2; do FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./$h bench 2>&1 | grep "^fp8" | sed -n '1,2p' | sed "s/^/$h r$r /"; done
  for h in h_ser h_ser64; do FP8_BENCH_D=64 FP8_BENCH_NO_BF16=1 timeout 60 ./$h bench 2>&1 | grep "^fp8" | sed -n '1,3p' | sed "s/^/$h r$r /"; done
done > $O/ab3.txt 2>&1
cat $O/ab3.txt

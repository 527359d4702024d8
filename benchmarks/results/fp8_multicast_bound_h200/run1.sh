#!/bin/bash
# Timing bound for K/V TMA multicast (2-CTA clusters): h0 = HEAD; hs1 = the pre-pass kernels skip the
# K and Vt TMA loads of every odd key block (half the L2->SM bytes; wrong results, timing only);
# hs2 = only Vt's odd loads skipped (a quarter). nvidia-smi logs SM clock and power throughout.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.sw_power_cap,temperature.gpu --format=csv -lms 100 > $O/smi.csv 2>&1 &
SMI=$!
one(){ timeout 30 ./$1 one $2 $3 $4 $5 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1; }
{
date +%T.%N
for v in h0 hs1 hs2; do JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 60 ./$v check > $O/check_$v.txt 2>&1; echo "$v check rc=$? $(grep -c PASS $O/check_$v.txt) pass $(grep -c FAIL $O/check_$v.txt) fail"; done
orders=("h0 hs1 hs2" "hs2 h0 hs1" "hs1 hs2 h0" "h0 hs2 hs1")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  echo "r$r $v $(date +%T.%N) d128: 16k $(one $v 128 16384 0 60)  8k $(one $v 128 8192 0 60)  causal16k $(one $v 128 16384 1 60)"
done; for v in h0 hs1; do echo "r$r $v $(date +%T.%N) d256 16k $(one $v 256 16384 0 60)"; done; done
for v in h0 hs1; do echo "long $v start $(date +%T.%N)"; echo "long $v d128 16k x600 $(one $v 128 16384 0 600)"; echo "long $v end $(date +%T.%N)"; sleep 2; done
date +%T.%N
} 2>&1 | tee $O/run.txt
kill $SMI

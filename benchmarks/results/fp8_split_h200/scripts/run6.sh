#!/bin/bash
# MUFU offload A/B: a quarter (p4) / an eighth (p8) of the exp2s on the FMA pipe, d128 pre-pass kernel.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
{
for h in h_p4 h_p8; do
  JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 ./$h check > $O/check_$h.txt 2>&1; echo "$h check prepass rc=$? $(tail -1 $O/check_$h.txt)"; grep FAIL $O/check_$h.txt | head -3
  JAX_FLASH3_FP8_V_TRANSPOSE=prepass FP8_HARNESS_NO_OUTLIERS=1 timeout 120 ./$h check > $O/check_noout_$h.txt 2>&1; echo "$h check prepass no-outliers rc=$? $(tail -1 $O/check_noout_$h.txt)"
done
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 ./h_base check > $O/check_h_base.txt 2>&1; echo "h_base check prepass rc=$? $(tail -1 $O/check_h_base.txt)"
echo "t=$(( $(date +%s)-T0 ))"
for r in 1 2 3; do for h in h_base h_p4 h_p8; do
  FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./$h bench 2>&1 | grep "^fp8" | sed -n '1,2p' | sed "s/^/$h r$r /"
done; done
echo "t=$(( $(date +%s)-T0 ))"
} > $O/ab.txt 2>&1
cat $O/ab.txt

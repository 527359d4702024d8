#!/bin/bash
# bf16 forward hdim 128: 192 x 128, 3 consumer WGs, serial GEMMs (hb_ser) vs 128 x 128, 2 WGs (hb_base).
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
timeout 100 ./hb_ser check > $O/check.txt 2>&1; echo "ser check rc=$? $(tail -1 $O/check.txt) t=$(( $(date +%s)-T0 ))"; grep FAIL $O/check.txt | head -3
for r in 1 2; do for h in hb_base hb_ser; do FWD_BENCH_D=128 timeout 40 ./$h bench 2>&1 | sed -n '/^bf16 fwd/,$p' | grep "^d=" | sed "s/^/$h r$r /"; done; done > $O/ab.txt 2>&1
cat $O/ab.txt; echo "t=$(( $(date +%s)-T0 ))"
timeout 60 compute-sanitizer --tool memcheck ./hb_ser small > $O/mc.txt 2>&1; echo "memcheck rc=$? $(tail -1 $O/mc.txt) t=$(( $(date +%s)-T0 ))"

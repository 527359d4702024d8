#!/bin/bash
# Harness checks after moving the split configs behind the others (seeds of the old ones restored).
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
{
timeout 120 ./h check > $O/check.txt 2>&1; echo "check auto rc=$? $(tail -1 $O/check.txt) split configs $(grep -c 'sm90/' $O/check.txt)"; grep FAIL $O/check.txt | head -5
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 ./h check > $O/check_prepass.txt 2>&1; echo "check prepass rc=$? $(tail -1 $O/check_prepass.txt)"; grep FAIL $O/check_prepass.txt | head -5
FP8_HARNESS_NO_OUTLIERS=1 timeout 120 ./h check > $O/check_noout.txt 2>&1; echo "check no-outliers rc=$? $(tail -1 $O/check_noout.txt)"; grep FAIL $O/check_noout.txt | head -5
JAX_FLASH3_FP8_SPLIT=0 timeout 120 ./h check > $O/check_nosplit.txt 2>&1; echo "check split-off rc=$? $(tail -1 $O/check_nosplit.txt)"; grep FAIL $O/check_nosplit.txt | head -5
} > $O/harness.txt 2>&1
cat $O/harness.txt

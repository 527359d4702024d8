#!/bin/bash
# (1) stall samples per SASS instruction (run1's report), (2) clock64 trace of one CTA (v5 kernel),
# (3) split tail: checks (auto, pre-pass forced, split off), sanitizers, A/B split on/off.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,power.limit --format=csv,noheader > $O/gpu.txt 2>&1
ncu --import ncu_d128.ncu-rep --page source --csv --print-source sass > $O/src_sass.csv 2> $O/src_err.txt; echo "src rc=$? $(wc -l < $O/src_sass.csv)"; head -c 300 $O/src_err.txt
./h_trace one 128 16384 0 5 > $O/trace.txt 2>&1; grep TFLOP $O/trace.txt
timeout 120 ./h_split check > $O/check_split.txt 2>&1; echo "check rc=$? $(tail -1 $O/check_split.txt) t=$(( $(date +%s)-T0 ))"; grep -c "sm90/" $O/check_split.txt; grep FAIL $O/check_split.txt | head -5
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 ./h_split check > $O/check_split_prepass.txt 2>&1; echo "check prepass rc=$? $(tail -1 $O/check_split_prepass.txt)"; grep FAIL $O/check_split_prepass.txt | head -5
FP8_HARNESS_NO_OUTLIERS=1 timeout 120 ./h_split check > $O/check_split_noout.txt 2>&1; echo "check no-outliers rc=$? $(tail -1 $O/check_split_noout.txt)"; grep FAIL $O/check_split_noout.txt | head -5
JAX_FLASH3_FP8_SPLIT=0 timeout 120 ./h_split check > $O/check_nosplit.txt 2>&1; echo "check split-off rc=$? $(tail -1 $O/check_nosplit.txt)"; grep -c "sm90/" $O/check_nosplit.txt
timeout 90 compute-sanitizer --tool memcheck ./h_split small > $O/memcheck.txt 2>&1; echo "memcheck rc=$? $(tail -1 $O/memcheck.txt)"
timeout 90 compute-sanitizer --tool racecheck ./h_split small > $O/racecheck.txt 2>&1; echo "racecheck rc=$? $(tail -1 $O/racecheck.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 90 compute-sanitizer --tool memcheck ./h_split small > $O/memcheck_prepass.txt 2>&1; echo "memcheck prepass rc=$? $(tail -1 $O/memcheck_prepass.txt) t=$(( $(date +%s)-T0 ))"
for r in 1 2; do for sp in 1 0; do for d in 128 64 256; do
  JAX_FLASH3_FP8_SPLIT=$sp FP8_BENCH_D=$d FP8_BENCH_NO_BF16=1 timeout 60 ./h_split bench 2>&1 | grep "^fp8" | sed -n '1,3p' | sed "s/^/split=$sp r$r /"
done; done; done > $O/ab.txt 2>&1
cat $O/ab.txt; echo "t=$(( $(date +%s)-T0 ))"
gzip -f $O/src_sass.csv; ls -la $O

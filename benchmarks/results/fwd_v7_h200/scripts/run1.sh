#!/bin/bash
# FP8/bf16 forward: softmax before the PV wait + lazy rescale. checks, sanitizers, interleaved A/B.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit --format=csv > $O/gpu.txt 2>&1
T0=$(date +%s)
timeout 120 ./fwd_fp8_harness_new check > $O/check8.txt 2>&1; echo "fp8 check rc=$? $(tail -1 $O/check8.txt) t=$(( $(date +%s)-T0 ))"
FP8_HARNESS_NO_OUTLIERS=1 timeout 120 ./fwd_fp8_harness_new check > $O/check8_noout.txt 2>&1; echo "fp8 check no-outliers rc=$? $(tail -1 $O/check8_noout.txt) t=$(( $(date +%s)-T0 ))"
timeout 150 ./fwd_harness_new check > $O/checkb.txt 2>&1; echo "bf16 check rc=$? $(tail -1 $O/checkb.txt) t=$(( $(date +%s)-T0 ))"
timeout 100 compute-sanitizer --tool memcheck ./fwd_fp8_harness_new small > $O/memcheck8.txt 2>&1; echo "memcheck fp8 rc=$? $(tail -1 $O/memcheck8.txt)"
timeout 100 compute-sanitizer --tool racecheck ./fwd_fp8_harness_new small > $O/racecheck8.txt 2>&1; echo "racecheck fp8 rc=$? $(tail -1 $O/racecheck8.txt)"
timeout 100 compute-sanitizer --tool memcheck ./fwd_harness_new small > $O/memcheckb.txt 2>&1; echo "memcheck bf16 rc=$? $(tail -1 $O/memcheckb.txt) t=$(( $(date +%s)-T0 ))"
for r in 1 2; do for v in base new; do
  echo "== $v r$r"; timeout 100 ./fwd_fp8_harness_$v bench 2>&1 | sed -n '/^fwd TFLOPs/,$p'
done; done > $O/ab8.txt 2>&1
cat $O/ab8.txt; echo "t=$(( $(date +%s)-T0 ))"

#!/bin/bash
# Pipe microbench + ncu of the FP8 hdim-128 pre-pass kernel at 16k non-causal (one launch).
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit --format=csv > $O/gpu.txt 2>&1; cat $O/gpu.txt
./pipes > $O/pipes.txt 2>&1; cat $O/pipes.txt
for i in 1 2; do ./h one 128 16384 0 20; done > $O/one.txt 2>&1; cat $O/one.txt
echo "t=$(( $(date +%s)-T0 ))"
timeout 240 ncu --clock-control none -k regex:fwd_sm90_fp8_kernel --launch-skip 3 --launch-count 1 --set full -o $O/ncu_d128 ./h one 128 16384 0 3 > $O/ncu_log.txt 2>&1; echo "ncu rc=$?"; tail -3 $O/ncu_log.txt
ncu --import $O/ncu_d128.ncu-rep --page details > $O/ncu_details.txt 2>&1
ncu --import $O/ncu_d128.ncu-rep --page raw > $O/ncu_raw.txt 2>&1
grep -E "pipe_(xu|fma|alu|tensor|fmaheavy|fmalite|uniform)|inst_executed_pipe|issue_active|warps_eligible|pipe_shared" $O/ncu_raw.txt | head -80
grep -E "Duration|SM Frequency|Issue Slots|No Eligible|Eligible Warps|Active Warps" $O/ncu_details.txt | head
ls -la $O; echo "t=$(( $(date +%s)-T0 ))"

#!/bin/bash
# bf16: base / new (order+lazy) / lazy / order; fp8: base / lazy (all dims). Checks, A/B, ncu of fp8 d128 16k.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins3.tar.xz
timeout 60 ./fwd_fp8_harness_lazy check > $O/c8.txt 2>&1; echo "fp8 lazy check rc=$? $(tail -1 $O/c8.txt)"
for v in lazy order; do timeout 100 ./fwd_harness_$v check > $O/cb_$v.txt 2>&1; echo "bf16 $v check rc=$? $(tail -1 $O/cb_$v.txt)"; done
timeout 100 compute-sanitizer --tool memcheck ./fwd_harness_lazy small > $O/mcb.txt 2>&1; echo "memcheck bf16 lazy rc=$? $(tail -1 $O/mcb.txt)"
for r in 1 2; do
  for v in base new lazy order; do echo "== bf16 $v r$r"; timeout 120 ./fwd_harness_$v bench 2>&1 | sed -n '/^bf16 fwd TFLOPs/,$p' | grep -v dynamic; done
  for v in base lazy; do echo "== fp8 $v r$r"; FP8_BENCH_NO_BF16=1 timeout 120 ./fwd_fp8_harness_$v bench 2>&1 | sed -n '/^fwd TFLOPs/,$p' | grep -v "sk=8192"; done
done
FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 200 ncu --set full -k regex:fwd_sm90_fp8_kernel --launch-skip 115 --launch-count 1 ./fwd_fp8_harness_lazy bench > $O/ncu_fp8_lazy_d128_16k.txt 2>&1; echo "ncu rc=$?"
grep -E "Duration|SM Frequency|Compute \(SM\) Throughput|Issue Slots Busy|Issued Warp|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Executed Ipc" $O/ncu_fp8_lazy_d128_16k.txt | head -20
grep -iE "pipe|xu|fma|alu|tensor" $O/ncu_fp8_lazy_d128_16k.txt | grep -v "^ *----" | head -30
grep -A40 "Warp State Statistics" $O/ncu_fp8_lazy_d128_16k.txt | grep -E "Stall|stall|cycles" | head -20

#!/bin/bash
# FP8 d128 A/B: base, new (order+lazy), lazy only, order only; 3 interleaved rounds with power/clock samples.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins2.tar.xz
for v in lazy order; do timeout 60 ./fwd_fp8_harness_$v check > $O/check_$v.txt 2>&1; echo "$v check rc=$? $(tail -1 $O/check_$v.txt)"; done
for r in 1 2 3; do for v in base new lazy order; do
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw --format=csv,noheader -lms 100 > $O/smi_${v}_$r.csv 2>&1 &
  SMI=$!
  FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./fwd_fp8_harness_$v bench 2>&1 | grep "^fp8" | sed -n '1,2p;4p' | sed "s/^/$v r$r /"
  kill $SMI; wait $SMI 2>/dev/null
  python3 - $O/smi_${v}_$r.csv <<'PY'
import sys
rows=[l.split(',') for l in open(sys.argv[1]) if l.count(',')==2]
c=[float(r[1].split()[0]) for r in rows if 'MHz' in r[1]]; p=[float(r[2].split()[0]) for r in rows if 'W' in r[2]]
import statistics as st
if c: print("   clocks MHz median %.0f min %.0f; power W median %.0f max %.0f (%d samples)"%(st.median(c),min(c),st.median(p),max(p),len(c)))
PY
done; done

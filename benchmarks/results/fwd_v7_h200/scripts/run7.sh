#!/bin/bash
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins7.tar.xz
for h in h8_cur h8_spec h8_specw; do timeout 60 ./$h check > $O/c_$h.txt 2>&1; echo "$h check rc=$? $(tail -1 $O/c_$h.txt)"; done
for h in h8_spec h8_specw; do FP8_HARNESS_NO_OUTLIERS=1 timeout 60 ./$h check > $O/cn_$h.txt 2>&1; echo "$h check no-outliers rc=$? $(tail -1 $O/cn_$h.txt)"; done
timeout 60 compute-sanitizer --tool memcheck ./h8_specw small > $O/m.txt 2>&1; echo "memcheck specw rc=$? $(tail -1 $O/m.txt)"
for r in 1 2 3; do
  for h in h8_cur h8_spec h8_specw; do FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./$h bench 2>&1 | grep "^fp8" | sed -n '1,2p;5p' | sed "s/^/$h r$r /"; done
done

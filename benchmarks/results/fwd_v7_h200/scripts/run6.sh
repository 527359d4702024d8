#!/bin/bash
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins6.tar.xz
timeout 60 ./h8_tree check > $O/c8.txt 2>&1; echo "h8_tree check rc=$? $(tail -1 $O/c8.txt)"
timeout 100 ./hb_tree check > $O/cb.txt 2>&1; echo "hb_tree check rc=$? $(tail -1 $O/cb.txt)"
for r in 1 2 3; do
  for h in h8_cur h8_tree; do FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./$h bench 2>&1 | grep "^fp8" | sed -n '1,2p' | sed "s/^/$h r$r /"; done
  for h in hb_cur hb_tree; do FWD_BENCH_D=128 timeout 60 ./$h bench 2>&1 | sed -n '/^bf16 fwd/,$p' | grep "^d=" | grep -v dynamic | sed "s/^/$h r$r /"; done
done

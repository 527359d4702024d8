#!/bin/bash
# Split tail, final: harness checks (changed config), JAX bench A/B/A (JAX_FLASH3_FP8_SPLIT), accuracy.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O; L=$O/logs; mkdir -p $L
tar xJf bins5.tar.xz
T0=$(date +%s)
{
timeout 120 ./h_final check > $L/check.txt 2>&1; echo "check auto rc=$? $(tail -1 $L/check.txt) split configs $(grep -c 'sm90/' $L/check.txt)"; grep FAIL $L/check.txt | head -5
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 ./h_final check > $L/check_prepass.txt 2>&1; echo "check prepass rc=$? $(tail -1 $L/check_prepass.txt)"; grep FAIL $L/check_prepass.txt | head -5
FP8_HARNESS_NO_OUTLIERS=1 timeout 120 ./h_final check > $L/check_noout.txt 2>&1; echo "check no-outliers rc=$? $(tail -1 $L/check_noout.txt)"; grep FAIL $L/check_noout.txt | head -5
echo "t=$(( $(date +%s)-T0 ))"
} > $O/harness.txt 2>&1
cat $O/harness.txt
cd ..
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-p3/lib/libjax_flash3_cuda.so
for sp in 1 0 1; do
  JAX_FLASH3_FP8_SPLIT=$sp timeout 110 python3 benchmarks/bench_attention.py --fp8 --no-bwd --hdims 128 256 --seqs 4096 16384 --causal 0 --out $L/bench_split$sp.json > $L/bench_split${sp}_$(date +%s).txt 2>&1
  echo "== split=$sp rc=$? t=$(( $(date +%s)-T0 ))"; tail -4 $(ls -t $L/bench_split${sp}_*.txt | head -1)
done | tee $O/bench_ab.txt
timeout 120 python3 benchmarks/fp8_accuracy.py --out $L/fp8_accuracy.json > $L/fp8_accuracy.txt 2>&1; echo "acc rc=$? t=$(( $(date +%s)-T0 ))" | tee $O/acc.txt; tail -8 $L/fp8_accuracy.txt | tee -a $O/acc.txt
cd $O && tar czf logs.tgz logs && rm -rf logs; ls -la $O

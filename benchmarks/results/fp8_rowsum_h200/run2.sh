#!/bin/bash
# Session 7: exp2 off the MUFU (Schraudolph, fp32 bits, then F2FP) for every n-th score of the
# fast-sum kernel (JF3_FP8_OFFLOAD=n, n = 8, 4, 2, 1), against the fast-sum kernel without it.
R=$PWD; cd "$(dirname "$0")/.."; D=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins2.tar.xz
export FP8_HARNESS_FAST_SUM=1
one(){ timeout 30 ./bin2/hf_$1 one $2 $3 $4 ${5:-60} | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1; }
{
date +%T
for b in base off1; do
  JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 100 ./bin2/hf_$b check > $O/check_$b.txt 2>&1; echo "check prepass fast $b rc=$? $(tail -1 $O/check_$b.txt)"; grep FAIL $O/check_$b.txt | head -3
done
grep "sq=17 sk=4097 hq=8 hk=1 d=128" $O/check_*.txt | grep sm90
grep "sq=4097 sk=4097 hq=2 hk=2 d=128" $O/check_*.txt | grep sm90 | head -10
date +%T
for r in 0 1; do for b in base off1; do
  echo "r$r $b d128: 16k $(one $b 128 16384 0)  8k $(one $b 128 8192 0)  4k $(one $b 128 4096 0)  c16k $(one $b 128 16384 1)"
done; done
date +%T
unset FP8_HARNESS_FAST_SUM
tar xJf bins1.tar.xz
cd $R; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$D/bin/libjax_flash3_cuda.so
timeout 100 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -s -k "without_lse" > $O/gpu_tests_no_lse.txt 2>&1; echo "no-lse tests: $(tail -1 $O/gpu_tests_no_lse.txt)"; grep -E "precision fp8|FAILED|Error" $O/gpu_tests_no_lse.txt | head -12
timeout 90 python3 benchmarks/fp8_accuracy.py --out $O/fp8_accuracy.json 2>&1 | tail -12
date +%T
timeout 320 python3 -m pytest -m gpu tests -p no:cacheprovider -q -rfs > $O/gpu_suite.txt 2>&1; echo "pytest -m gpu tests rc=$? $(tail -1 $O/gpu_suite.txt)"; grep -E "FAILED|ERROR" $O/gpu_suite.txt | head
date +%T
} 2>&1 | tee $O/run2.txt

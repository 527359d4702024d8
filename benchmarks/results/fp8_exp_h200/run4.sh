#!/bin/bash
# Fast exp v2 (row sums from the packed e4m3 P as half2): checks, sanitizers, exact (x) vs fast (f) in one binary.
# same binary timed with FP8_HARNESS_FAST_EXP unset (x = exact) / set (f = fast), interleaved.
R=$PWD; cd "$(dirname "$0")/.."; D=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins4.tar.xz
one(){ if [ $1 = f ]; then FP8_HARNESS_FAST_EXP=1 timeout 30 ./bin4/hf one $2 $3 $4 ${5:-60}; else timeout 30 ./bin4/hf one $2 $3 $4 ${5:-60}; fi | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1; }
{
date +%T
for mode in prepass auto; do for fx in 1 0; do
  if [ $fx = 1 ]; then export FP8_HARNESS_FAST_EXP=1; else unset FP8_HARNESS_FAST_EXP; fi
  JAX_FLASH3_FP8_V_TRANSPOSE=$mode timeout 120 ./bin4/hf check > $O/check_${mode}_fast$fx.txt 2>&1; echo "check $mode fast=$fx rc=$? $(tail -1 $O/check_${mode}_fast$fx.txt)"; grep FAIL $O/check_${mode}_fast$fx.txt | head -4
done; done
export FP8_HARNESS_FAST_EXP=1
FP8_HARNESS_NO_OUTLIERS=1 timeout 120 ./bin4/hf check > $O/check_noout_fast.txt 2>&1; echo "check no-outliers fast rc=$? $(tail -1 $O/check_noout_fast.txt)"; grep FAIL $O/check_noout_fast.txt | head -3
JAX_FLASH3_FP8_SPLIT=0 timeout 120 ./bin4/hf check > $O/check_nosplit_fast.txt 2>&1; echo "check split-off fast rc=$? $(tail -1 $O/check_nosplit_fast.txt)"
for m in prepass; do JAX_FLASH3_FP8_V_TRANSPOSE=$m timeout 200 compute-sanitizer --tool memcheck ./bin4/hf small > $O/memcheck_$m.txt 2>&1; echo "memcheck $m rc=$? $(tail -1 $O/memcheck_$m.txt)"; done
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 200 compute-sanitizer --tool racecheck ./bin4/hf small > $O/racecheck.txt 2>&1; echo "racecheck rc=$? $(tail -1 $O/racecheck.txt)"
unset FP8_HARNESS_FAST_EXP
grep -h "d=128" $O/check_prepass_fast1.txt | head -3
orders=("x f" "f x" "x f" "f x")
for r in 0 1 2 3; do for v in ${orders[$r]}; do
  echo "r$r $v $(date +%T) d128: 16k $(one $v 128 16384 0)  8k $(one $v 128 8192 0)  4k $(one $v 128 4096 0)  2k $(one $v 128 2048 0)  c16k $(one $v 128 16384 1)  c4k $(one $v 128 4096 1) | d64 16k $(one $v 64 16384 0) 4k $(one $v 64 4096 0) c16k $(one $v 64 16384 1) | d256 16k $(one $v 256 16384 0) 4k $(one $v 256 4096 0) c16k $(one $v 256 16384 1)"
done; done
for v in x f x f; do echo "long $v d128 16k x600 $(one $v 128 16384 0 600)"; done
FP8_BENCH_D=128 timeout 120 ./bin4/hf bench 2>&1 | grep -E "^(fp8|bf16) " | head -4
FP8_HARNESS_FAST_EXP=1 FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 120 ./bin4/hf bench 2>&1 | grep -E "^fp8 " | head -2
date +%T
cd $R; export PYTHONPATH=$R XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
date +%T
} 2>&1 | tee $O/run4.txt

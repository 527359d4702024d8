#!/bin/bash
# Serial-loop softmax variants (JF3_FP8_SERIAL_SOFTMAX 0-3): checks, then interleaved A/B.
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins.tar.xz
T0=$(date +%s)
{
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv,noheader
for v in 1 2 3; do
  JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 150 ./h$v check > $O/check_v$v.txt 2>&1; echo "v$v check prepass rc=$? $(tail -1 $O/check_v$v.txt)"; grep FAIL $O/check_v$v.txt | head -3
done
echo "t=$(( $(date +%s)-T0 ))"
for r in 1 2 3 4; do for v in 0 1 2 3; do
  a=$(timeout 30 ./h$v one 128 16384 0 60 | grep -o "[0-9.]* TFLOPs")
  b=$(timeout 30 ./h$v one 128 8192 0 60 | grep -o "[0-9.]* TFLOPs")
  c=$(timeout 30 ./h$v one 128 16384 1 60 | grep -o "[0-9.]* TFLOPs")
  echo "r$r v$v  16k-nc $a | 8k-nc $b | 16k-causal $c"
done; done
echo "t=$(( $(date +%s)-T0 ))"
for v in 1 3; do
  timeout 60 ./h$v check > $O/check_auto_v$v.txt 2>&1; echo "v$v check auto rc=$? $(tail -1 $O/check_auto_v$v.txt)"
done
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 compute-sanitizer --tool racecheck ./h3 small > $O/racecheck_v3.txt 2>&1; echo "racecheck v3 rc=$? $(tail -1 $O/racecheck_v3.txt)"
JAX_FLASH3_FP8_V_TRANSPOSE=prepass timeout 120 compute-sanitizer --tool synccheck ./h3 small > $O/synccheck_v3.txt 2>&1; echo "synccheck v3 rc=$? $(tail -1 $O/synccheck_v3.txt)"
echo "t=$(( $(date +%s)-T0 ))"
} 2>&1 | tee $O/run.txt
cd ..
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 JAX_FLASH3_LIBRARY=$PWD/build-v/lib/libjax_flash3_cuda.so
timeout 200 python3 -m pytest -m gpu tests/test_fp8.py -k "running_max" -p no:cacheprovider -q -rfs > $O/gpu_tests_moving_max_base.txt 2>&1; echo "pytest rc=$? $(tail -1 $O/gpu_tests_moving_max_base.txt)"; grep -E "FAILED|ERROR" $O/gpu_tests_moving_max_base.txt | head
echo "t=$(( $(date +%s)-T0 ))" | tee -a $O/run.txt

#!/bin/bash
cd "$(dirname "$0")"; O=${OUT:-/tmp/out}; mkdir -p $O
tar xJf bins5.tar.xz
for h in h8_cur h8_tree; do timeout 60 ./$h check > $O/c_$h.txt 2>&1; echo "$h check rc=$? $(tail -1 $O/c_$h.txt)"; done
for h in hb_cur hb_tree; do timeout 100 ./$h check > $O/c_$h.txt 2>&1; echo "$h check rc=$? $(tail -1 $O/c_$h.txt)"; done
for h in h8_cur hb_cur; do timeout 100 compute-sanitizer --tool memcheck ./$h small > $O/m_$h.txt 2>&1; echo "memcheck $h rc=$? $(tail -1 $O/m_$h.txt)"; done
for r in 1 2; do
  for h in fwd_fp8_harness_base h8_cur h8_tree; do FP8_BENCH_D=128 FP8_BENCH_NO_BF16=1 timeout 60 ./$h bench 2>&1 | grep "^fp8" | sed -n '1,2p' | sed "s/^/$h r$r /"; done
  for h in fwd_harness_base hb_cur hb_tree; do FWD_BENCH_D=128 timeout 60 ./$h bench 2>&1 | sed -n '/^bf16 fwd/,$p' | grep "^d=" | grep -v dynamic | sed "s/^/$h r$r /"; done
done
cd ..
pip install --no-index --no-deps --target /tmp/site .whl/peer/*.whl > /dev/null 2>&1
export JAX_FLASH3_LIBRARY=$PWD/build-c4/libjax_flash3_cuda.so PYTHONPATH=$PWD:/tmp/site XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest -m gpu tests/test_fp8.py -p no:cacheprovider -q -rfs > $O/gpu_tests_fp8.txt 2>&1; echo "pytest fp8 rc=$? $(tail -1 $O/gpu_tests_fp8.txt)"; grep FAILED $O/gpu_tests_fp8.txt
timeout 120 python3 benchmarks/fp8_accuracy.py --out $O/fp8_accuracy.json > $O/fp8_accuracy.txt 2>&1; echo "acc rc=$?"; cat $O/fp8_accuracy.txt

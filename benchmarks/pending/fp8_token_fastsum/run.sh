#!/bin/bash
# Softmax tokens on top of the fast-sum d128 kernel: one device call (~3 min; a variant that
# hangs costs its 30 s check timeout once and is then left out).
#   run(command="bash benchmarks/pending/fp8_token_fastsum/run.sh", carry=["build-s8/bins.tar.xz"])
# The tarball (built as README.md here says) holds bin/hf_t0 ... bin/hf_t4 (fwd_fp8_harness
# linked with the d128 instantiation built with -DJF3_FP8_TOKEN=0..4; t0 = HEAD's kernel) and
# bin/mufu_pack.
set -u
R=$PWD; O=${OUT:-/tmp/out}; mkdir -p $O
W=$(mktemp -d); tar xJf $R/build-s8/bins.tar.xz -C $W; B=$W/bin
{
date +%T; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
echo "== MUFU rate by pattern and warps per scheduler"
timeout 60 $B/mufu_pack
echo "== checks (pre-pass forced; fast sums, then exact for t2/t3)"
# Tokens change no arithmetic: each variant's check log must equal t0's (same seeds, same errors).
export JAX_FLASH3_FP8_V_TRANSPOSE=prepass
ok="0"
for t in 0 1 2 3 4; do
  FP8_HARNESS_FAST_SUM=1 timeout 30 $B/hf_t$t check > $O/check_t${t}_fast.txt 2>&1; rc=$?
  echo "t$t fast rc=$rc $(tail -1 $O/check_t${t}_fast.txt)"; grep FAIL $O/check_t${t}_fast.txt | head -3
  if [ $t != 0 ]; then
    if [ $rc = 0 ]; then ok="$ok $t"; fi
    cmp -s $O/check_t0_fast.txt $O/check_t${t}_fast.txt && echo "t$t check log identical to t0's" || echo "t$t check log DIFFERS from t0's"
  fi
done
for t in 2 3; do
  case " $ok " in *" $t "*) ;; *) continue;; esac
  timeout 30 $B/hf_t$t check > $O/check_t${t}_exact.txt 2>&1
  echo "t$t exact rc=$? $(tail -1 $O/check_t${t}_exact.txt)"; grep FAIL $O/check_t${t}_exact.txt | head -3
done
echo "== synccheck (fast sums, pre-pass) of the variants that passed: $ok"
for t in $ok; do
  [ $t = 0 ] && continue
  FP8_HARNESS_FAST_SUM=1 timeout 60 compute-sanitizer --tool synccheck $B/hf_t$t small > $O/synccheck_t$t.txt 2>&1
  echo "t$t synccheck rc=$? $(tail -1 $O/synccheck_t$t.txt)"
done
unset JAX_FLASH3_FP8_V_TRANSPOSE
date +%T
echo "== A/B, d128 (TFLOPs/s), variants rotated per round"
orders=("0 1 2 3 4" "4 3 2 1 0" "2 0 4 1 3")
skip() { case " $ok " in *" $1 "*) return 1;; *) return 0;; esac; }
for cfg in "16384 0" "8192 0" "16384 1" "4096 0"; do
  for r in 0 1 2; do
    line="fast $cfg r$r:"
    for t in ${orders[$r]}; do
      skip $t && continue
      v=$(FP8_HARNESS_FAST_SUM=1 timeout 15 $B/hf_t$t one 128 $cfg 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
      line="$line t$t=$v"
    done
    echo "$line"
  done
done
echo "== exact-LSE kernel, 16k: t0 vs t2 vs t3 (session 3's premise: neutral there)"
for r in 0 1; do
  line="exact 16384 0 r$r:"
  for t in 0 2 3; do
    skip $t && continue
    v=$(timeout 15 $B/hf_t$t one 128 16384 0 60 | grep -o "[0-9.]* TFLOPs" | cut -d' ' -f1)
    line="$line t$t=$v"
  done
  echo "$line"
done
date +%T
} 2>&1 | tee $O/run.txt

#!/bin/bash
# Fast exp v2 (row sums from the packed e4m3 P as half2): run3.sh on the v2 binaries (bins4.tar.xz,
# bin4/, lib_g/), memcheck in pre-pass mode only, without run3's pytest line (the exact path's
# kernels are run3's).
H="$(dirname "$0")"
sed -e 's/bins3/bins4/g; s#bin3/#bin4/#g; s/lib_f/lib_g/g; s/run3\.txt/run4.txt/' \
    -e 's/for m in prepass auto; do/for m in prepass; do/' -e '/pytest -m gpu/d' "$H/run3.sh" > "$H/.run4_body.sh"
exec bash "$H/.run4_body.sh"

"""One attention call of one implementation, for a profiler to attach to (ncu, nsys).

    ncu --clock-control none --kernel-name-base demangled -k regex:'Fwd|fwd_sm90' \
        --launch-skip 2 --launch-count 2 python3 benchmarks/profile_one.py jf3 128 1024 1 fwd

impl: ``jf3`` (jax_flash3's CUDA path), ``fa3jax`` (flash_attn3_jax.flash_mha, peer wheel) or
``cudnn`` (jax.nn.dot_product_attention), as bench_attention.attention_fn. Grid point as there: 16k tokens
(batch = 16384 / seq), hidden 2048 (heads = 2048 / hdim), bf16, random normal inputs. ``fwd`` runs
the forward, ``bwd`` the forward and the VJP; each is compiled, then run 4 times (so a profiler
can skip the warm-up launches).
"""

from __future__ import annotations

import sys

import jax

from bench_attention import IMPLS, attention_fn, grid_inputs


def main(argv):
    if len(argv) != 6 or argv[1] not in IMPLS or argv[5] not in ("fwd", "bwd"):
        print(__doc__)
        return 2
    impl, d, s, causal, mode = argv[1], int(argv[2]), int(argv[3]), bool(int(argv[4])), argv[5]
    _, _, (q, k, v, do) = grid_inputs(jax.random.PRNGKey(0), d, s)
    attn = attention_fn(impl, causal)
    if mode == "fwd":
        fn = jax.jit(attn)
        args = (q, k, v)
    else:
        fn = jax.jit(lambda q, k, v, do: jax.vjp(attn, q, k, v)[1](do))
        args = (q, k, v, do)
    for _ in range(4):
        jax.block_until_ready(fn(*args))
    print(f"{impl} d{d} s{s} causal={int(causal)} {mode}: done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

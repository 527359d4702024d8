"""One attention call of one implementation, for a profiler to attach to (ncu, nsys).

    ncu --clock-control none --kernel-name-base demangled -k regex:'Fwd|fwd_sm90' \
        --launch-skip 2 --launch-count 2 python3 benchmarks/profile_one.py jf3 128 1024 1 fwd

impl: ``jf3`` (jax_flash3's CUDA path), ``fa3`` (flash_attn3_jax.flash_mha, peer wheel) or
``cudnn`` (jax.nn.dot_product_attention). Grid point as in bench_attention.py: 16k tokens
(batch = 16384 / seq), hidden 2048 (heads = 2048 / hdim), bf16, random normal inputs. ``fwd`` runs
the forward, ``bwd`` the forward and the VJP; each is compiled, then run 4 times (so a profiler
can skip the warm-up launches).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp


def main(argv):
    if len(argv) != 6 or argv[1] not in ("jf3", "fa3", "cudnn") or argv[5] not in ("fwd", "bwd"):
        print(__doc__)
        return 2
    impl, d, s, causal, mode = argv[1], int(argv[2]), int(argv[3]), bool(int(argv[4])), argv[5]
    b, h = max(1, 16384 // s), max(1, 2048 // d)
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v, do = (jax.random.normal(kk, (b, s, h, d), jnp.bfloat16) for kk in ks)
    if impl == "jf3":
        import jax_flash3

        attn = lambda q, k, v: jax_flash3.flash_attention(q, k, v, causal=causal, implementation="cuda")
    elif impl == "fa3":
        import flash_attn3_jax

        attn = lambda q, k, v: flash_attn3_jax.flash_mha(q, k, v, is_causal=causal)
    else:
        attn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
    if mode == "fwd":
        fn = jax.jit(attn)
        args = (q, k, v)
    else:
        def fwd_bwd(q, k, v, do):
            _, vjp = jax.vjp(attn, q, k, v)
            return vjp(do)

        fn = jax.jit(fwd_bwd)
        args = (q, k, v, do)
    for _ in range(4):
        jax.block_until_ready(fn(*args))
    print(f"{impl} d{d} s{s} causal={int(causal)} {mode}: done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

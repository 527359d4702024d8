"""Quick end-to-end check of the CUDA path against the reference path (run on the GPU machine).

    JAX_FLASH3_LIBRARY=path/to/libjax_flash3_cuda.so python3 tools/gpu_smoke.py
"""

import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_flash3
from jax_flash3.reference import naive_attention

print(jax.devices(), jax_flash3.cuda_unavailable_reason(), jax_flash3._ffi.library_path(), flush=True)
key = jax.random.PRNGKey(1)
worst = 0.0
fails = 0
configs = [
    # b, sq, sk, hq, hk, d, dv, causal, window, softcap, dtype
    (2, 128, 128, 4, 4, 128, 128, False, None, None, jnp.bfloat16),
    (2, 113, 1000, 8, 2, 64, 64, True, None, None, jnp.float16),
    (1, 1000, 17, 4, 1, 96, 96, True, None, None, jnp.bfloat16),
    (1, 257, 300, 4, 4, 256, 256, False, (32, 8), 30.0, jnp.bfloat16),
    (2, 1, 4097, 8, 1, 128, 128, True, None, None, jnp.bfloat16),
    (1, 512, 512, 2, 2, 80, 80, False, None, None, jnp.float16),
    (1, 333, 333, 6, 2, 192, 128, True, (64, None), None, jnp.bfloat16),
    (1, 2048, 2048, 4, 4, 128, 128, True, None, None, jnp.bfloat16),
]
for b, sq, sk, hq, hk, d, dv, causal, window, softcap, dt in configs:
    key, *ks = jax.random.split(key, 5)
    q = jax.random.normal(ks[0], (b, sq, hq, d), dt)
    k = jax.random.normal(ks[1], (b, sk, hk, d), dt)
    v = jax.random.normal(ks[2], (b, sk, hk, dv), dt)
    do = jax.random.normal(ks[3], (b, sq, hq, dv), dt)
    kw = dict(causal=causal, window=window, softcap=softcap)
    f = lambda impl: jax.jit(lambda q, k, v, do: jax.vjp(
        lambda q, k, v: jax_flash3.flash_attention(q, k, v, implementation=impl, return_lse=True, **kw), q, k, v))
    def run(impl):
        fn = jax.jit(lambda q, k, v, do: (lambda r: (r[0], r[1]((do, jnp.zeros_like(r[0][1])))))(
            jax.vjp(lambda q, k, v: jax_flash3.flash_attention(q, k, v, implementation=impl, return_lse=True, **kw), q, k, v)))
        (o, l), g = fn(q, k, v, do)
        return [o, l, *g]
    got = run("cuda")
    ref = run("reference")
    names = ["out", "lse", "dq", "dk", "dv"]
    msg = []
    for n, a, r in zip(names, got, ref):
        a = np.asarray(a, np.float32); r = np.asarray(r, np.float32)
        fin = np.isfinite(r)
        bad_nan = np.isnan(a).any()
        err = np.abs(np.where(fin, a - r, 0)).max() / (np.abs(np.where(fin, r, 0)).max() + 1e-6)
        inf_ok = (np.isinf(a) == np.isinf(r)).all()
        ok = (not bad_nan) and inf_ok and err < 2e-2
        worst = max(worst, err)
        fails += not ok
        msg.append(f"{n}={err:.1e}{'' if ok else '!!'}")
    print((b, sq, sk, hq, hk, d, dv, causal, window, softcap, jnp.dtype(dt).name), " ".join(msg), flush=True)
print("FAILS", fails, "worst", worst)
sys.exit(1 if fails else 0)

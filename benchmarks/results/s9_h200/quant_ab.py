# A/B of the FP8 block amax: reshape (a3af58d) vs strided window (bb21631), on the GPU.
import sys, time, statistics
sys.path.insert(0, "benchmarks")
import jax, jax.numpy as jnp
from jax import lax
import jax_flash3
import jax_flash3.fp8 as F
from bench_attention import grid_inputs, flops_fwd, timeit

new_q = F._quantize_with_scaled

def old_q(x, granularity):
    if granularity != "block":
        return new_q(x, granularity)
    b, s, h, d = x.shape
    finite = jnp.isfinite(x)
    xa = jnp.where(finite, jnp.abs(x.astype(F._F32)), 0.0)
    n = F._num_blocks(s); pad = n * 128 - s
    if pad:
        xa = jnp.pad(xa, ((0, 0), (0, pad), (0, 0), (0, 0)))
    amax = xa.reshape(b, n, 128, h, d).max(axis=(2, 4)).transpose(0, 2, 1)
    descale = jnp.where(amax > 0, amax / F.E4M3_MAX, 1.0).astype(F._F32)
    scaled = x.astype(F._F32) / F._broadcast_rows(descale, s, h)
    x8 = jnp.where(finite, jnp.clip(scaled, -F.E4M3_MAX, F.E4M3_MAX), jnp.nan).astype(F.E4M3)
    return x8, descale, scaled

for d, s in ((128, 16384), (256, 16384), (128, 4096)):
    b, h, (q, k, v, do) = grid_inputs(jax.random.PRNGKey(0), d, s)
    fl = flops_fwd(b, h, s, d, False)
    fns = {}
    for name, impl in (("old", old_q), ("new", new_q)):
        F._quantize_with_scaled = impl
        fns[name + "_quant"] = jax.jit(lambda x: F.quantize(x))
        fns[name + "_fp8q"] = jax.jit(lambda q, k, v: jax_flash3.flash_attention(q, k, v, precision="fp8"))
        jax.block_until_ready(fns[name + "_quant"](q)); jax.block_until_ready(fns[name + "_fp8q"](q, k, v))
    F._quantize_with_scaled = new_q
    a, b2 = fns["old_quant"](q), fns["new_quant"](q)
    same = bool((a[0].astype(jnp.float32) == b2[0].astype(jnp.float32)).all() & (a[1] == b2[1]).all())
    res = {k_: [] for k_ in fns}
    for r in range(4):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k_ in order:
            args = (q,) if k_.endswith("quant") else (q, k, v)
            res[k_].append(timeit(fns[k_], *args) * 1e3)
    print(f"d{d} s{s} bitwise equal quantize: {same}")
    for k_, ts in res.items():
        extra = f"  ({fl / (statistics.median(ts) / 1e3) / 1e12:.1f} TFLOPs/s)" if k_.endswith("fp8q") else ""
        print(f"  {k_:10s} ms " + " ".join(f"{t:.3f}" for t in ts) + extra)

# Why bench_attention's fp8_paired (alternating rounds) reads lower than both separate medians and
# the sustained ratio: per-call device times in alternation, first call after a switch vs the rest.
import sys, time, statistics
sys.path.insert(0, "benchmarks")
import jax, jax.numpy as jnp
import jax_flash3
from jax_flash3 import fp8
from bench_attention import attention_fn, grid_inputs, flops_fwd, paired_speed_ratio, timeit

d, s = 128, 16384
b, h, (q, k, v, do) = grid_inputs(jax.random.PRNGKey(0), d, s)
fl = flops_fwd(b, h, s, d, False)
q8, qd = fp8.quantize(q); k8, kd = fp8.quantize(k); v8, vd = fp8.quantize(v, granularity="head")
f8 = jax.jit(lambda q8, k8, v8: jax_flash3.flash_attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd))
bf = jax.jit(attention_fn("jf3", False))
A, B = (f8, (q8, k8, v8)), (bf, (q, k, v))
for fn, a in (A, B):
    jax.block_until_ready(fn(*a)); jax.block_until_ready(fn(*a))

def run(fn, a, calls):
    t0 = time.perf_counter(); out = None
    for _ in range(calls):
        out = fn(*a)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / calls * 1e3

print("separate timeit ms: fp8 %.3f bf16 %.3f" % (timeit(*A[:1], *A[1]) * 1e3, timeit(*B[:1], *B[1]) * 1e3))
for calls in (10, 50):
    rows = []
    for r in range(9):
        if r % 2 == 0:
            ta, tb = run(*A, calls), run(*B, calls)
        else:
            tb, ta = run(*B, calls), run(*A, calls)
        rows.append((ta, tb))
    print(f"alternating, {calls} calls per run: fp8 ms", " ".join("%.3f" % t for t, _ in rows))
    print(f"alternating, {calls} calls per run: bf16 ms", " ".join("%.3f" % t for _, t in rows))
    print(f"  ratio median {statistics.median(tb / ta for ta, tb in rows):.3f}")
# per-call, synchronous: first call after a switch
for r in range(3):
    for name, (fn, a) in (("fp8", A), ("bf16", B)):
        ts = []
        for _ in range(5):
            t0 = time.perf_counter(); jax.block_until_ready(fn(*a)); ts.append((time.perf_counter() - t0) * 1e3)
        print(f"sync per call r{r} {name}:", " ".join("%.3f" % t for t in ts))
# same function twice in a row (no switch), as timeit does
print("fp8 runs back to back:", " ".join("%.3f" % run(*A, 10) for _ in range(6)))
print("bf16 runs back to back:", " ".join("%.3f" % run(*B, 10) for _ in range(6)))

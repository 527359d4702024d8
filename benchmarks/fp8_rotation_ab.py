#!/usr/bin/env python3
"""A/B of fp8._rotate_for_fp8: float32 result (stop 10) vs bfloat16 result, end to end through
flash_attention(precision="fp8"), same process; wall time per jitted call (median of 20).

Usage (GPU machine): PYTHONPATH=$PWD python3 benchmarks/fp8_rotation_ab.py
"""
import math, time
import jax, jax.numpy as jnp, numpy as np
import jax_flash3
from jax_flash3 import fp8

def old_rot(x, signs):
    d = x.shape[-1]; p = d & -d
    ones = jnp.asarray(fp8._hadamard_np(d) * math.sqrt(p), jnp.bfloat16)
    xs = x.astype(jnp.bfloat16) * signs.astype(jnp.bfloat16)
    return jnp.matmul(xs, ones, preferred_element_type=jnp.float32) * (1.0 / math.sqrt(p))

new_rot = fp8._rotate_for_fp8
print(jax.devices()[0].device_kind, jax.__version__)
for d in (64, 128, 256):
    for s in (512, 2048, 16384):
        b, h = 16384 // s, 2048 // d
        q, k, v = [jax.random.normal(jax.random.key(i), (b, s, h, d), jnp.bfloat16) for i in range(3)]
        flops = 4 * b * h * s * s * d
        outs = {}
        for name, rot in (("f32-rot", old_rot), ("bf16-rot", new_rot)) * 2:
            fp8._rotate_for_fp8 = rot
            f = jax.jit(lambda q, k, v: jax_flash3.flash_attention(q, k, v, precision="fp8"))
            outs[name] = np.asarray(f(q, k, v).astype(jnp.float32))
            for _ in range(3): f(q, k, v).block_until_ready()
            ts = []
            for _ in range(20):
                t = time.perf_counter(); f(q, k, v).block_until_ready(); ts.append(time.perf_counter() - t)
            m = float(np.median(ts))
            print(f"d{d} s{s} {name:8s} {flops / m / 1e12:7.1f} TFLOPs/s {m * 1e3:8.3f} ms", flush=True)
        ref = jax_flash3.flash_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), implementation="reference") if s <= 2048 else None
        if ref is not None:
            ref = np.asarray(ref)
            for name, o in outs.items():
                print(f"   {name} rmse vs f32 attention {np.sqrt(np.mean((o - ref) ** 2)):.3e}")
        fp8._rotate_for_fp8 = new_rot

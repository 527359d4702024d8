"""Ring attention over every device there is: explicit (shard_map) and automatic (jit + sharding).

    python examples/ring_attention.py                 # GPUs if present, else 8 virtual CPU devices
    python examples/ring_attention.py --seq 65536     # longer sequence (GPU)

Shows the two ways to run causal attention over a sequence sharded on a mesh axis:

1. ``jax_flash3.ring_attention(q, k, v, "seq", causal=True)`` inside ``jax.shard_map``, on data laid
   out in the load-balanced zigzag order (``to_zigzag`` once, ``from_zigzag`` at the end);
2. plain ``jax_flash3.flash_attention`` under ``jit`` with q/k/v sharded along the sequence
   (``NamedSharding``): the partitioner turns it into the same ring (reordering to zigzag and back
   with ``ppermute``), no all-gather of K/V.

Both are checked against single-device ``flash_attention`` (forward and gradients).
"""

from __future__ import annotations

import os

# Without accelerators, give the CPU 8 virtual devices. Must happen before JAX initializes.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

try:
    import jax_flash3
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import jax_flash3


def main() -> None:
    on_gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=16384 if on_gpu else 256, help="global sequence length")
    parser.add_argument("--batch", type=int, default=1 if on_gpu else 2)
    parser.add_argument("--heads", type=int, default=8 if on_gpu else 4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128 if on_gpu else 32)
    args = parser.parse_args()

    devices = jax.devices()
    n = len(devices)
    mesh = Mesh(np.array(devices), ("seq",))
    # The CUDA kernels take bf16/fp16; the CPU reference path runs fp32.
    dtype = jnp.bfloat16 if on_gpu else jnp.float32
    tol = 5e-2 if dtype == jnp.bfloat16 else 1e-4
    b, s, h, hk, d = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
    if s % (2 * n):
        raise SystemExit(f"--seq ({s}) must divide by 2 x {n} devices for the zigzag layout")
    print(f"{n} x {devices[0].platform} devices; q ({b}, {s}, {h}, {d}), k/v ({b}, {s}, {hk}, {d}), "
          f"{jnp.dtype(dtype).name}, causal; {s // n} tokens per device")

    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (b, s, h, d), dtype)
    k = jax.random.normal(keys[1], (b, s, hk, d), dtype)
    v = jax.random.normal(keys[2], (b, s, hk, d), dtype)
    dout = jax.random.normal(keys[3], (b, s, h, d), dtype)

    def with_grads(attend):
        """(q, k, v, dout) -> (out, dq, dk, dv), one VJP."""
        def fn(q, k, v, dout):
            out, vjp = jax.vjp(attend, q, k, v)
            return (out, *vjp(dout))
        return fn

    # Single-device reference (the inputs live on device 0).
    want = jax.jit(with_grads(lambda q, k, v: jax_flash3.flash_attention(q, k, v, causal=True)))(
        q, k, v, dout
    )

    def report(name, got, seconds):
        errs = [float(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32)))) for g, w in zip(got, want)]
        print(f"{name:31s} max |err| out {errs[0]:.2e}  dq {errs[1]:.2e}  dk {errs[2]:.2e}  "
              f"dv {errs[3]:.2e}   ({seconds * 1e3:.1f} ms after compile)")
        scale = max(1.0, max(float(jnp.max(jnp.abs(w.astype(jnp.float32)))) for w in want))
        assert max(errs) <= tol * scale, f"{name}: error {max(errs)} too large"

    def timed(fn, *xs):
        jax.block_until_ready(fn(*xs))
        start = time.perf_counter()
        result = jax.block_until_ready(fn(*xs))
        return result, time.perf_counter() - start

    # 1. Explicit: ring_attention inside shard_map on zigzag-ordered shards.
    seq = P(None, "seq")
    explicit = jax.jit(jax.shard_map(
        with_grads(lambda q, k, v: jax_flash3.ring_attention(q, k, v, "seq", causal=True)),
        mesh=mesh, in_specs=(seq,) * 4, out_specs=(seq,) * 4,
        check_vma=False,  # the CPU reference path's scan carries are not typed per manual axis
    ))
    zz = [jax.device_put(jax_flash3.to_zigzag(x, n), NamedSharding(mesh, seq)) for x in (q, k, v, dout)]
    got, seconds = timed(explicit, *zz)
    report("ring_attention (shard_map)", [jax_flash3.from_zigzag(x, n) for x in got], seconds)

    # 2. Automatic: flash_attention under jit with the sequence sharded.
    automatic = jax.jit(with_grads(lambda q, k, v: jax_flash3.flash_attention(q, k, v, causal=True)))
    sharded = [jax.device_put(x, NamedSharding(mesh, seq)) for x in (q, k, v, dout)]
    compiled = automatic.lower(*sharded).compile()
    if n > 1:
        hlo = compiled.as_text()
        permutes = len(re.findall(r"\bcollective-permute(?:-start)?\b", hlo))
        gathers = len(re.findall(r"\ball-gather(?:-start)?\b", hlo))
        print(f"automatic ring HLO: {permutes} collective-permutes, {gathers} all-gathers")
        assert permutes > 0 and gathers == 0
    got, seconds = timed(compiled, *sharded)
    report("flash_attention (jit, sharded)", got, seconds)

    per_device = jax_flash3.ring_schedule(n, causal=True)
    print(f"zigzag schedule: every device computes {jax_flash3.ring.ring_tile_counts(n, True)[0]} "
          f"chunk tiles over {len(per_device)} hops (contiguous would range "
          f"{min(jax_flash3.ring.ring_tile_counts(n, True, 'contiguous'))}.."
          f"{max(jax_flash3.ring.ring_tile_counts(n, True, 'contiguous'))})")


if __name__ == "__main__":
    main()

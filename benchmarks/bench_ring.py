"""Ring attention per-device TFLOPs/s vs single-GPU flash_attention at the per-device length.

Over all visible devices (N): the global sequence S is sharded N ways; ring attention runs (a)
explicitly, ``ring_attention`` inside ``shard_map`` on zigzag-ordered shards, and (b) automatically,
``flash_attention`` under ``jit`` on sequence-sharded ``NamedSharding`` inputs (which adds the
contiguous <-> zigzag reorder for causal). The peer, measured in the same process, is
``flash_attention`` on one device at the local length S / N.

FLOPs: forward = 4 * B * H * S^2 * D, halved when causal; per device = that / N for the ring,
and 4 * B * H * (S/N)^2 * D (halved when causal) for the single-device peer. Backward = 2.5 x
forward, timed as (forward + backward) - forward. Each function runs under jit as ``--calls``
back-to-back calls; the median of ``--repeats`` such repeats is reported. Goal (issue 5): ring
>= 85% of the single-device rate non-causal, >= 80% causal.

Clock drift: a GPU that has just idled runs its first seconds faster than it will under sustained
load, which flatters whatever is timed first. So every device first runs ``--warmup-s`` seconds of
attention, and the single-device peer is timed both before and after the ring variants; the ratio
uses the mean of the two (both are in the JSON).

    python3 benchmarks/bench_ring.py --seq 32768 65536 131072 --out ring.json
    # CPU smoke test (8 virtual devices, reference path):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python3 benchmarks/bench_ring.py \\
        --seq 512 --hdim 32 --heads 2 --dtype float32 --implementation reference --calls 1 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_attention import flops_fwd, timeit  # noqa: E402  (one timing method for all benchmarks)


def with_vjp(attend):
    def fwd_bwd(q, k, v, dout):
        _, vjp = jax.vjp(attend, q, k, v)
        return vjp(dout)

    return fwd_bwd


def measure(name, fwd, fwd_bwd, args, flops, opts):
    """Forward and backward ms and TFLOPs/s (flops: forward FLOPs per device)."""
    row = {}
    try:
        t_f = timeit(fwd, *args[:3], calls=opts.calls, repeats=opts.repeats)
        row[f"{name}_fwd_ms"] = t_f * 1e3
        row[f"{name}_fwd_tflops"] = flops / t_f / 1e12
        if not opts.no_bwd:
            t_fb = timeit(fwd_bwd, *args, calls=opts.calls, repeats=opts.repeats)
            t_b = max(t_fb - t_f, 1e-9)
            row[f"{name}_bwd_ms"] = t_b * 1e3
            row[f"{name}_bwd_tflops"] = 2.5 * flops / t_b / 1e12
    except Exception as e:  # noqa: BLE001 - a failing variant is reported, not fatal
        row[f"{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return row


def random_inputs(key, shapes, dtype, shardings):
    keys = jax.random.split(key, len(shapes))
    return [
        jax.jit(lambda k, shape=shape: jax.random.normal(k, shape, dtype), out_shardings=s)(key)
        for key, shape, s in zip(keys, shapes, shardings)
    ]


def bench_config(mesh, seq, causal, opts):
    n = mesh.size
    b, h, hk, d = opts.batch, opts.heads, opts.kv_heads or opts.heads, opts.hdim
    local = seq // n
    dtype = jnp.dtype(opts.dtype)
    kwargs = {"causal": bool(causal), "implementation": opts.implementation}
    row = {"seq": seq, "local_seq": local, "devices": n, "causal": int(causal), "batch": b, "heads": h,
               "kv_heads": hk, "hdim": d, "dtype": dtype.name}

    # Peer: one device at the local length.
    dev0 = NamedSharding(Mesh(np.array(mesh.devices.flat[:1]), ("one",)), P())
    single = random_inputs(jax.random.key(0), [(b, local, h, d), (b, local, hk, d), (b, local, hk, d),
                                               (b, local, h, d)], dtype, [dev0] * 4)
    attend = lambda q, k, v: jax_flash3.flash_attention(q, k, v, **kwargs)
    single_flops = flops_fwd(b, h, local, d, causal)
    row.update(measure("single", jax.jit(attend), jax.jit(with_vjp(attend)), single, single_flops, opts))

    # Ring: the global sequence sharded over all devices.
    seq_sharding = NamedSharding(mesh, P(None, "seq"))
    sharded = random_inputs(jax.random.key(1), [(b, seq, h, d), (b, seq, hk, d), (b, seq, hk, d),
                                                (b, seq, h, d)], dtype, [seq_sharding] * 4)
    per_device = flops_fwd(b, h, seq, d, causal) / n
    spec = P(None, "seq")

    def explicit(fn, n_in, n_out):
        return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * n_in,
                                     out_specs=spec if n_out == 1 else (spec,) * n_out,
                                     check_vma=False))

    # Random data, so the zigzag order of the explicit variant needs no conversion to time it.
    ring = lambda q, k, v: jax_flash3.ring_attention(q, k, v, "seq", **kwargs)
    if "explicit" in opts.modes:
        ring_fwd = explicit(ring, 3, 1)
        if opts.dump_hlo:  # where XLA put the collective-permute start/done around the kernels
            path = pathlib.Path(opts.dump_hlo) / f"ring_fwd_{seq}_{int(causal)}.txt"
            path.write_text(ring_fwd.lower(*sharded[:3]).compile().as_text())
        row.update(measure("ring", ring_fwd, explicit(with_vjp(ring), 4, 3), sharded,
                           per_device, opts))
    if "jit" in opts.modes:
        row.update(measure("ring_jit", jax.jit(attend), jax.jit(with_vjp(attend)), sharded,
                           per_device, opts))
    # The same per-device problem on every device at once (no ring): what a device sustains while
    # its neighbours are busy too. Reported beside the ratio, not used in it.
    batch_sharding = NamedSharding(mesh, P("seq"))
    concurrent = random_inputs(jax.random.key(3), [(n * b, local, h, d), (n * b, local, hk, d),
                                                   (n * b, local, hk, d), (n * b, local, h, d)],
                               dtype, [batch_sharding] * 4)
    row.update(measure("concurrent", jax.jit(attend), jax.jit(with_vjp(attend)), concurrent,
                       single_flops, opts))
    del concurrent
    after = measure("single", jax.jit(attend), jax.jit(with_vjp(attend)), single, single_flops, opts)
    del single
    for direction in ("fwd", "bwd"):
        before_t, after_t = row.get(f"single_{direction}_tflops"), after.get(f"single_{direction}_tflops")
        if before_t and after_t:
            row[f"single_{direction}_tflops_before"] = before_t
            row[f"single_{direction}_tflops_after"] = after_t
            row[f"single_{direction}_tflops"] = (before_t + after_t) / 2
    for variant in ("ring", "ring_jit"):
        for direction in ("fwd", "bwd"):
            ours, peer = row.get(f"{variant}_{direction}_tflops"), row.get(f"single_{direction}_tflops")
            if ours and peer:
                row[f"{variant}_{direction}_ratio"] = ours / peer
    return row


def warm_up(mesh, opts):
    """Run attention on every device for ``opts.warmup_s`` seconds (clocks settle under load)."""
    if opts.warmup_s <= 0:
        return
    import time

    n, d = mesh.size, opts.hdim
    sharding = NamedSharding(mesh, P("seq"))
    x = random_inputs(jax.random.key(2), [(n, 4096, opts.heads, d)] * 3, jnp.dtype(opts.dtype),
                      [sharding] * 3)
    fn = jax.jit(lambda q, k, v: jax_flash3.flash_attention(q, k, v, implementation=opts.implementation))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < opts.warmup_s:
        jax.block_until_ready([fn(*x) for _ in range(10)])


def fmt(row, key, width=7, spec=".1f"):
    value = row.get(key)
    return f"{value:{width}{spec}}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, nargs="+", default=[32768, 65536, 131072],
                    help="global sequence lengths (each divisible by 2 x devices)")
    ap.add_argument("--causal", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--hdim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=16, help="query heads (hidden 2048 at hdim 128)")
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--implementation", default="auto", choices=["auto", "cuda", "reference"])
    ap.add_argument("--modes", nargs="+", default=["explicit", "jit"], choices=["explicit", "jit"])
    ap.add_argument("--no-bwd", action="store_true")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--dump-hlo", default=None, help="write the compiled ring forward HLO here (a folder)")
    ap.add_argument("--warmup-s", type=float, default=5.0,
                    help="seconds of attention on every device before the first measurement")
    opts = ap.parse_args(argv)

    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("seq",))
    print(f"jax {jax.__version__}, {len(devices)} x {devices[0].device_kind}; "
          f"cuda: {jax_flash3.cuda_unavailable_reason() or 'available'}")
    print("seq     local  causal | single fwd/bwd TF/s | ring fwd/bwd TF/s/dev (ratio) "
          "| ring_jit fwd/bwd TF/s/dev (ratio)")
    warm_up(mesh, opts)
    rows = []
    for seq in opts.seq:
        if seq % (2 * len(devices)):
            print(f"skip seq {seq}: not divisible by 2 x {len(devices)} devices", file=sys.stderr)
            continue
        for causal in opts.causal:
            row = bench_config(mesh, seq, causal, opts)
            rows.append(row)
            print(
                f"{seq:<7d} {row['local_seq']:<6d} {causal:<6d} | "
                f"{fmt(row, 'single_fwd_tflops')} {fmt(row, 'single_bwd_tflops')}     | "
                f"{fmt(row, 'ring_fwd_tflops')} {fmt(row, 'ring_bwd_tflops')} "
                f"({fmt(row, 'ring_fwd_ratio', 4, '.2f')} {fmt(row, 'ring_bwd_ratio', 4, '.2f')}) | "
                f"{fmt(row, 'ring_jit_fwd_tflops')} {fmt(row, 'ring_jit_bwd_tflops')} "
                f"({fmt(row, 'ring_jit_fwd_ratio', 4, '.2f')} {fmt(row, 'ring_jit_bwd_ratio', 4, '.2f')})",
                flush=True,
            )
            print(f"{'':22s}  concurrent single on all devices: "
                  f"{fmt(row, 'concurrent_fwd_tflops')} {fmt(row, 'concurrent_bwd_tflops')}", flush=True)
            for key, value in row.items():
                if key.endswith("_error"):
                    print(f"  {key}: {value}", flush=True)
    if opts.out:
        pathlib.Path(opts.out).write_text(json.dumps(rows, indent=2))
        print(f"wrote {opts.out}")
    return rows


if __name__ == "__main__":
    main()

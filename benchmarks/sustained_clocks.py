"""Sustained throughput with the SM clock and board power read alongside (NVML), per implementation.

    python3 benchmarks/sustained_clocks.py [--seconds 2.0] [--fp8]

For each grid point below and each implementation (jax_flash3, flash-attn3-jax when installed),
the jitted call runs back to back (10 dispatched, then a wait) for ``--seconds`` (the first half warms the card up to its
sustained state, the second half is measured): TFLOPs/s from the calls completed in the second
half (same FLOP formula as bench_attention.py), and the mean SM clock (MHz) and power (W) sampled
by NVML after each burst of 10 in that half. Answers whether two kernels at the same grid point run at
the same clock when the card sits at its power cap.

``--fp8``: instead, hdim 128 and 256 non-causal at 16k, our bf16 forward and the FP8 forward on
pre-quantized inputs (bench_attention.py's ``fp8`` row), each run twice in the order bf16, fp8,
bf16, fp8: the sustained fp8 / bf16 ratio at the power cap, with the clock each one settles at.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from bench_attention import attention_fn, flops_fwd, grid_inputs

POINTS = [  # (hdim, seq, causal, with backward)
    (128, 1024, 1, False),
    (128, 8192, 1, False),
    (128, 16384, 0, False),
    (128, 16384, 0, True),
]


def _fp8_call(q, k, v, causal):
    """bench_attention.py's ``fp8`` row: the FP8 forward on inputs quantized beforehand."""
    import jax_flash3
    from jax_flash3 import fp8

    (q8, qd), (k8, kd), (v8, vd) = fp8.quantize(q), fp8.quantize(k), fp8.quantize(v, granularity="head")
    fn = jax.jit(lambda q8, k8, v8: jax_flash3.flash_attention(  # descales closed over, as there
        q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd, causal=bool(causal)))
    return fn, (q8, k8, v8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--fp8", action="store_true", help="bf16 vs FP8 forward, d128/d256 16k")
    args = ap.parse_args()
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    impls = ["jf3"]
    try:
        import flash_attn3_jax  # noqa: F401  (peer wheel: timed beside us when installed)

        impls.append("fa3jax")
    except ImportError:
        pass
    points = POINTS
    if args.fp8:
        points, impls = [(128, 16384, 0, False), (256, 16384, 0, False)], ["jf3", "fp8", "jf3", "fp8"]
    print(f"{'point':<24} {'impl':<7} {'TFLOPs/s':>9} {'SM MHz':>7} {'W':>6} {'calls':>6}")
    for d, s, causal, bwd in points:
        b, hh, (q, k, v, do) = grid_inputs(jax.random.PRNGKey(1), d, s)
        fl = flops_fwd(b, hh, s, d, causal) * (3.5 if bwd else 1.0)  # fwd + bwd = 3.5 x fwd
        for name in impls:
            if name == "fp8":
                fn, args8 = _fp8_call(q, k, v, causal)
                call = lambda fn=fn, args8=args8: fn(*args8)
            elif bwd:
                attn = attention_fn(name, causal)
                fn = jax.jit(lambda q, k, v, do, attn=attn: jax.vjp(attn, q, k, v)[1](do))
                call = lambda fn=fn: fn(q, k, v, do)
            else:
                fn = jax.jit(attention_fn(name, causal))
                call = lambda fn=fn: fn(q, k, v)
            jax.block_until_ready(call())
            t_end = time.perf_counter() + args.seconds
            t_half = time.perf_counter() + args.seconds / 2
            burst = lambda: jax.block_until_ready([call() for _ in range(10)])  # 10 in flight, as the grid
            while time.perf_counter() < t_half:
                burst()
            n, clocks, watts = 0, [], []
            t0 = time.perf_counter()
            while time.perf_counter() < t_end:
                burst()
                n += 10
                clocks.append(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM))
                watts.append(pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0)
            dt = time.perf_counter() - t0
            label = f"d{d} s{s} {'causal' if causal else 'full'}{' fwd+bwd' if bwd else ' fwd'}"
            print(f"{label:<24} {name:<7} {fl * n / dt / 1e12:9.1f} {statistics.mean(clocks):7.0f} "
                  f"{statistics.mean(watts):6.0f} {n:6d}", flush=True)


if __name__ == "__main__":
    main()

"""Where the FP8 forward's error comes from: a numpy model of jax_flash3's FP8 recipe (issue 7).

Simulates, with ml_dtypes' float8_e4m3fn, what ``precision="fp8"`` does: a random-sign Hadamard
rotation of q and k along the head dim, 128-row block scales (each block's amax mapped to 448),
v quantized per 128 rows, and P scaled by 256 and rounded to e4m3 before the PV product, as the
kernel does. Inputs are ``fp8_accuracy.py``'s: N(0, 1) + N(0, 100) * Bernoulli(0.001).
Each variant quantizes only some of the operands, so the table shows which one dominates; the
"two terms" variants store an operand as hi + lo (two e4m3 tensors), the cost of a second GEMM.
RMSE of the output against float64 attention on the unquantized inputs. CPU only, a few minutes.

    python3 benchmarks/fp8_error_model.py --hdims 64 128
"""

from __future__ import annotations

import argparse
import math

import ml_dtypes
import numpy as np

E4M3 = ml_dtypes.float8_e4m3fn
E4M3_MAX = 448.0
BLOCK = 128
P_SCALE = 256.0  # the kernel's exp2 offset: P <= 256 before rounding to e4m3


def outlier_inputs(rng, shape):
    x = rng.standard_normal(shape)
    x += rng.normal(0.0, 10.0, shape) * (rng.random(shape) < 0.001)
    return x.astype(np.float32)


def hadamard(d, rng):
    h = np.array([[1.0]])
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    signs = np.where(rng.random(d) < 0.5, -1.0, 1.0)
    return (h / math.sqrt(d)) * signs[:, None]


def quantize(x):
    """Round-trip (S, D) through e4m3 with one scale per BLOCK rows."""
    y = np.empty_like(x)
    for r in range(0, x.shape[0], BLOCK):
        blk = x[r:r + BLOCK]
        amax = float(np.abs(blk).max())
        scale = amax / E4M3_MAX if amax > 0 else 1.0
        y[r:r + BLOCK] = (blk / scale).astype(E4M3).astype(np.float32) * scale
    return y


def quantize_two_terms(x):
    hi = quantize(x)
    return hi + quantize((x - hi).astype(np.float32))


def attention(q, k, v, round_p=False):
    s = q.astype(np.float64) @ k.T.astype(np.float64) / math.sqrt(q.shape[1])
    s -= s.max(1, keepdims=True)
    p = np.exp(s)
    denom = p.sum(1, keepdims=True)
    if round_p:
        p = (p * P_SCALE).astype(np.float32).astype(E4M3).astype(np.float64) / P_SCALE
    return (p / denom) @ v.astype(np.float64)


def variants(q, k, v, h):
    qr, kr = (q @ h).astype(np.float32), (k @ h).astype(np.float32)
    qq, kq, vq = quantize(qr), quantize(kr), quantize(v)
    return {
        "all (kernel)": attention(qq, kq, vq, True),
        "q,k only": attention(qq, kq, v),
        "q only": attention(qq, kr, v),
        "v only": attention(qr, kr, vq),
        "no hadamard": attention(quantize(q), quantize(k), vq, True),
        "q two terms": attention(quantize_two_terms(qr), kq, vq, True),
        "q,k two terms": attention(quantize_two_terms(qr), quantize_two_terms(kr), vq, True),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--hdims", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args(argv)
    for d in args.hdims:
        sq_err: dict[str, list[float]] = {}
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            h = hadamard(d, rng)
            for _ in range(args.heads):
                q, k, v = (outlier_inputs(rng, (args.seq, d)) for _ in range(3))
                ref = attention(q, k, v)
                for name, out in variants(q, k, v, h).items():
                    sq_err.setdefault(name, []).append(float(np.mean((out - ref) ** 2)))
        row = "  ".join(f"{n}: {math.sqrt(np.mean(e)):.2e}" for n, e in sq_err.items())
        print(f"hdim {d}: {row}", flush=True)


if __name__ == "__main__":
    main()

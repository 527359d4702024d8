"""FP8 forward (issue 7): ``jax_flash3.fp8`` and flash_attention's float8_e4m3fn / precision="fp8".

CPU part (always runs, pinned to the host): quantize/dequantize, the Hadamard rotation, descale
validation, the reference path on float8 inputs vs the float64 oracle of the *dequantized* inputs
(tight: the only error there is float32 arithmetic and the bfloat16 output rounding),
precision="fp8" vs the oracle of the *unquantized* inputs (FP8 tolerance), its gradients, and the
transforms (jit, vmap, traced descales, sharding).

GPU part (``pytest.mark.gpu``, skipped without the CUDA library / an sm_90 GPU): the FP8 kernel
(implementation="cuda") vs the float64 oracle of the dequantized inputs, outputs poisoned first as
test_gpu.py's docstring describes; precision="fp8" on the GPU vs the CPU path; determinism.

e4m3 facts the tolerances rest on (float8_e4m3fn: 3 mantissa bits, exponent bias 7, max 448, no
inf): round-to-nearest-even has relative error <= 2^-4 for normal values (|x| >= 2^-6); below
that the spacing is the subnormal step 2^-9, so the absolute error is <= 2^-10. In units of a
descale ``s`` (``x ≈ x8 * s``) the round-trip error is therefore <= max(2^-4 |x|, 2^-10 s).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracle import (
    Case,
    assert_finite,
    assert_lse,
    check_dead_rows,
    make_inputs,
    oracle,
    run_poisoned,
    seed_of,
    to_f64,
)
from jax.sharding import NamedSharding, PartitionSpec

from jax_flash3 import UnsupportedError, flash_attention, fp8, make_config
from jax_flash3.reference import reference_bwd

E4M3 = np.dtype(jnp.float8_e4m3fn)
E4M3_REL = 2.0**-4  # RNE relative error bound for normal e4m3 values
E4M3_SUB_ABS = 2.0**-10  # half the subnormal step 2^-9: absolute error bound below 2^-6
E4M3_MIN_NORMAL = 2.0**-6
BF16_REL = 2.0**-8  # bf16 RNE: relative error <= 2^-8 (7 stored mantissa bits)
BLOCK = fp8.SCALE_BLOCK
REF = "reference"


_quantize = jax.jit(fp8.quantize, static_argnames="granularity")
_dequantize = jax.jit(fp8.dequantize)


def _nblocks(s: int) -> int:
    return -(-s // BLOCK)


def _rms(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


@pytest.fixture(autouse=True)
def _pin_cpu_unless_gpu(request):
    """CPU tests run on the host even on a GPU machine (exact fp32 matmuls, the reference path);
    GPU tests keep the default (GPU) device."""
    if request.node.get_closest_marker("gpu"):
        yield
        return
    with jax.default_device(jax.devices("cpu")[0]):
        yield


# --------------------------------------------------------------------------------------------
# float8 inputs with descales of every layout, and their real (dequantized) values in float64

# Descale layouts by name. q: also per KV head ("bhk", "block_kv"), applied to every query head
# of its group; k: "bh"/"block" mean KV heads; v: per tensor or per (batch, KV head) only.
Q_LAYOUTS = ("none", "tensor", "bh", "bhk", "block", "block_kv")
K_LAYOUTS = ("none", "tensor", "bh", "block")
V_LAYOUTS = ("none", "tensor", "bh")


def descale_shape(layout: str, b: int, s: int, h: int, hk: int):
    """The descale shape of a layout for a tensor with ``h`` heads (``hk`` KV heads for q's)."""
    return {
        "none": None,
        "tensor": (),
        "bh": (b, h),
        "bhk": (b, hk),
        "block": (b, h, _nblocks(s)),
        "block_kv": (b, hk, _nblocks(s)),
    }[layout]


def expand_descale(descale, b: int, s: int, h: int) -> np.ndarray:
    """float64 factor broadcastable to ``(B, S, H, D)`` for a descale of any allowed layout.

    Written independently of the package: a descale with fewer heads than ``h`` (q's KV-head
    layouts) applies to query head ``i`` through KV head ``i // (h // heads)``; a block descale
    ``(B, H, n)`` applies entry ``j // 128`` to row ``j``."""
    if descale is None:
        return np.ones(())
    d = np.asarray(descale, np.float64)
    if d.ndim == 0:
        return d
    d = np.repeat(d, h // d.shape[1], axis=1)  # (B, H[, n])
    if d.ndim == 2:
        return d[:, None, :, None]
    rows = np.repeat(d, BLOCK, axis=2)[:, :, :s]  # (B, H, S)
    return rows.transpose(0, 2, 1)[..., None]


def random_e4m3(rng, shape, scale: float) -> np.ndarray:
    x = rng.standard_normal(shape) * scale
    return np.clip(x, -448.0, 448.0).astype(np.float32).astype(E4M3)


class Fp8Inputs(NamedTuple):
    q8: object
    k8: object
    v8: object
    qd: object  # None or a float32 numpy array
    kd: object
    vd: object
    q: np.ndarray  # real values, float64
    k: np.ndarray
    v: np.ndarray

    @property
    def args(self):
        return (self.q8, self.k8, self.v8, self.qd, self.kd, self.vd)


def make_fp8_inputs(case: Case, seed: int, layouts=("block", "block", "bh"), put=None):
    """Random float8 q/k/v and independent random descales of the given layouts.

    Stored values are N(0, 16^2) rounded to e4m3 (well inside the normal range) and descales are
    uniform in [0.5, 2] / 16 per entry, so real values are about N(0, 1) times a factor that
    differs from block to block and head to head by up to 4x: a kernel that applies the wrong
    block's or head's descale is off by O(1). q's descales carry ``case.q_scale``. With layout
    "none" the stored values are the real ones: N(0, 1) (times q_scale for q) rounded to e4m3.
    ``put`` maps the numpy arrays to device arrays (default: jax.device_put)."""
    put = jax.device_put if put is None else put
    rng = np.random.default_rng(seed)
    b, sq, sk, hq, hk, d, dv = case.b, case.sq, case.sk, case.hq, case.hk, case.d, case.d_v
    out = []
    for s, h, dim, layout, extra in (
        (sq, hq, d, layouts[0], case.q_scale),
        (sk, hk, d, layouts[1], 1.0),
        (sk, hk, dv, layouts[2], 1.0),
    ):
        shape = descale_shape(layout, b, s, h, hk)
        if shape is None:
            x8, ds = random_e4m3(rng, (b, s, h, dim), extra), None
        else:
            x8 = random_e4m3(rng, (b, s, h, dim), 16.0)
            ds = (rng.uniform(0.5, 2.0, shape) * (extra / 16.0)).astype(np.float32)
        real = x8.astype(np.float64) * expand_descale(ds, b, s, h)
        out.append((x8, ds, real))
    (q8, qd, q), (k8, kd, k), (v8, vd, v) = out
    maybe = lambda d: None if d is None else put(d)
    return Fp8Inputs(put(q8), put(k8), put(v8), maybe(qd), maybe(kd), maybe(vd), q, k, v)


def fp8_forward_fn(case: Case, implementation: str):
    """jit'ed ``(q8, k8, v8, qd, kd, vd) -> (out, lse)`` through flash_attention."""

    def fwd(q8, k8, v8, qd, kd, vd):
        return flash_attention(
            q8,
            k8,
            v8,
            **case.flash_kwargs(),
            return_lse=True,
            implementation=implementation,
            q_descale=qd,
            k_descale=kd,
            v_descale=vd,
        )

    return jax.jit(fwd)


def check_reference_fp8(name, case: Case, out, lse, x: Fp8Inputs):
    """The CPU path dequantizes and runs the float32 reference: vs the float64 oracle of the real
    values, out is within bf16 rounding (2^-8 relative) plus float32 noise, lse float32-tight."""
    assert out.dtype == jnp.bfloat16, f"{name}: out dtype {out.dtype}, want bfloat16"
    assert out.shape == (case.b, case.sq, case.hq, case.d_v), f"{name}: out shape {out.shape}"
    assert lse.shape == (case.b, case.hq, case.sq), f"{name}: lse shape {lse.shape}"
    ref = oracle(x.q, x.k, x.v, **case.oracle_kwargs())
    a = to_f64(out)
    assert_finite(name, a)
    scale = float(np.abs(ref.out).max(initial=0.0))
    bound = BF16_REL * np.abs(ref.out) + 2e-5 * scale + 1e-7
    err = np.abs(a - ref.out)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else ()
    print(f"{name}: max err {err.max(initial=0):.3e} | ref scale {scale:.3e}")
    assert np.all(err <= bound), (
        f"{name}: err {err[worst]:.3e} > bound {bound[worst]:.3e} at {worst}"
    )
    finite = ref.lse[np.isfinite(ref.lse)]
    assert_lse(
        f"{name} lse", lse, ref.lse, tol=1e-5 * max(1.0, float(np.abs(finite).max(initial=0)))
    )
    check_dead_rows(case, out, lse)


# --------------------------------------------------------------------------------------------
# quantize / dequantize


def _block_amax(x: np.ndarray, granularity: str) -> np.ndarray:
    """numpy float64 amax with the descale's shape."""
    a = np.abs(x.astype(np.float64))
    b, s, h, _ = x.shape
    if granularity == "tensor":
        return a.max()
    if granularity == "head":
        return a.max(axis=(1, 3))
    n = _nblocks(s)
    pad = np.zeros((b, n * BLOCK - s, h, x.shape[3]))
    return (
        np.concatenate([a, pad], 1).reshape(b, n, BLOCK, h, -1).max(axis=(2, 4)).transpose(0, 2, 1)
    )


@pytest.mark.parametrize("granularity", fp8.GRANULARITIES)
@pytest.mark.parametrize("s", [1, 17, 300])
def test_quantize_shapes_dtypes_and_scales(granularity, s):
    b, h, d = 2, 3, 8
    x = np.random.default_rng(seed_of("qshape", granularity, s)).standard_normal((b, s, h, d))
    x = (x * np.exp(np.random.default_rng(s).uniform(-3, 3, (b, s, h, 1)))).astype(np.float32)
    x8, ds = _quantize(jnp.asarray(x), granularity=granularity)
    want = {"tensor": (), "head": (b, h), "block": (b, h, _nblocks(s))}[granularity]
    assert x8.shape == x.shape and x8.dtype == E4M3
    assert ds.shape == want and ds.dtype == jnp.float32
    amax = _block_amax(x, granularity)
    # each scale maps its block's absolute maximum to 448 ...
    np.testing.assert_allclose(np.asarray(ds, np.float64), amax / 448.0, rtol=2e-7)
    # ... so the block's largest stored magnitude is exactly 448 (the top e4m3 value)
    assert np.array_equal(
        _block_amax(np.asarray(x8, np.float32), granularity), np.full(want, 448.0)
    )


@pytest.mark.parametrize("granularity", fp8.GRANULARITIES)
@pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=["f32", "bf16", "f16"]
)
def test_quantize_round_trip_error(granularity, dtype):
    """|dequantize(quantize(x)) - x| <= max(2^-4 |x|, 2^-10 descale) elementwise (e4m3 RNE,
    subnormals included), and the bound is attained closely (so the format really is e4m3: e5m2
    would break the bound, a wider format would not come near it)."""
    b, s, h, d = 2, 300, 2, 32
    rng = np.random.default_rng(seed_of("roundtrip", granularity, str(dtype)))
    # per-row magnitudes over 4 decades, so every block has values deep in the subnormal range
    x = rng.standard_normal((b, s, h, d)) * 10.0 ** rng.uniform(-4, 0, (b, s, h, 1))
    xj = jnp.asarray(x, dtype)
    x = to_f64(xj)  # the exact values quantize saw
    x8, ds = _quantize(xj, granularity=granularity)
    back = to_f64(_dequantize(x8, ds))
    factor = expand_descale(np.asarray(ds), b, s, h)
    err = np.abs(back - x)
    # (+ float32 rounding of x / descale and of x8 * descale: 2^-23 relative)
    bound = np.maximum(E4M3_REL * np.abs(x), E4M3_SUB_ABS * factor) + 2.0**-22 * np.abs(x) + 1e-30
    assert np.all(err <= bound), f"max err/bound {np.max(err / bound):.4f}"
    # block-level summary: error <= 2^-4 * the block's amax (descale = amax / 448)
    assert np.all(err <= E4M3_REL * 448.0 * factor * (1 + 2.0**-20))
    normal = np.abs(x) >= E4M3_MIN_NORMAL * factor * 1.01
    rel = err[normal] / np.abs(x[normal])
    assert rel.max() > 0.9 * E4M3_REL, f"max relative error {rel.max():.4f}: not e4m3 rounding?"
    assert _dequantize(x8, ds).dtype == jnp.float32


def test_block_scales_keep_small_blocks_accurate():
    """Why per-block scales: with block magnitudes spanning 8 decades, one tensor scale pushes the
    small blocks below e4m3's range (into subnormals or zero), block scales keep every block at
    relative error <= 2^-4."""
    b, s, h, d = 1, 4 * BLOCK, 2, 32
    rng = np.random.default_rng(seed_of("block-range"))
    mags = 10.0 ** np.array([-6.0, -3.0, 0.0, 2.0])
    x = rng.standard_normal((b, s, h, d)) * np.repeat(mags, BLOCK)[None, :, None, None]
    x = x.astype(np.float32)
    worst = {}
    for g in ("block", "tensor"):
        x8, ds = _quantize(jnp.asarray(x), granularity=g)
        back = to_f64(_dequantize(x8, ds))
        rel_rms = [
            _rms(back[:, i * BLOCK : (i + 1) * BLOCK] - x[:, i * BLOCK : (i + 1) * BLOCK])
            / _rms(x[:, i * BLOCK : (i + 1) * BLOCK])
            for i in range(4)
        ]
        worst[g] = max(rel_rms)
        print(g, np.round(rel_rms, 4))
    assert worst["block"] <= E4M3_REL / 2, worst  # rms relative error of e4m3 is ~2.5%
    assert worst["tensor"] >= 0.5, worst  # the 1e-6 block is flushed to zero


def test_quantize_zero_blocks_get_descale_one():
    b, s, h, d = 2, 300, 2, 32
    x = np.random.default_rng(seed_of("zeros")).standard_normal((b, s, h, d)).astype(np.float32)
    x[:, BLOCK : 2 * BLOCK] = 0.0  # block 1 of every (batch, head)
    x[1, :, 0] = 0.0  # all of (batch 1, head 0)
    x8, ds = _quantize(jnp.asarray(x), granularity="block")
    ds = np.asarray(ds)
    assert np.all(ds[:, :, 1] == 1.0) and np.all(ds[1, 0] == 1.0)
    assert np.all(ds[0, :, 0] != 1.0)
    assert np.all(np.asarray(x8, np.float32)[:, BLOCK : 2 * BLOCK] == 0.0)
    for g, want in (("head", (b, h)), ("tensor", ())):
        z8, zd = _quantize(jnp.zeros((b, s, h, d)), granularity=g)
        assert zd.shape == want and np.all(np.asarray(zd) == 1.0)
        assert np.all(np.asarray(z8, np.float32) == 0.0)
        assert np.all(to_f64(_dequantize(z8, zd)) == 0.0)


@pytest.mark.parametrize(
    "dtype,big",
    [(jnp.float32, 1e30), (jnp.float32, 3.0e38), (jnp.bfloat16, 3.0e38), (jnp.float16, 65504.0)],
    ids=["f32-1e30", "f32-max", "bf16-max", "f16-max"],
)
def test_quantize_large_values_no_nan(dtype, big):
    """Huge magnitudes: finite descales, no NaN in x8 (e4m3fn has no inf: overflow would be NaN,
    so the scaled values must be clipped to +-448), round-trip relative error still <= 2^-4."""
    rng = np.random.default_rng(seed_of("large", str(dtype), big))
    x = rng.uniform(0.5, 1.0, (2, 300, 2, 32)) * rng.choice([-1.0, 1.0], (2, 300, 2, 32)) * big
    xj = jnp.asarray(x.astype(np.float64), dtype)
    assert np.isfinite(to_f64(xj)).all()
    for g in fp8.GRANULARITIES:
        x8, ds = _quantize(xj, granularity=g)
        x8f = np.asarray(x8, np.float32)
        assert not np.isnan(x8f).any(), f"{g}: NaN in x8"
        assert np.isfinite(np.asarray(ds)).all() and (np.asarray(ds) > 0).all()
        back = to_f64(_dequantize(x8, ds))
        xs = to_f64(xj)
        assert np.all(np.abs(back - xs) <= E4M3_REL * np.abs(xs) * (1 + 1e-6)), g


def test_quantize_and_dequantize_reject_bad_arguments():
    x = jnp.ones((1, 4, 2, 8))
    with pytest.raises(ValueError, match=r"granularity must be one of .*'row'"):
        fp8.quantize(x, granularity="row")
    with pytest.raises(ValueError, match=r"granularity"):
        fp8.quantize(x, granularity=None)
    with pytest.raises(ValueError, match=r"rank 4"):
        fp8.quantize(x[0])
    with pytest.raises(TypeError, match=r"floating"):
        fp8.quantize(jnp.ones((1, 4, 2, 8), jnp.int32))
    with pytest.raises(TypeError, match=r"must be an array"):
        fp8.quantize([[[[1.0]]]])
    x8, ds = _quantize(jnp.ones((2, 300, 3, 8)), granularity="block")
    with pytest.raises(ValueError, match=r"descale must have shape \(2, 3, 3\)"):
        fp8.dequantize(x8, ds[:, :, :2])
    with pytest.raises(ValueError, match=r"descale must have shape \(2, 3\)"):
        fp8.dequantize(x8, ds[:, :2, 0])
    with pytest.raises(ValueError, match=r"rank 0, 2 or 3"):
        fp8.dequantize(x8, ds[0, 0])


# --------------------------------------------------------------------------------------------
# Hadamard rotation


@pytest.mark.parametrize("d", [8, 64, 96, 128, 192, 256])
def test_hadamard_matrix_orthonormal(d):
    h = np.asarray(fp8.hadamard_matrix(d), np.float64)
    assert h.shape == (d, d) and fp8.hadamard_matrix(d).dtype == jnp.float32
    np.testing.assert_allclose(h @ h.T, np.eye(d), atol=1e-6)
    np.testing.assert_allclose(h.T @ h, np.eye(d), atol=1e-6)
    p = d & -d  # block size of the (block-)Walsh-Hadamard matrix
    nz = np.abs(h[h != 0])
    np.testing.assert_allclose(nz, 1 / math.sqrt(p), rtol=1e-6)
    assert (h != 0).sum() == d * p  # every row spreads over a whole block of p coordinates


@pytest.mark.parametrize("d", [0, -4, 2.0, True, "8"])
def test_hadamard_matrix_rejects_bad_sizes(d):
    with pytest.raises(ValueError, match=r"\bd must be a positive int"):
        fp8.hadamard_matrix(d)


def test_random_signs():
    a = np.asarray(fp8.random_signs(jax.random.key(1), 256))
    assert a.shape == (256,) and a.dtype == np.float32
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert 64 < (a > 0).sum() < 192
    np.testing.assert_array_equal(a, np.asarray(fp8.random_signs(jax.random.key(1), 256)))
    assert not np.array_equal(a, np.asarray(fp8.random_signs(jax.random.key(2), 256)))


@pytest.mark.parametrize("d", [96, 128])
def test_rotate_preserves_qk_and_spreads_outliers(d):
    rng = np.random.default_rng(seed_of("rotate", d))
    q = rng.standard_normal((2, 17, 2, d)).astype(np.float32)
    k = rng.standard_normal((2, 30, 2, d)).astype(np.float32)
    signs = fp8.random_signs(jax.random.key(d), d)
    qr, kr = fp8.rotate(jnp.asarray(q), signs), fp8.rotate(jnp.asarray(k), signs)
    assert qr.dtype == jnp.float32 and qr.shape == q.shape
    s = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k.astype(np.float64))
    sr = np.einsum("bqhd,bkhd->bhqk", to_f64(qr), to_f64(kr))
    np.testing.assert_allclose(sr, s, atol=2e-5 * np.abs(s).max())
    np.testing.assert_allclose(
        np.linalg.norm(to_f64(qr), axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-5
    )
    # rotate works in float32 for low-precision inputs too
    assert fp8.rotate(jnp.asarray(q, jnp.bfloat16), signs).dtype == jnp.float32
    # a one-hot outlier spreads evenly over its block of p = d & -d coordinates
    p = d & -d
    e = np.zeros((1, 1, 1, d), np.float32)
    e[..., 3] = 100.0
    er = np.abs(to_f64(fp8.rotate(jnp.asarray(e), signs)))
    np.testing.assert_allclose(np.sort(er.ravel())[-p:], 100.0 / math.sqrt(p), rtol=1e-6)
    with pytest.raises(ValueError, match=r"signs must have shape"):
        fp8.rotate(jnp.asarray(q), signs[:-1])


# --------------------------------------------------------------------------------------------
# Descale validation and semantics


_DS_CASE = Case(b=2, sq=300, sk=200, hq=4, hk=2, d=32)  # nq = 3 != nk = 2


@pytest.mark.parametrize(
    "layouts",
    [(q, "none", "none") for q in Q_LAYOUTS[1:]]
    + [("none", k, "none") for k in K_LAYOUTS[1:]]
    + [("none", "none", v) for v in V_LAYOUTS[1:]]
    + [("block", "block", "bh"), ("block_kv", "tensor", "tensor")],
    ids=lambda t: "q_{}-k_{}-v_{}".format(*t),
)
def test_every_descale_layout_matches_oracle(layouts):
    """Each allowed descale shape (alone, others None = 1, and in combinations) means
    ``real = stored * descale`` as documented, also for q's per-KV-head layouts under GQA."""
    case = _DS_CASE
    x = make_fp8_inputs(case, seed_of("layouts", layouts), layouts)
    out, lse = flash_attention(
        x.q8, x.k8, x.v8, q_descale=x.qd, k_descale=x.kd, v_descale=x.vd, return_lse=True
    )
    check_reference_fp8("out", case, out, lse, x)


def test_descales_accept_numbers_lists_and_numpy():
    case = _DS_CASE  # b=2, hk=2
    x = make_fp8_inputs(case, seed_of("py-descales"), ("none", "none", "none"))
    f = functools.partial(flash_attention, x.q8, x.k8, x.v8, implementation=REF)
    want = np.asarray(
        f(
            q_descale=np.float32(0.5),
            k_descale=jnp.full((2, 2), 2.0),
            v_descale=np.full((2, 2), 3.0),
        ),
        np.float32,
    )
    for kw in (
        {"q_descale": 0.5, "k_descale": [[2.0, 2.0], [2.0, 2.0]], "v_descale": 3},
        {
            "q_descale": np.float64(0.5),
            "k_descale": np.full((2, 2), 2),
            "v_descale": [[3.0] * 2] * 2,
        },
    ):
        np.testing.assert_array_equal(np.asarray(f(**kw), np.float32), want)
    # None means 1
    np.testing.assert_array_equal(
        np.asarray(f(), np.float32),
        np.asarray(f(q_descale=1.0, k_descale=1.0, v_descale=1.0), np.float32),
    )


def _bad_descale_cases():
    b, sq, sk, hq, hk = _DS_CASE.b, _DS_CASE.sq, _DS_CASE.sk, _DS_CASE.hq, _DS_CASE.hk
    nq, nk = _nblocks(sq), _nblocks(sk)
    ones = lambda *s: np.ones(s, np.float32)
    shape = r"has shape .*; allowed"
    pos = r"must be finite and > 0"
    cases = {
        "q_rank1": ("q_descale", ones(b), ValueError, shape),
        "q_heads_swapped": ("q_descale", ones(hq, b), ValueError, shape),
        "q_too_many_blocks": ("q_descale", ones(b, hq, nq + 1), ValueError, shape),
        "q_k_blocks": ("q_descale", ones(b, hq, nk - 1), ValueError, shape),
        "q_rank4": ("q_descale", ones(b, hq, nq, 1), ValueError, shape),
        "k_query_heads": ("k_descale", ones(b, hq), ValueError, shape),
        "k_q_blocks": ("k_descale", ones(b, hk, nq), ValueError, shape),
        "k_vector": ("k_descale", ones(hk), ValueError, shape),
        "v_blocks": ("v_descale", ones(b, hk, nk), ValueError, shape),
        "v_query_heads": ("v_descale", ones(b, hq), ValueError, shape),
        "q_negative": ("q_descale", -ones(b, hq), ValueError, pos),
        "k_zero": ("k_descale", np.zeros((b, hk, nk), np.float32), ValueError, pos),
        "v_zero_scalar": ("v_descale", 0.0, ValueError, pos),
        "q_inf": ("q_descale", np.float32(np.inf), ValueError, pos),
        "k_nan_entry": (
            "k_descale",
            np.where(np.eye(b, hk, dtype=bool), np.nan, 1.0),
            ValueError,
            pos,
        ),
        "v_neg_inf": ("v_descale", -np.inf, ValueError, pos),
        "q_string": ("q_descale", "1.0", TypeError, r"must be a float array or number, got str"),
        "k_bytes": ("k_descale", b"1", TypeError, r"must be a float array or number"),
        "v_bool": ("v_descale", True, TypeError, r"must be a float array or number"),
        "q_complex": ("q_descale", np.complex64(1.0), TypeError, r"floating"),
        "k_bool_array": ("k_descale", np.ones((b, hk), bool), TypeError, r"floating"),
        "v_object": ("v_descale", object(), TypeError, r"must be a float array or number"),
    }
    return [pytest.param(*v, id=k) for k, v in cases.items()]


@pytest.mark.parametrize("arg,value,exc,match", _bad_descale_cases())
def test_bad_descales_rejected_naming_the_argument(arg, value, exc, match, monkeypatch):
    case = _DS_CASE
    x = make_fp8_inputs(case, seed_of("bad"), ("none", "none", "none"))

    def boom(*a, **k):
        raise AssertionError("attention ran before the descales were validated")

    monkeypatch.setattr(fp8, "forward_quantized", boom)
    with pytest.raises(exc, match=rf"\b{arg}\b.*{match}|{match}.*\b{arg}\b") as info:
        flash_attention(x.q8, x.k8, x.v8, implementation=REF, **{arg: value})
    assert arg in str(info.value)
    # shapes are checked under jit as well (values only when concrete)
    if exc is ValueError and "shape" in match:
        with pytest.raises(ValueError, match=rf"\b{arg}\b"):
            jax.jit(lambda d: flash_attention(x.q8, x.k8, x.v8, **{arg: d}))(jnp.asarray(value))


# Bad values in traced descales: (argument, index into the (block, block, bh) descale, value).
# Each index's (batch, KV head) is the one whose output must turn NaN (q: head h -> KV head h // 2
# in _DS_CASE's 4 -> 2 grouping; head 1 tells that apart from h % 2; k and v index KV heads).
TRACED_BAD_DESCALES = {
    "q_negative_block": ("q_descale", (1, 1, 2), -1.0, (1, 0)),
    "k_zero_block": ("k_descale", (0, 1, 1), 0.0, (0, 1)),
    "v_nan": ("v_descale", (1, 0), np.nan, (1, 0)),
    "q_inf": ("q_descale", (0, 0, 0), np.inf, (0, 0)),
}


def check_traced_bad_descale(case: Case, x: Fp8Inputs, arg, index, value, bad, implementation,
                             return_lse=True):
    """One bad entry in a traced descale: every output row of the query heads of (batch, KV head)
    ``bad`` is NaN (each row sees keys here) and so is their lse; every other head is bitwise what
    the same jit-ed function returns with the good descales, and that call has no NaN."""

    def fwd(qd, kd, vd):
        r = flash_attention(x.q8, x.k8, x.v8, **case.flash_kwargs(), return_lse=return_lse,
                            implementation=implementation, q_descale=qd, k_descale=kd, v_descale=vd)
        return r if return_lse else (r, None)

    f = jax.jit(fwd)
    good = [x.qd, x.kd, x.vd]
    out_good, lse_good = f(*good)
    poisoned = list(good)
    i = ("q_descale", "k_descale", "v_descale").index(arg)
    poisoned[i] = jnp.asarray(poisoned[i]).at[index].set(value)
    out_bad, lse_bad = f(*poisoned)
    out_good = np.asarray(out_good, np.float32)
    out_bad = np.asarray(out_bad, np.float32)
    assert np.isfinite(out_good).all()
    g = case.hq // case.hk
    bad_heads = np.zeros((case.b, case.hq), bool)
    bad_heads[bad[0], bad[1] * g:(bad[1] + 1) * g] = True
    out_mask = np.broadcast_to(bad_heads[:, None, :, None], out_bad.shape)
    assert np.isnan(out_bad[out_mask]).all(), f"{arg}[{index}] = {value}: output not all NaN"
    np.testing.assert_array_equal(out_bad[~out_mask], out_good[~out_mask])
    if return_lse:
        lse_good, lse_bad = np.asarray(lse_good), np.asarray(lse_bad)
        assert np.isfinite(lse_good).all()
        lse_mask = np.broadcast_to(bad_heads[:, :, None], lse_bad.shape)
        assert np.isnan(lse_bad[lse_mask]).all()
        np.testing.assert_array_equal(lse_bad[~lse_mask], lse_good[~lse_mask])


@pytest.mark.parametrize("name", list(TRACED_BAD_DESCALES))
def test_traced_bad_descales_poison_their_heads_with_nan(name):
    """Under jit the descales' values are unknown at trace time (no error can be raised then): a
    bad value must show as NaN in the heads that read it, never as a plausible output."""
    case = _DS_CASE
    x = make_fp8_inputs(case, seed_of("traced-bad", name), ("block", "block", "bh"))
    check_traced_bad_descale(case, x, *TRACED_BAD_DESCALES[name], implementation=REF)


@pytest.mark.parametrize(
    "dtype", [jnp.bfloat16, jnp.float16, jnp.float32], ids=["bf16", "fp16", "f32"]
)
def test_descales_with_non_fp8_inputs_rejected(dtype):
    q, k, v = make_inputs(Case(b=1, sq=8, sk=8, hq=2, hk=1, d=16), dtype, 0)[:3]
    for kw in ({"q_descale": 1.0}, {"k_descale": jnp.ones(())}, {"v_descale": np.ones((1, 1))}):
        (name,) = kw
        with pytest.raises(
            ValueError, match=rf"\b{name}\b.*float8_e4m3fn.*got {jnp.dtype(dtype).name}"
        ):
            flash_attention(q, k, v, **kw)
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            flash_attention(q, k, v, precision="fp8", **kw)
    with pytest.raises(ValueError, match=r"q_descale, v_descale"):
        flash_attention(q, k, v, q_descale=1.0, v_descale=1.0)


@pytest.mark.parametrize("precision", ["bogus", "FP8", "fp16", "", 8, True])
def test_bad_precision_rejected(precision):
    q, k, v = make_inputs(Case(b=1, sq=8, sk=8, hq=2, hk=1, d=16), jnp.bfloat16, 0)[:3]
    with pytest.raises(ValueError, match=r"precision must be one of \(None, 'default', 'fp8'\)"):
        flash_attention(q, k, v, precision=precision)


def test_mixed_dtypes_rejected():
    case = Case(b=1, sq=8, sk=8, hq=2, hk=1, d=16)
    x = make_fp8_inputs(case, 0, ("tensor", "tensor", "tensor"))
    q, k, v = make_inputs(case, jnp.bfloat16, 1)[:3]
    e5m2 = x.k8.astype(jnp.float8_e5m2)
    for args, names in (
        ((x.q8, k, v), r"q=float8_e4m3fn, k=bfloat16, v=bfloat16"),
        ((x.q8, x.k8, v), r"q=float8_e4m3fn, k=float8_e4m3fn, v=bfloat16"),
        ((q, x.k8, x.v8), r"q=bfloat16, k=float8_e4m3fn, v=float8_e4m3fn"),
        ((x.q8, e5m2, x.v8), r"k=float8_e5m2"),
    ):
        with pytest.raises(TypeError, match=r"q, k and v must share one dtype, got .*" + names):
            flash_attention(*args)
        with pytest.raises(TypeError, match=r"share one dtype"):
            flash_attention(*args, precision="fp8")
        # with descales: still refused (the message must at least name the fp8 dtype)
        with pytest.raises((TypeError, ValueError), match=r"float8_e4m3fn"):
            flash_attention(*args, q_descale=1.0)
    e5 = tuple(a.astype(jnp.float8_e5m2) for a in (x.q8, x.k8, x.v8))
    with pytest.raises(TypeError, match=r"float8_e5m2"):
        flash_attention(*e5)
    with pytest.raises((TypeError, ValueError), match=r"float8"):
        flash_attention(*e5, q_descale=1.0)


def test_fp8_attention_rejects_bad_knobs():
    q, k, v = make_inputs(Case(b=1, sq=8, sk=8, hq=2, hk=1, d=16), jnp.bfloat16, 0)[:3]
    with pytest.raises(ValueError, match=r"granularity must be one of"):
        fp8.attention(q, k, v, granularity="row")
    with pytest.raises(TypeError, match=r"hadamard must be a bool"):
        fp8.attention(q, k, v, hadamard=1)
    with pytest.raises(TypeError, match=r"return_lse must be a bool"):
        fp8.attention(q, k, v, return_lse="yes")
    with pytest.raises(ValueError, match=r"softcap"):
        fp8.attention(q, k, v, softcap=-1.0)
    with pytest.raises(ValueError, match=r"\bk and v\b.*heads"):
        fp8.attention(q, k, v[:, :, :0])


# --------------------------------------------------------------------------------------------
# Reference path on float8 inputs vs the float64 oracle of the dequantized inputs

FP8_REF_CASES = {
    "d64-gqa4": (Case(b=2, sq=17, sk=300, hq=4, hk=1, d=64), ("block", "block", "bh")),
    "d256-sq1": (Case(b=1, sq=1, sk=17, hq=4, hk=1, d=256), ("block_kv", "bh", "bh")),
    "d36-dv20-causal": (
        Case(b=1, sq=17, sk=17, hq=2, hk=2, d=36, dv=20, causal=True),
        ("bh", "tensor", "none"),
    ),
    "sq1-sk1": (Case(b=2, sq=1, sk=1, hq=4, hk=1, d=64), ("block", "block", "bh")),
    "sq300-sk17-causal-dead": (
        Case(b=1, sq=300, sk=17, hq=4, hk=1, d=64, causal=True),
        ("block", "block", "bh"),
    ),
    "window_0_5-dead": (
        Case(b=1, sq=300, sk=17, hq=2, hk=1, d=64, window=(0, 5)),
        ("bhk", "tensor", "bh"),
    ),
    "softcap-causal-window": (
        Case(
            b=1,
            sq=300,
            sk=300,
            hq=4,
            hk=1,
            d=128,
            causal=True,
            window=(40, None),
            softcap=2.0,
            q_scale=3.0,
        ),
        ("none", "bh", "tensor"),
    ),
}


@pytest.mark.parametrize("case,layouts", [pytest.param(*v, id=k) for k, v in FP8_REF_CASES.items()])
def test_fp8_inputs_match_oracle_of_dequantized(case, layouts):
    x = make_fp8_inputs(case, seed_of(case, layouts, "ref"), layouts)
    out, lse = fp8_forward_fn(case, REF)(*x.args)
    check_reference_fp8("out", case, out, lse, x)


def test_quantize_then_flash_attention_equals_fp8_attention():
    """The documented manual flow (quantize q/k per block, v per head) is exactly what
    precision="fp8" does without the rotation and the residual term; and precision="fp8" is
    fp8.attention."""
    case = _DS_CASE
    q, k, v = make_inputs(case, jnp.float32, seed_of("manual"))[:3]

    @jax.jit
    def manual(q, k, v):
        q8, qd = fp8.quantize(q)
        k8, kd = fp8.quantize(k)
        v8, vd = fp8.quantize(v, granularity="head")
        return flash_attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd)

    man = manual(q, k, v)
    auto = jax.jit(functools.partial(fp8.attention, hadamard=False, residual=False))(q, k, v)
    assert auto.dtype == jnp.float32 and man.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(man, np.float32))
    a, la = jax.jit(functools.partial(flash_attention, precision="fp8", return_lse=True))(q, k, v)
    b, lb = jax.jit(functools.partial(fp8.attention, return_lse=True))(q, k, v)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
    # precision="default" is ordinary attention
    np.testing.assert_array_equal(
        np.asarray(flash_attention(q, k, v, precision="default")),
        np.asarray(flash_attention(q, k, v)),
    )


# --------------------------------------------------------------------------------------------
# precision="fp8" vs the float64 oracle of the unquantized inputs
#
# Tolerance: each input element is rounded with relative error <= 2^-4 (rms ~2.5%), so a logit
# q.k * scale moves by ~sqrt(2) * 2.5% of scale * sqrt(sum_i q_i^2 k_i^2) (~0.04 for N(0, 1)
# inputs) and the output by ~2.5% of v's scale from v's own rounding. Measured over these shapes,
# 5 seeds, f32/bf16 inputs, block/head/tensor scales, with and without the rotation: relative RMSE
# 3.4e-2 .. 5.8e-2, max error <= 0.104 * max|out|, lse error <= 0.08 nats. Bounds below: ~1.7-2x.
FP8_RMS_TOL = 0.1  # RMSE / rms(oracle out)
FP8_MAX_TOL = 0.2  # max err / max|oracle out|
FP8_LSE_TOL = 0.15  # nats
FP8_GRAD_RMS_TOL = 0.1  # measured <= 5.2e-2
FP8_GRAD_MAX_TOL = 0.2  # measured <= 0.096


def check_fp8_quantized_close(name, case: Case, out, lse, ref):
    a = to_f64(out)
    assert_finite(name, a)
    err = a - ref.out
    rms_rel = _rms(err) / _rms(ref.out)
    max_rel = np.abs(err).max() / np.abs(ref.out).max()
    print(f"{name}: rms rel {rms_rel:.3e} max rel {max_rel:.3e}")
    assert rms_rel <= FP8_RMS_TOL, f"{name}: RMSE {rms_rel:.3e} of rms(out) > {FP8_RMS_TOL}"
    assert max_rel <= FP8_MAX_TOL, f"{name}: max err {max_rel:.3e} of max|out| > {FP8_MAX_TOL}"
    assert_lse(f"{name} lse", lse, ref.lse, tol=FP8_LSE_TOL)
    check_dead_rows(case, out, lse)


PRECISION_CASES = {
    "d64-gqa4-causal-f32": (Case(b=2, sq=17, sk=300, hq=4, hk=1, d=64, causal=True), jnp.float32),
    "d256-softcap-bf16": (
        Case(b=1, sq=113, sk=257, hq=2, hk=1, d=256, softcap=5.0, q_scale=3.0),
        jnp.bfloat16,
    ),
    "d96-window-dead-fp16": (
        Case(b=1, sq=300, sk=17, hq=2, hk=1, d=96, window=(0, 5)),
        jnp.float16,
    ),
}


@pytest.mark.parametrize("case,dtype", [pytest.param(*v, id=k) for k, v in PRECISION_CASES.items()])
def test_precision_fp8_matches_oracle_of_unquantized(case, dtype):
    x = make_inputs(case, dtype, seed_of(case, "precision"))
    ref = oracle(*x[:3], **case.oracle_kwargs())
    f = jax.jit(
        functools.partial(flash_attention, **case.flash_kwargs(), precision="fp8", return_lse=True)
    )
    out, lse = f(*x[:3])
    assert out.dtype == jnp.dtype(dtype) and out.shape == ref.out.shape
    assert lse.dtype == jnp.float32
    check_fp8_quantized_close("precision=fp8", case, out, lse, ref)


def test_precision_fp8_knobs():
    """fp8.attention's granularities and keys all stay within the FP8 tolerance; the rotation is
    really applied (it changes the rounding, and another key changes it again) and agrees with
    the unrotated path up to the quantization error."""
    case = Case(b=1, sq=200, sk=300, hq=4, hk=2, d=64, causal=True)
    x = make_inputs(case, jnp.bfloat16, seed_of("knobs"))
    ref = oracle(*x[:3], **case.oracle_kwargs())

    def fn(**kw):
        return jax.jit(
            lambda q, k, v, key: fp8.attention(
                q, k, v, causal=True, return_lse=True, hadamard_key=key, **kw
            )
        )

    key7, key8 = jax.random.key(7), jax.random.key(8)
    block = fn(granularity="block")
    outs = {
        "block-key7": block(*x[:3], key7),
        "block-key8": block(*x[:3], key8),
        "tensor-noH": fn(granularity="tensor", hadamard=False)(*x[:3], key7),
        "block-noH": fn(hadamard=False)(*x[:3], key7),
    }
    for name, (out, lse) in outs.items():
        assert out.dtype == jnp.bfloat16
        check_fp8_quantized_close(name, case, out, lse, ref)
    get = lambda name: np.asarray(outs[name][0], np.float32)
    assert not np.array_equal(get("block-key7"), get("block-key8"))
    assert not np.array_equal(get("block-key7"), get("block-noH"))
    assert _rms(get("block-key7") - get("block-noH")) <= FP8_RMS_TOL * _rms(ref.out)


def _channel_outliers(seed, b=1, s=256, h=2, d=128, n_channels=4, factor=8.0):
    """q, k ~ N(0, 1) with a few head-dim channels scaled up in both (the "massive activation"
    channels of LLMs: the same channels in q and k, so q.k is dominated by a few coordinates),
    v ~ N(0, 1); and a softmax_scale that keeps the logits O(1)."""
    rng = np.random.default_rng(seed)
    ch = rng.choice(d, n_channels, replace=False)
    qk = []
    for _ in range(2):
        x = rng.standard_normal((b, s, h, d))
        x[..., ch] *= factor
        qk.append(x.astype(np.float32))
    v = rng.standard_normal((b, s, h, d)).astype(np.float32)
    scale = 2.0 / math.sqrt((d - n_channels) + n_channels * factor**4)
    return qk[0], qk[1], v, scale


def test_block_scales_and_hadamard_beat_per_tensor_on_outlier_channels():
    """The design's point, on outlier channels shared by q and k: the rotation spreads each
    outlier over all coordinates, so q.k's rounding errors average over d terms instead of being
    those of a few huge products. Measured RMSE ratio (per tensor, no rotation) / (block +
    rotation): 2.8-3.1 over 6 seeds; asserted >= 2. The rotation alone (block scales both ways)
    gives >= 2.5; asserted >= 1.8.

    (On *elementwise* sparse outliers, N(0,1) + N(0,100^2) * Bernoulli(1e-3), there is no such
    gain: e4m3 is a floating format, its relative precision does not depend on the scale, and
    uncorrelated outliers in q and k do not make q.k dominated by a few coordinates; measured
    ratios 0.65-1.35 there, so that is not asserted.)"""
    fns = {}

    def run(g, h, scale, q, k, v):
        key = (g, h, scale)
        if key not in fns:
            fns[key] = jax.jit(
                functools.partial(fp8.attention, granularity=g, hadamard=h, softmax_scale=scale)
            )
        return to_f64(fns[key](q, k, v))

    for seed in (0, 1, 2):
        q, k, v, scale = _channel_outliers(seed_of("outliers", seed))
        ref = oracle(q, k, v, softmax_scale=scale).out
        qj, kj, vj = (jnp.asarray(a) for a in (q, k, v))
        err = {
            (g, h): _rms(run(g, h, scale, qj, kj, vj) - ref) / _rms(ref)
            for g, h in (("block", True), ("tensor", False), ("block", False))
        }
        print(seed, {f"{g}{'+H' if h else ''}": f"{e:.3e}" for (g, h), e in err.items()})
        assert err["block", True] * 2.0 <= err["tensor", False], err
        assert err["block", True] * 1.8 <= err["block", False], err


# --------------------------------------------------------------------------------------------
# Gradients

GRAD_CASES = {
    "window-dead-gqa4-f32": (
        Case(b=1, sq=300, sk=17, hq=4, hk=1, d=64, window=(0, 5)),
        jnp.float32,
    ),
}


@pytest.mark.parametrize("case,dtype", [pytest.param(*v, id=k) for k, v in GRAD_CASES.items()])
def test_precision_fp8_gradients(case, dtype):
    """jit(vjp) of precision="fp8" (cotangents on out and lse): (1) exactly the ordinary backward
    at the unquantized inputs with the FP8 forward's out and lse as residuals (the contract);
    (2) close to plain attention's gradients (the float64 oracle's VJP), within what the FP8
    forward's out/lse error allows; (3) finite, dtypes of the inputs, dead rows' dq == 0."""
    x = make_inputs(case, dtype, seed_of(case, "fp8-grad"))
    kw = case.flash_kwargs()

    @jax.jit
    def fwd_bwd(q, k, v, dout, dlse):
        f = lambda q, k, v: flash_attention(q, k, v, **kw, precision="fp8", return_lse=True)
        (out, lse), vjp = jax.vjp(f, q, k, v)
        return (out, lse, *vjp((dout, dlse)))

    out, lse, dq, dk, dv = fwd_bwd(*x)
    for name, g, want in (("dq", dq, x.q), ("dk", dk, x.k), ("dv", dv, x.v)):
        assert g.shape == want.shape and g.dtype == want.dtype, f"{name}: {g.shape} {g.dtype}"
        assert_finite(name, g)
    # (1) the residual contract, against the reference backward run directly (float32 case only,
    # to save a compile: the rule does not depend on the dtype)
    if dtype == jnp.float32:
        sides = case.oracle_kwargs()
        want = reference_bwd(
            x.q,
            x.k,
            x.v,
            out,
            lse,
            x.dout,
            x.dlse,
            softmax_scale=1 / math.sqrt(case.d)
            if case.softmax_scale is None
            else case.softmax_scale,
            window_left=sides["window_left"],
            window_right=sides["window_right"],
            softcap=sides["softcap"],
        )
        for name, g, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want):
            atol = 1e-5 * np.abs(to_f64(w)).max() + 1e-7
            np.testing.assert_allclose(to_f64(g), to_f64(w), rtol=0, atol=atol, err_msg=name)
    # (2) close to ordinary attention's gradients
    ref = oracle(*x, **case.oracle_kwargs())
    for name, g, w in zip(("dq", "dk", "dv"), (dq, dk, dv), ref[2:]):
        e = to_f64(g) - w
        rms_rel, max_rel = _rms(e) / _rms(w), np.abs(e).max() / np.abs(w).max()
        print(f"{name}: rms rel {rms_rel:.3e} max rel {max_rel:.3e}")
        assert rms_rel <= FP8_GRAD_RMS_TOL and max_rel <= FP8_GRAD_MAX_TOL, (name, rms_rel, max_rel)
    check_dead_rows(case, out, lse, dq)


def test_precision_fp8_grad_of_scalar_loss_matches_plain():
    """jax.grad of a scalar loss (no lse cotangent) on bf16 inputs with softcap, through
    fp8.attention's knobs."""
    case = Case(b=1, sq=64, sk=200, hq=4, hk=2, d=64, causal=True, softcap=5.0, q_scale=3.0)
    x = make_inputs(case, jnp.bfloat16, seed_of("scalar-loss"))
    w = x.dout.astype(jnp.float32)

    def loss(attn, q, k, v):
        return (attn(q, k, v).astype(jnp.float32) * w).sum()

    attn = functools.partial(
        fp8.attention, causal=True, softcap=5.0, granularity="tensor", hadamard=False
    )
    ref = oracle(*x[:3], x.dout, **case.oracle_kwargs())
    grads = jax.jit(jax.grad(functools.partial(loss, attn), argnums=(0, 1, 2)))(*x[:3])
    for name, g, want in zip(("dq", "dk", "dv"), grads, ref[2:]):
        assert g.dtype == jnp.bfloat16
        assert_finite(name, g)
        rms_rel = _rms(to_f64(g) - want) / _rms(want)
        max_rel = np.abs(to_f64(g) - want).max() / np.abs(want).max()
        print(f"{name}: rms rel {rms_rel:.3e} max rel {max_rel:.3e}")
        assert rms_rel <= FP8_GRAD_RMS_TOL and max_rel <= FP8_GRAD_MAX_TOL, (name, rms_rel, max_rel)


def test_grad_through_fp8_inputs_raises_clear_type_error():
    x = make_fp8_inputs(_DS_CASE, seed_of("no-grad"), ("block", "block", "bh"))

    def loss(q8, qd):
        out = flash_attention(q8, x.k8, x.v8, q_descale=qd, k_descale=x.kd, v_descale=x.vd)
        return out.astype(jnp.float32).sum()

    for fn in (jax.jit(jax.grad(loss, argnums=0)), jax.jit(jax.grad(loss, argnums=1))):
        with pytest.raises(TypeError, match=r'float8_e4m3fn.*not supported.*precision="fp8"'):
            fn(x.q8, x.qd)


# --------------------------------------------------------------------------------------------
# Transforms and implementation choice on float8 inputs


def test_fp8_jit_with_traced_descales_and_vmap():
    """float8 inputs under jit with traced descales and vmap over an extra leading axis of inputs
    and descales: each example matches its own oracle tightly; precision="fp8" under vmap."""
    case = Case(b=2, sq=150, sk=200, hq=4, hk=2, d=32, causal=True)
    xs = [make_fp8_inputs(case, seed_of("vmap", i), ("block", "block", "bh")) for i in range(2)]
    g = lambda q8, k8, v8, qd, kd, vd: flash_attention(
        q8, k8, v8, causal=True, return_lse=True, q_descale=qd, k_descale=kd, v_descale=vd
    )
    stacked = [jnp.stack([x.args[i] for x in xs]) for i in range(6)]
    out, lse = jax.jit(jax.vmap(g))(*stacked)  # descales traced (and batched)
    assert out.shape == (2, case.b, case.sq, case.hq, case.d) and out.dtype == jnp.bfloat16
    for i, x in enumerate(xs):
        check_reference_fp8(f"vmap[{i}]", case, out[i], lse[i], x)
    ins = [make_inputs(case, jnp.bfloat16, seed_of("vmap-precision", i)) for i in range(2)]
    q, k, v = (jnp.stack([x[j] for x in ins]) for j in range(3))
    f = functools.partial(flash_attention, causal=True, precision="fp8", return_lse=True)
    vm = jax.jit(jax.vmap(f))(q, k, v)
    for i, x in enumerate(ins):
        ref = oracle(*x[:3], **case.oracle_kwargs())
        check_fp8_quantized_close(f"vmap precision=fp8 [{i}]", case, vm[0][i], vm[1][i], ref)


def test_fp8_sharded_inputs():
    """float8 inputs and descales sharded over batch and heads on the 8 virtual CPU devices:
    the same result as unsharded (the descales' batch/head axes sharded like q/k/v's)."""
    devices = np.array(jax.devices("cpu")[:8]).reshape(2, 4)
    mesh = jax.sharding.Mesh(devices, ("b", "h"))
    case = Case(b=2, sq=130, sk=140, hq=8, hk=4, d=32, causal=True)
    x = make_fp8_inputs(case, seed_of("sharded"), ("block", "block", "bh"))
    spec = lambda *s: NamedSharding(mesh, PartitionSpec(*s))
    put = [
        jax.device_put(x.q8, spec("b", None, "h")),
        jax.device_put(x.k8, spec("b", None, "h")),
        jax.device_put(x.v8, spec("b", None, "h")),
        jax.device_put(x.qd, spec("b", "h")),
        jax.device_put(x.kd, spec("b", "h")),
        jax.device_put(x.vd, spec("b", "h")),
    ]
    f = fp8_forward_fn(case, "auto")
    out, lse = f(*put)
    want, want_lse = f(*x.args)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want, np.float32))
    np.testing.assert_allclose(np.asarray(lse), np.asarray(want_lse), rtol=1e-6, atol=1e-6)
    check_reference_fp8("sharded", case, out, lse, x)


def test_cuda_unavailable_for_fp8_on_cpu_arrays():
    """Arrays on the CPU: implementation="cuda" cannot run, for float8 inputs and for
    precision="fp8", and says why; "auto" runs the reference path."""
    case = Case(b=1, sq=17, sk=33, hq=2, hk=1, d=64)
    x = make_fp8_inputs(case, seed_of("cuda-cpu"), ("block", "block", "bh"))
    with pytest.raises(UnsupportedError, match=r'implementation="cuda" cannot run: .+'):
        flash_attention(*x.args[:3], q_descale=x.qd, implementation="cuda")
    with pytest.raises(UnsupportedError, match=r'implementation="cuda" cannot run: .+'):
        make_config(*x.args[:3], fp8=True, implementation="cuda")
    q, k, v = make_inputs(case, jnp.bfloat16, 0)[:3]
    with pytest.raises(UnsupportedError, match=r'implementation="cuda" cannot run: .+'):
        flash_attention(q, k, v, precision="fp8", implementation="cuda")
    assert make_config(*x.args[:3], fp8=True).implementation == "reference"
    # float8 head dims the kernel cannot take are refused anywhere with the head-dim reason
    y = make_fp8_inputs(Case(b=1, sq=17, sk=33, hq=2, hk=1, d=36), 0, ("none", "none", "none"))
    with pytest.raises(UnsupportedError, match=r"head dims"):
        flash_attention(*y.args[:3], implementation="cuda")


# ============================================================================================
# GPU: the FP8 kernel (implementation="cuda") on a Hopper GPU
#
# Oracle: numpy float64 of the dequantized inputs (the real values the kernel is given). The
# kernel rounds P (scaled by 2^8 into [0, 256], so never subnormal for p >= 2^-14) to e4m3 for
# the PV product; the row sum l is accumulated from the unrounded fp32 P. So for output element
# (i, c), with pv_abs = sum_j p_ij |v_jc| / l_i (the oracle run on |v|):
#     |out - oracle| <= 2^-4 * pv_abs                       (P's rounding, RNE, rigorous)
#                     + 2 * eps_s * (pv_abs + |oracle|)      (logit error eps_s: FP8 WGMMA
#                                                            accumulation, exp2/log approximations)
#                     + 2^-8 * |oracle|                      (bf16 output rounding)
#                     + 2e-4 * max|oracle|                   (P below 2^-14, fp32 accumulation)
# with eps_s the lse tolerance: 1e-3 * max(1, max|lse|) + 1e-3 * softcap (lse is fp32: only the
# logits' error enters it). A numpy simulation of this rounding (2^8-scaled P to e4m3, bf16 out)
# on these inputs over d 64/128/256, lengths 1..4097, causal/window/softcap, reached at most 0.91
# of the first and third terms alone. Statistically P's rounding gives a relative RMSE of
# 0.6e-2..3.1e-2 (largest for long diffuse rows, e.g. Sq=1, Sk=4097), so RMSE <= 5e-2 * rms.
# (A flat "max err <= 0.04 * max|oracle|" would be too tight: the simulation reaches 0.040.)

FP8_KERNEL_RMS_TOL = 5e-2


def check_fp8_kernel(name, case: Case, out, lse, x: Fp8Inputs):
    """``lse=None``: a call without return_lse, whose kernel may normalize by row sums of the
    e4m3-rounded P (see FAST_SUM_CASES): the bound then has E4M3_REL * |oracle| more."""
    b, sq, hq, dv = case.b, case.sq, case.hq, case.d_v
    assert out.dtype == jnp.bfloat16 and out.shape == (b, sq, hq, dv), (
        f"{name}: {out.shape} {out.dtype}"
    )
    if lse is not None:
        assert lse.dtype == jnp.float32 and lse.shape == (b, hq, sq), (
            f"{name}: lse {lse.shape} {lse.dtype}"
        )
    both = oracle(x.q, x.k, np.concatenate([x.v, np.abs(x.v)], -1), **case.oracle_kwargs())
    ref, pv_abs = both.out[..., :dv], both.out[..., dv:]
    finite = both.lse[np.isfinite(both.lse)]
    eps_s = 1e-3 * max(1.0, float(np.abs(finite).max(initial=0.0))) + 1e-3 * (case.softcap or 0.0)
    a = to_f64(out)
    assert_finite(name, a)
    scale = float(np.abs(ref).max(initial=0.0))
    bound = (
        E4M3_REL * pv_abs
        + 2 * eps_s * (pv_abs + np.abs(ref))
        + BF16_REL * np.abs(ref)
        + 2e-4 * scale
        + 1e-6
    )
    if lse is None:
        bound = bound + E4M3_REL * (1 + 2**-3) * np.abs(ref)
    err = np.abs(a - ref)
    ratio = err / bound
    worst = np.unravel_index(np.argmax(ratio), ratio.shape)
    rms_rel = _rms(err) / max(_rms(ref), 1e-30)
    print(
        f"{name}: max err {err.max():.3e} ({err.max() / max(scale, 1e-30):.3e} of max|ref|), "
        f"max err/bound {ratio.max():.3f}, rms rel {rms_rel:.3e}"
    )
    assert ratio.max() <= 1.0, f"{name}: err {err[worst]:.3e} > bound {bound[worst]:.3e} at {worst}"
    assert rms_rel <= FP8_KERNEL_RMS_TOL, (
        f"{name}: RMSE {rms_rel:.3e} of rms(ref) > {FP8_KERNEL_RMS_TOL}"
    )
    if lse is not None:
        assert_lse(f"{name} lse", lse, both.lse, tol=eps_s)
    check_dead_rows(case, out, lse)


# Descale layouts cycled over the grid so every layout reaches the kernel.
LAYOUT_CYCLE = [
    ("block", "block", "bh"),
    ("tensor", "tensor", "tensor"),
    ("bh", "bh", "bh"),
    ("block_kv", "block", "tensor"),
    ("bhk", "tensor", "none"),
    ("block", "bh", "bh"),
    ("none", "none", "none"),
]

# d=72 is not a multiple of 16: the FP8 WGMMA kernel cannot take it, the simple fallback can.
# d=96 runs in the 128-wide instantiation with zero-filled columns.
GPU_HEAD_DIM_CASES = {
    f"d{d}-{'causal' if causal else 'full'}": Case(
        b=2, sq=113, sk=1000, hq=4, hk=1, d=d, causal=causal
    )
    for d in (64, 72, 96, 128, 256)
    for causal in (False, True)
}
GPU_SEQLEN_CASES = {
    f"sq{sq}-sk{sk}-{'causal' if causal else 'full'}": Case(
        b=1, sq=sq, sk=sk, hq=2, hk=1, d=128, causal=causal
    )
    for sq, sk, causal in [
        (1, 1, False),
        (1, 17, True),
        (17, 1, False),
        (17, 113, False),
        (113, 17, True),
        (1, 4097, False),
        (113, 4097, True),
        (1000, 1000, True),
        (4097, 4097, True),
        (4097, 113, True),  # 3984 fully masked rows
    ]
}
GPU_GQA_CASES = {
    "hq2-hk2": Case(b=2, sq=1000, sk=1000, hq=2, hk=2, d=128),
    "hq8-hk2-causal": Case(b=1, sq=1000, sk=1000, hq=8, hk=2, d=128, causal=True),
    "hq8-hk1": Case(b=1, sq=113, sk=1000, hq=8, hk=1, d=64),
    "hq8-hk1-d64-long": Case(b=1, sq=1000, sk=1000, hq=8, hk=1, d=64),
}
GPU_MASK_CASES = {
    "window_3_0": Case(b=1, sq=1000, sk=1000, hq=4, hk=2, d=64, window=(3, 0)),
    "window_0_5-dead": Case(b=1, sq=1000, sk=113, hq=4, hk=2, d=128, window=(0, 5)),
    "window_128_128": Case(b=1, sq=1000, sk=1000, hq=2, hk=1, d=256, window=(128, 128)),
    "causal_window_64": Case(
        b=1, sq=113, sk=1000, hq=4, hk=1, d=128, causal=True, window=(64, None)
    ),
}
GPU_SOFTCAP_CASES = {
    "softcap5-full": Case(b=1, sq=1000, sk=1000, hq=2, hk=1, d=128, softcap=5.0, q_scale=3.0),
    "softcap5-causal": Case(
        b=1, sq=1000, sk=1000, hq=4, hk=2, d=64, causal=True, softcap=5.0, q_scale=3.0
    ),
    "softcap30-window": Case(
        b=1, sq=113, sk=1000, hq=2, hk=1, d=256, window=(64, 0), softcap=30.0, q_scale=3.0
    ),
}
# The pre-pass side at head dims 96/128 is its own kernel (192-row tiles, 3 consumer warpgroups,
# serial GEMMs): query lengths off its 192-row grid, non-causal, windowed, softcapped, GQA.
GPU_PREPASS_CASES = {
    "d128-full": Case(b=1, sq=2500, sk=3000, hq=2, hk=1, d=128),
    "d128-window": Case(b=1, sq=2100, sk=2100, hq=1, hk=1, d=128, window=(100, 50)),
    "d128-softcap": Case(b=1, sq=1100, sk=1100, hq=4, hk=2, d=128, softcap=5.0, q_scale=3.0),
    "d96-gqa-causal": Case(b=2, sq=700, sk=900, hq=6, hk=2, d=96, causal=True),
}
# The split tail (csrc/kernels/hopper/fwd_sm90_fp8.h): where all tiles see the same keys (no mask,
# or one query block per head), the last round's tiles run as pieces of their key range merged in
# the workspace. On a 132-SM H100/H200: fewer tiles than SMs (3-6 pieces each; in-kernel and
# pre-pass V, softcap, GQA, d 256, causal decoding, a window over a cache), and 176 tiles of
# which the last 44 come in 2 pieces behind 132 whole ones.
GPU_SPLIT_CASES = {
    "few-tiles-d128-gqa": Case(b=1, sq=300, sk=2048, hq=8, hk=2, d=128),
    "few-tiles-d64-softcap": Case(
        b=1, sq=150, sk=1500, hq=4, hk=2, d=64, softcap=5.0, q_scale=3.0
    ),
    "few-tiles-d256": Case(b=1, sq=100, sk=2500, hq=4, hk=4, d=256),
    "tail-d128": Case(b=1, sq=2000, sk=1100, hq=16, hk=4, d=128),
    # a mask over one query block per head: decoding, a window over a cache
    "decode-causal-d128": Case(b=2, sq=1, sk=3000, hq=8, hk=2, d=128, causal=True),
    "window-d256": Case(b=1, sq=60, sk=2000, hq=4, hk=4, d=256, window=(1500, 0)),
    "chunk-causal-d64-softcap": Case(
        b=1, sq=100, sk=1500, hq=4, hk=1, d=64, causal=True, softcap=5.0, q_scale=3.0
    ),
}
# The Hopper kernel gets V K-major either by transposing it in the kernel or from a pre-pass
# (csrc/kernels/hopper/fwd_sm90_fp8.h): in the kernel while Sq * (Hq / Hk) <= 2048 (d <= 128;
# 1024 at d 96/128 without a mask) or 512 (d 256). Every native head dim has cases on both sides
# (e.g. d64: hq8-hk1 vs hq8-hk1-d64-long; d128: gqa-hq2-hk2 vs gqa-hq8-hk2-causal and prepass-*;
# d256: hdim-d256 vs window_128_128).
# int32-max windows mean unbounded (no index overflow in the kernels); last in GPU_CASES so the
# other cases keep their layouts and seeds.
GPU_HUGE_WINDOW_CASES = {
    "both": Case(b=1, sq=300, sk=1000, hq=4, hk=2, d=128, window=(2**31 - 1, 2**31 - 1)),
    "causal-left": Case(b=1, sq=1000, sk=300, hq=2, hk=1, d=256, causal=True, window=(2**31 - 1, None)),
}
GPU_CASES = {
    **{f"hdim-{k}": v for k, v in GPU_HEAD_DIM_CASES.items()},
    **{f"seqlen-{k}": v for k, v in GPU_SEQLEN_CASES.items()},
    **{f"gqa-{k}": v for k, v in GPU_GQA_CASES.items()},
    **{f"mask-{k}": v for k, v in GPU_MASK_CASES.items()},
    **{f"softcap-{k}": v for k, v in GPU_SOFTCAP_CASES.items()},
    **{f"prepass-{k}": v for k, v in GPU_PREPASS_CASES.items()},
    **{f"split-{k}": v for k, v in GPU_SPLIT_CASES.items()},
    **{f"huge-window-{k}": v for k, v in GPU_HUGE_WINDOW_CASES.items()},
}
GPU_PARAMS = [
    pytest.param(case, LAYOUT_CYCLE[i % len(LAYOUT_CYCLE)], id=name)
    for i, (name, case) in enumerate(GPU_CASES.items())
]


@pytest.mark.gpu
@pytest.mark.parametrize("case,layouts", GPU_PARAMS)
def test_gpu_fp8_forward(case, layouts):
    seed = seed_of(case, layouts, "gpu-fp8")
    x = make_fp8_inputs(case, seed, layouts)
    decoy = make_fp8_inputs(case, seed + 1, layouts)
    fn = fp8_forward_fn(case, "cuda")
    out, lse = run_poisoned(fn, x.args, decoy.args)
    check_fp8_kernel("cuda fp8", case, out, lse, x)


# Without return_lse (and no softcap) the pre-pass kernel at head dims 96/128 takes its row sums
# from the tensor cores (Fp8FwdParams::exact_lse, fwd_sm90_fp8_kernel.h): O = sum_j P'_ij
# v_j / sum_j P'_ij with P' the e4m3-rounded P, a convex combination again. With P' = p (1 + e_j),
# |e_j| <= 2^-4, and w the normalized p, its error from P's rounding is sum_j w_j (e_j - m) v_j /
# (1 + m), m = sum_j w_j e_j: at most 2^-4 (pv_abs + |out|), i.e. the exact kernel's bound plus
# E4M3_REL * |oracle| (with 1/8 slack for |out| vs |oracle|). These cases reach that kernel
# (pre-pass: Sq * (Hq / Hk) > 1024, or > 2048 with a mask) through its split tail, GQA, windows,
# causal and dead rows; the others run kernels that ignore the flag (d 64, d 256 on both V paths,
# softcap, in-kernel V at d 128), whose output must then equal the return_lse=True call's bit
# for bit. (The d 256 pre-pass kernel with these sums measured 9% slower: RESULTS.md, "FP8: row
# sums on the tensor cores".)
FAST_SUM_CASES = {
    "d128-full": (GPU_PREPASS_CASES["d128-full"], True),
    "d128-window": (GPU_PREPASS_CASES["d128-window"], True),
    "d96-gqa-causal": (GPU_PREPASS_CASES["d96-gqa-causal"], True),
    "d128-split-tail": (GPU_SPLIT_CASES["tail-d128"], True),
    "d128-gqa-causal": (GPU_GQA_CASES["hq8-hk2-causal"], True),
    "d128-4097-causal": (GPU_SEQLEN_CASES["sq4097-sk4097-causal"], True),
    "d128-dead-rows": (GPU_SEQLEN_CASES["sq4097-sk113-causal"], True),
    "d128-softcap": (GPU_PREPASS_CASES["d128-softcap"], False),
    "d128-in-kernel-v": (GPU_HEAD_DIM_CASES["d128-full"], False),
    "d64-long": (GPU_GQA_CASES["hq8-hk1-d64-long"], False),
    "d256-window": (GPU_MASK_CASES["window_128_128"], False),
    "d256-full-gqa": (Case(b=1, sq=700, sk=1500, hq=4, hk=2, d=256), False),
    "d256-in-kernel-v": (GPU_HEAD_DIM_CASES["d256-full"], False),
}


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case,fast", [pytest.param(*v, id=k) for k, v in FAST_SUM_CASES.items()]
)
def test_gpu_fp8_forward_without_lse(case, fast):
    layouts = ("block", "block", "bh")
    seed = seed_of(case, layouts, "gpu-fp8-no-lse")
    x = make_fp8_inputs(case, seed, layouts)
    decoy = make_fp8_inputs(case, seed + 1, layouts)

    def fwd(q8, k8, v8, qd, kd, vd):
        return flash_attention(
            q8, k8, v8, **case.flash_kwargs(), implementation="cuda",
            q_descale=qd, k_descale=kd, v_descale=vd,
        )

    out = run_poisoned(jax.jit(fwd), x.args, decoy.args)
    check_fp8_kernel("cuda fp8 without lse", case, out, None, x)
    with_lse, lse = fp8_forward_fn(case, "cuda")(*x.args)
    check_fp8_kernel("cuda fp8 with lse", case, with_lse, lse, x)
    same = np.array_equal(_bits(out), _bits(with_lse))
    # (the tensor-core sums round differently from the fp32 ones somewhere in every such case)
    assert same != fast, (
        f"fast={fast} but the outputs with and without lse are {'' if same else 'not '}identical"
    )


# Every FP8 kernel family with TRACED_BAD_DESCALES' shapes (b 2, hq 4 -> hk 2, >= 3 query
# blocks, >= 2 key blocks): in-kernel V (d 64, d 128), the pre-pass kernels (d 128 with and
# without the LSE, i.e. exact and tensor-core row sums; d 256), the split tail and the portable
# kernel (d 40).
GPU_TRACED_BAD_CASES = {
    "d64": (Case(b=2, sq=300, sk=200, hq=4, hk=2, d=64), True),
    "d128-in-kernel-v": (Case(b=2, sq=300, sk=200, hq=4, hk=2, d=128), True),
    "d128-prepass": (Case(b=2, sq=1100, sk=1300, hq=4, hk=2, d=128, causal=True), True),
    "d128-prepass-no-lse": (Case(b=2, sq=700, sk=900, hq=4, hk=2, d=128), False),
    "d128-split-no-lse": (Case(b=2, sq=400, sk=4096, hq=4, hk=2, d=128), False),
    "d256": (Case(b=2, sq=600, sk=700, hq=4, hk=2, d=256), True),
    "d40-portable": (Case(b=2, sq=300, sk=200, hq=4, hk=2, d=40), True),
}


@pytest.mark.gpu
@pytest.mark.parametrize("bad", list(TRACED_BAD_DESCALES))
@pytest.mark.parametrize(
    "case,return_lse", [pytest.param(*v, id=k) for k, v in GPU_TRACED_BAD_CASES.items()]
)
def test_gpu_traced_bad_descales_poison_their_heads_with_nan(case, return_lse, bad):
    x = make_fp8_inputs(case, seed_of(case, bad, "gpu-traced-bad"), ("block", "block", "bh"))
    check_traced_bad_descale(case, x, *TRACED_BAD_DESCALES[bad], implementation="cuda",
                             return_lse=return_lse)


@pytest.mark.gpu
def test_gpu_precision_fp8_without_lse_and_its_gradient():
    """precision="fp8" without return_lse (the fast-sum kernel at this size) is as close to the
    unquantized oracle as the call with return_lse (FP8_RMS_TOL, FP8_MAX_TOL), differs from that
    call's out only by the sums' rounding, and its gradient still reads the exact-LSE forward
    (bitwise the gradient through the return_lse=True call)."""
    case = Case(b=1, sq=2048, sk=2048, hq=4, hk=2, d=128, causal=True)
    rng = np.random.default_rng(seed_of(case, "precision-fp8-no-lse"))
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
               for s in ((1, 2048, 4, 128), (1, 2048, 2, 128), (1, 2048, 2, 128)))
    plain = jax.jit(functools.partial(flash_attention, causal=True, precision="fp8"))
    with_lse = jax.jit(
        functools.partial(flash_attention, causal=True, precision="fp8", return_lse=True)
    )
    out = plain(q, k, v)
    out2, lse2 = with_lse(q, k, v)
    ref = oracle(q, k, v, window_right=0)
    check_fp8_quantized_close("precision fp8 with lse", case, out2, lse2, ref)
    a = to_f64(out)
    assert_finite("precision fp8 without lse", a)
    for name, x in (("vs oracle", ref.out), ("vs with lse", to_f64(out2))):
        rms_rel = _rms(a - x) / _rms(x)
        max_rel = np.abs(a - x).max() / np.abs(x).max()
        print(f"precision fp8 without lse {name}: rms rel {rms_rel:.3e} max rel {max_rel:.3e}")
        tol = (FP8_RMS_TOL, FP8_MAX_TOL) if x is ref.out else (E4M3_REL / 2, 2 * E4M3_REL)
        assert rms_rel <= tol[0] and max_rel <= tol[1], (
            f"{name}: {rms_rel:.3e} / {max_rel:.3e} > {tol}"
        )
    assert not np.array_equal(_bits(out), _bits(out2)), "expected the fast-sum kernel without lse"
    w = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    loss = lambda f: (lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * w))
    g_plain = jax.jit(jax.grad(loss(plain), argnums=(0, 1, 2)))(q, k, v)
    first = lambda q, k, v: with_lse(q, k, v)[0]
    g_lse = jax.jit(jax.grad(loss(first), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", g_plain, g_lse):
        np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"d{name}")


def _bits(x) -> np.ndarray:
    a = np.asarray(x)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            Case(b=1, sq=4097, sk=4097, hq=8, hk=2, d=128, causal=True), id="gqa4-causal-4097"
        ),
        pytest.param(
            Case(b=2, sq=1000, sk=4097, hq=4, hk=1, d=256, window=(256, 0), softcap=30.0),
            id="d256-window-softcap",
        ),
        # split tail: whichever piece of a tile finishes last, the merge order is fixed
        pytest.param(Case(b=1, sq=2000, sk=1100, hq=16, hk=4, d=128), id="split-tail"),
        pytest.param(Case(b=1, sq=40, sk=4097, hq=4, hk=1, d=128), id="split-kv"),
    ],
)
def test_gpu_fp8_forward_is_deterministic(case):
    """Two runs of the forward on the same inputs (another call in between) are bit-identical."""
    x = make_fp8_inputs(case, seed_of(case, "det"), ("block", "block", "bh"))
    other = make_fp8_inputs(case, seed_of(case, "det") + 1, ("block", "block", "bh"))
    fn = fp8_forward_fn(case, "cuda").lower(*x.args).compile()
    first = [_bits(a) for a in jax.block_until_ready(fn(*x.args))]
    jax.block_until_ready(fn(*other.args))
    second = [_bits(a) for a in jax.block_until_ready(fn(*x.args))]
    for name, a, b in zip(("out", "lse"), first, second):
        diff = int((a != b).sum())
        assert diff == 0, f"{name}: {diff} of {a.size} elements differ between two runs"


# Key blocks whose logits jump above the rows' running max well after the first block: the
# kernel's online softmax must then move the max (and rescale O and the row sums) rather than
# keep it. With random keys the max settles within a few blocks, so these scale k's block
# descales along the keys (MOVING_MAX_FACTORS, per key block of n). "flat" instead repeats one
# key across each block: a row's scores are equal within a block (large row sums, no max move).
# "negative" gives some rows logits that are all negative (their block maxima too) and the
# others all positive, mixed within each warp's rows: the kernels' block max must be right on
# both sides of zero. Pre-pass kernels (serial GEMMs at d 128) and the in-kernel ones, causal,
# softcap.
RUNNING_MAX_CASES = {
    "d128-prepass": Case(b=1, sq=1100, sk=3000, hq=2, hk=1, d=128),
    "d128-prepass-causal": Case(b=1, sq=2500, sk=2500, hq=1, hk=1, d=128, causal=True),
    "d128-prepass-softcap": Case(b=1, sq=1100, sk=2000, hq=2, hk=1, d=128, softcap=20.0),
    "d128-in-kernel": Case(b=1, sq=300, sk=3000, hq=2, hk=1, d=128),
    "d64": Case(b=1, sq=1000, sk=2000, hq=2, hk=1, d=64),
    "d256": Case(b=1, sq=1000, sk=2000, hq=2, hk=1, d=256),
}


def _one_block(n: int, block: int, value: float) -> np.ndarray:
    factor = np.ones(n)
    factor[block] = value
    return factor


MOVING_MAX_FACTORS = {
    "ramp": lambda n: 1.0 + 0.5 * np.arange(n),  # every block's logits larger than the last
    "spike": lambda n: _one_block(n, max(n - 3, 1), 6.0),  # one late block 6x
    "late": lambda n: np.where(np.arange(n) < n // 2, 0.05, 3.0),  # first half tiny
    "jump": lambda n: _one_block(n, max(n - 2, 1), 100.0),  # hundreds of units above the max
    "flat": lambda n: np.ones(n),
    "negative": lambda n: np.ones(n),
    "flip": lambda n: np.ones(n),
}

# "negative": the first half of the head dims of every key are 16 (stored), those of a query +-16
# by row and head: q.k is then +-(d/2) 256 (stored units) with a spread of (d/2)^0.5 256 from the
# other half, 5.7 (d 64) to 11 (d 256) standard deviations, so a row's logits have one sign
# throughout; every third group of 4 rows (and the other groups in odd heads) is negative. (Every
# product stays as large as the random ones: larger ones would lose low bits in the FP8 tensor
# cores' accumulation and move the lse by more than its tolerance, in any FP8 kernel.)
# "flip": the same half of the dims, every query +16 and the keys +16 in even key blocks, -16 in
# odd ones: each row's logits are all positive in every other block and all negative in the
# rest, so blocks whose scores are all negative follow a positive running max (and precede it,
# where the kernel takes an odd block first).
NEGATIVE_VALUE = 16.0


def _moving_max_inputs(case: Case, profile: str, seed: int) -> Fp8Inputs:
    x = make_fp8_inputs(case, seed, ("block", "block", "bh"))
    kd = np.array(x.kd)  # (B, Hk, n)
    kd = (kd * MOVING_MAX_FACTORS[profile](kd.shape[-1])).astype(np.float32)
    k8 = x.k8
    if profile == "flat":
        k8 = np.array(k8)
        for b0 in range(0, case.sk, BLOCK):
            k8[:, b0 : b0 + BLOCK] = k8[:, b0 : b0 + 1]
    if profile in ("negative", "flip"):
        if profile == "negative":  # sign by (row, head)
            rows = np.arange(case.sq)[None, :, None]
            heads = np.arange(case.hq)[None, None, :]
            q_sign = np.where(((rows // 4) % 3 == 0) != (heads % 2 == 1), -1.0, 1.0)
            k_sign = np.ones(case.sk)
        else:  # sign by key block
            q_sign = np.ones((1, case.sq, case.hq))
            k_sign = np.where((np.arange(case.sk) // BLOCK) % 2 == 1, -1.0, 1.0)
        half = case.d // 2
        q8, k8 = np.array(x.q8), np.array(k8)
        q8[..., :half] = (NEGATIVE_VALUE * q_sign)[..., None].astype(q8.dtype)
        k8[..., :half] = (NEGATIVE_VALUE * k_sign)[None, :, None, None].astype(k8.dtype)
        q = q8.astype(np.float64) * expand_descale(x.qd, case.b, case.sq, case.hq)
        x = x._replace(q8=q8, q=q)
    k = np.asarray(k8).astype(np.float64) * expand_descale(kd, case.b, case.sk, case.hk)
    return x._replace(k8=k8, kd=kd, k=k)


@pytest.mark.gpu
@pytest.mark.parametrize("profile", list(MOVING_MAX_FACTORS))
@pytest.mark.parametrize("case", list(RUNNING_MAX_CASES.values()), ids=list(RUNNING_MAX_CASES))
def test_gpu_fp8_running_max_moves_after_first_block(case, profile):
    seed = seed_of(case, profile, "moving-max")
    x = _moving_max_inputs(case, profile, seed)
    decoy = make_fp8_inputs(case, seed + 1, ("block", "block", "bh"))
    out, lse = run_poisoned(fp8_forward_fn(case, "cuda"), x.args, decoy.args)
    check_fp8_kernel(f"cuda fp8 {profile}", case, out, lse, x)


@pytest.mark.gpu
def test_gpu_auto_picks_fp8_kernel_and_refuses_odd_head_dims():
    case = Case(b=1, sq=113, sk=1000, hq=4, hk=2, d=128, causal=True)
    x = make_fp8_inputs(case, seed_of("gpu-auto"), ("block", "block", "bh"))
    assert make_config(*x.args[:3], causal=True, fp8=True).implementation == "cuda"
    auto = fp8_forward_fn(case, "auto")(*x.args)
    cuda = fp8_forward_fn(case, "cuda")(*x.args)
    for a, b in zip(auto, cuda):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    # head dim 36 (not a multiple of 8): "cuda" refuses naming the head dims, "auto" runs the
    # reference path (exact up to bf16 rounding)
    odd = Case(b=1, sq=113, sk=300, hq=4, hk=2, d=36, causal=True)
    y = make_fp8_inputs(odd, seed_of("gpu-odd"), ("block", "block", "bh"))
    with pytest.raises(UnsupportedError, match=r"head dims"):
        flash_attention(*y.args[:3], causal=True, implementation="cuda")
    out, lse = fp8_forward_fn(odd, "auto")(*y.args)
    check_reference_fp8("auto d36", odd, out, lse, y)


@pytest.mark.gpu
def test_gpu_fp8_vmap_matches_loop():
    case = Case(b=2, sq=113, sk=1000, hq=4, hk=2, d=128, causal=True)
    xs = [make_fp8_inputs(case, seed_of("gpu-vmap", i), ("block", "block", "bh")) for i in range(3)]
    fn = fp8_forward_fn(case, "cuda")
    loop = [fn(*x.args) for x in xs]
    stacked = [jnp.stack([x.args[i] for x in xs]) for i in range(6)]
    out, lse = jax.jit(jax.vmap(fn))(*stacked)
    for i, (o, l) in enumerate(loop):
        o, got = np.asarray(o, np.float32), np.asarray(out[i], np.float32)
        atol = 2 * 2.0**-8 * max(1.0, float(np.abs(o).max()))  # batching may change scheduling
        assert np.isfinite(got).all() and np.abs(got - o).max() <= atol, i
        np.testing.assert_allclose(np.asarray(lse[i]), np.asarray(l), rtol=1e-5, atol=1e-5)
        check_fp8_kernel(f"vmap[{i}]", case, out[i], lse[i], xs[i])


def _on(x, device):
    return jax.tree_util.tree_map(lambda a: jax.device_put(a, device), x)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Case(b=2, sq=1000, sk=1000, hq=4, hk=2, d=128, causal=True), id="d128-causal"),
        pytest.param(
            Case(b=1, sq=113, sk=4097, hq=8, hk=1, d=64, softcap=5.0, q_scale=3.0), id="d64-softcap"
        ),
    ],
)
def test_gpu_precision_fp8_matches_cpu_path(case):
    """precision="fp8" on bf16 inputs: the GPU (FP8 kernel forward, bf16 CUDA backward) vs the
    CPU path (same quantization, float32 reference): they differ by P's rounding (RMSE <= 5e-2,
    see above) and the bf16 backward; both within the CPU tolerances of the unquantized oracle."""
    x = make_inputs(case, jnp.bfloat16, seed_of(case, "gpu-precision"))
    kw = case.flash_kwargs()

    def fwd_bwd(q, k, v, dout, dlse):
        f = lambda q, k, v: flash_attention(q, k, v, **kw, precision="fp8", return_lse=True)
        (out, lse), vjp = jax.vjp(f, q, k, v)
        return (out, lse, *vjp((dout, dlse)))

    gpu = jax.jit(fwd_bwd)(*x)
    cpu_dev = jax.devices("cpu")[0]
    with jax.default_device(cpu_dev):
        cpu = jax.jit(fwd_bwd)(*_on(tuple(x), cpu_dev))
    assert all(d.platform == "gpu" for d in gpu[0].devices())
    ref = oracle(*x, **case.oracle_kwargs())
    check_fp8_quantized_close("gpu", case, gpu[0], gpu[1], ref)
    check_fp8_quantized_close("cpu", case, cpu[0], cpu[1], ref)
    out_g, out_c = to_f64(gpu[0]), to_f64(cpu[0])
    assert _rms(out_g - out_c) <= FP8_KERNEL_RMS_TOL * _rms(out_c)
    finite = np.isfinite(to_f64(cpu[1]))
    lse_tol = 2e-3 * max(1.0, float(np.abs(to_f64(cpu[1])[finite]).max()))
    assert np.array_equal(np.isneginf(to_f64(gpu[1])), np.isneginf(to_f64(cpu[1])))
    assert np.abs(to_f64(gpu[1])[finite] - to_f64(cpu[1])[finite]).max() <= lse_tol
    for name, g, c, w in zip(("dq", "dk", "dv"), gpu[2:], cpu[2:], ref[2:]):
        assert g.dtype == jnp.bfloat16
        assert_finite(f"gpu {name}", g)
        e = to_f64(g) - w
        assert _rms(e) / _rms(w) <= FP8_GRAD_RMS_TOL, name
        assert np.abs(e).max() / np.abs(w).max() <= FP8_GRAD_MAX_TOL, name
        assert _rms(to_f64(g) - to_f64(c)) <= FP8_GRAD_RMS_TOL * _rms(to_f64(c)), name


# --------------------------------------------------------------------------------------------
# The second e4m3 term of q and v (fp8.attention(residual=...)) and the accuracy bound of the
# FP8 issue: q, k, v ~ N(0, 1) + N(0, 100) * Bernoulli(0.001), RMSE vs the float64 oracle <= 1e-2
# with block scales and the Hadamard rotation (the defaults).

ISSUE_RMSE = 1.0e-2


def _outlier_inputs(seed, shape):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        x = rng.standard_normal(shape)
        x += rng.normal(0.0, 10.0, shape) * (rng.random(shape) < 0.001)
        out.append(x.astype(np.float32))
    return out


def _abs_rmse(out, ref) -> float:
    a = to_f64(out)
    assert_finite("out", a)
    return _rms(a - ref)


def test_residual_default_by_head_dim_and_bad_values():
    """residual=None is residual=True up to head dim 64 and False above (bitwise the same call);
    bad values and head dims it cannot double are refused naming the argument."""
    for d, on in ((32, True), (64, True), (128, False)):
        case = Case(b=1, sq=130, sk=70, hq=2, hk=1, d=d, causal=True)
        q, k, v = make_inputs(case, jnp.bfloat16, seed_of("residual-default", d))[:3]
        def f(**kw):
            fn = jax.jit(functools.partial(fp8.attention, causal=True, **kw))
            return np.asarray(fn(q, k, v), np.float32)

        default = f()
        np.testing.assert_array_equal(default, f(residual=on))
        assert not np.array_equal(default, f(residual=not on)), d
        via_api = jax.jit(functools.partial(flash_attention, causal=True, precision="fp8"))
        np.testing.assert_array_equal(default, np.asarray(via_api(q, k, v), np.float32))
    q, k, v = make_inputs(Case(b=1, sq=8, sk=8, hq=2, hk=1, d=256), jnp.bfloat16, 0)[:3]
    with pytest.raises(ValueError, match=r"residual=True .* <= 128; got 256"):
        fp8.attention(q, k, v, residual=True)
    fp8.attention(q, k, v, residual=False)  # fine
    with pytest.raises(TypeError, match=r"residual must be None or a bool"):
        fp8.attention(q, k, v, residual="yes")
    # D <= 64 with Dv != D: the default leaves the second term off (it needs D == Dv) instead of
    # refusing an option the caller never set; asking for it is refused.
    case = Case(b=1, sq=40, sk=40, hq=2, hk=1, d=32, dv=48)
    q, k, v = make_inputs(case, jnp.bfloat16, seed_of("residual-dv"))[:3]
    out = flash_attention(q, k, v, precision="fp8", return_lse=True)
    check_fp8_quantized_close("precision fp8 d32 dv48", case, *out, oracle(q, k, v))
    np.testing.assert_array_equal(np.asarray(out[0], np.float32),
                                  np.asarray(fp8.attention(q, k, v, residual=False), np.float32))
    with pytest.raises(ValueError, match=r"residual=True .* equal .*got 32 and 48"):
        fp8.attention(q, k, v, residual=True)


@pytest.mark.parametrize("d", [32, 64, 128])
def test_residual_term_cuts_the_error_on_outliers(d):
    """The second term of q and v removes their rounding error: on the issue's outlier inputs the
    output RMSE drops (measured at d64: 1.3-1.7x over 4 seeds at S 512); both stay within the FP8
    tolerance. Gradients are unaffected (the backward never sees the quantization)."""
    q, k, v = _outlier_inputs(seed_of("residual-err", d), (1, 512, 2, d))
    ref = oracle(q, k, v).out
    errs = {}
    for res in (False, True):
        out = jax.jit(functools.partial(fp8.attention, residual=res))(q, k, v)
        assert out.shape == q.shape and out.dtype == jnp.float32
        errs[res] = _abs_rmse(out, ref)
        assert errs[res] <= FP8_RMS_TOL * _rms(ref), (res, errs)
    print(d, errs)
    assert errs[True] * 1.2 <= errs[False], errs


@pytest.mark.parametrize("d", [64, 128, 256])
def test_issue_accuracy_bound_on_outliers(d):
    """The issue's accuracy target on the CPU path (input quantization only; the GPU test below
    adds the kernel's P rounding): precision="fp8" with its defaults (block scales, Hadamard, the
    residual term at d <= 64), B 1, S 2048, 4 heads, mean RMSE over 2 seeds <= 1e-2. Measured
    (3 seeds): d64 7.5e-3..9.7e-3, d128 7.2e-3..7.9e-3, d256 5.9e-3..6.5e-3; one term at d64:
    ~1.4e-2."""
    errs = []
    for seed in range(2):
        q, k, v = _outlier_inputs(seed_of("issue-acc", d, seed), (1, 2048, 4, d))
        ref = oracle(q, k, v).out
        out = jax.jit(functools.partial(flash_attention, precision="fp8"))(q, k, v)
        errs.append(_abs_rmse(out, ref))
    print(d, errs)
    assert np.mean(errs) <= ISSUE_RMSE, errs


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128, 256])
def test_gpu_issue_accuracy_bound_on_outliers(d):
    """The same bound through the FP8 kernel (which also rounds P to e4m3), inputs on the GPU."""
    errs = []
    for seed in range(2):
        q, k, v = _outlier_inputs(seed_of("issue-acc", d, seed), (1, 2048, 4, d))
        ref = oracle(q, k, v).out
        qg, kg, vg = (jnp.asarray(x) for x in (q, k, v))
        fn = functools.partial(flash_attention, precision="fp8", implementation="cuda")
        out = jax.jit(fn)(qg, kg, vg)
        assert all(dev.platform == "gpu" for dev in out.devices())
        errs.append(_abs_rmse(out, ref))
    print(d, errs)
    assert np.mean(errs) <= ISSUE_RMSE, errs

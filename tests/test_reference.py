"""The pure-JAX reference path vs a float64 oracle: forward (out, lse) and gradients (dq, dk, dv).

Every numeric test runs ``flash_attention(..., implementation="reference")`` forward and backward
(cotangents on both ``out`` and ``lse``) and compares with the hand-written numpy float64 oracle in
``_oracle.py``, which is itself checked against ``jax.vjp`` of ``naive_attention`` under x64 here.
float32 inputs get a tight tolerance (1e-5 of the output scale, 2e-5 for gradients); bf16/fp16
inputs get the FA3 rule against plain same-dtype attention.

The grid is not a cartesian product (the CPU suite must stay fast): head dims at one shape,
(Sq, Sk) pairs at one head dim, GQA ratios, mask kinds at a few shapes, softcap, low precision,
and the blockwise path with small KV blocks so the online softmax crosses many block boundaries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracle import (
    Case,
    assert_lse,
    assert_tight,
    check_backward,
    check_dead_rows,
    make_inputs,
    oracle,
    seed_of,
)

from jax_flash3 import flash_attention
from jax_flash3.reference import naive_attention, reference_bwd, reference_fwd

REF = "reference"


@pytest.fixture(autouse=True)
def _run_on_cpu():
    """These are the CPU tests: pin them to the host even on a GPU machine (fp32 matmuls exact,
    no TF32, and the reference path's CPU compile times)."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def check_both(case: Case, dtype=jnp.float32):
    """Forward and backward (one jit) vs the oracle; the seed comes from the case itself."""
    check_backward(case, dtype, REF, seed_of(case, str(jnp.dtype(dtype))))


# --------------------------------------------------------------------------------------------
# Head dims (D == Dv and D != Dv), one shape


@pytest.mark.parametrize("d", [32, 64, 80, 96, 128, 256])
def test_head_dims(d):
    check_both(Case(b=2, sq=17, sk=128, hq=4, hk=2, d=d, causal=True))


@pytest.mark.parametrize("d,dv", [(64, 32), (32, 128), (256, 80)])
def test_value_head_dim_differs(d, dv):
    check_both(Case(b=1, sq=33, sk=47, hq=2, hk=1, d=d, dv=dv, causal=True))


# --------------------------------------------------------------------------------------------
# Sequence lengths (Sq != Sk included; causal with Sq > Sk has rows that see nothing)

LENGTHS = [1, 17, 128, 1000]
# Every (Sq, Sk) pair causal; the non-causal pass on the extremes only (masking is what varies).
SEQLEN_CASES = [(sq, sk, True) for sq in LENGTHS for sk in LENGTHS] + [
    (sq, sk, False) for sq, sk in [(1, 1), (1, 1000), (1000, 1), (17, 128), (128, 17), (1000, 1000)]
]


@pytest.mark.parametrize(
    "sq,sk,causal",
    SEQLEN_CASES,
    ids=[f"sq{a}-sk{b}-{'causal' if c else 'full'}" for a, b, c in SEQLEN_CASES],
)
def test_seqlens(sq, sk, causal):
    check_both(Case(b=1, sq=sq, sk=sk, hq=2, hk=1, d=32, causal=causal))


# --------------------------------------------------------------------------------------------
# GQA / MQA


@pytest.mark.parametrize(
    "ratio,hk,causal",
    [(1, 2, False), (2, 2, True), (4, 2, False), (8, 2, True), (8, 1, False), (4, 1, True)],
    ids=lambda x: str(x),
)
def test_gqa(ratio, hk, causal):
    check_both(Case(b=2, sq=40, sk=23, hq=ratio * hk, hk=hk, d=64, causal=causal))


# --------------------------------------------------------------------------------------------
# Masks: causal, local windows (one-sided, two-sided, unbounded sides), causal + window

MASKS = {
    "none": (False, None),
    "causal": (True, None),
    "window_3_0": (False, (3, 0)),
    "window_0_5": (False, (0, 5)),
    "window_16_none": (False, (16, None)),
    "window_none_16": (False, (None, 16)),
    "window_-1_4": (False, (-1, 4)),
    "window_0_0": (False, (0, 0)),
    "window_7_9": (False, (7, 9)),
    "causal_window_8": (True, (8, None)),
    "causal_window_8_5": (True, (8, 5)),  # causal forces right = 0
}


@pytest.mark.parametrize("sq,sk", [(17, 128), (128, 17), (113, 113)], ids=lambda s: str(s))
@pytest.mark.parametrize("mask", [m for m in MASKS if m not in ("none", "causal")])
def test_masks(mask, sq, sk):
    causal, window = MASKS[mask]
    check_both(Case(b=1, sq=sq, sk=sk, hq=2, hk=1, d=32, causal=causal, window=window))


@pytest.mark.parametrize(
    "causal,window",
    [(False, (0, 5)), (True, (3, None)), (False, (20, 0))],
    ids=["window_0_5", "causal_window_3", "window_20_0"],
)
def test_long_query_short_key_masks(causal, window):
    """Sq=1000 over Sk=128: most rows see nothing, the rest see a sliding band."""
    check_both(Case(b=1, sq=1000, sk=128, hq=2, hk=1, d=32, causal=causal, window=window))


@pytest.mark.parametrize(
    "causal,window",
    [(False, (2**31 - 1, 2**31 - 1)), (True, (2**31 - 1, None)), (False, (2**40, 3))],
    ids=["int32max_both", "causal_int32max_left", "huge_left_right_3"],
)
def test_huge_windows_mean_unbounded(causal, window):
    """Window sides of 2**31 - 1 or more span every key (no int32 overflow of row + window)."""
    check_both(Case(b=1, sq=113, sk=300, hq=2, hk=1, d=32, causal=causal, window=window))


# --------------------------------------------------------------------------------------------
# Softcap (and a non-default softmax_scale), logits pushed into tanh's nonlinear range


@pytest.mark.parametrize("mask", ["none", "causal", "window_16_none"])
@pytest.mark.parametrize("softcap", [1.0, 30.0])
def test_softcap(softcap, mask):
    causal, window = MASKS[mask]
    check_both(
        Case(
            b=1,
            sq=64,
            sk=100,
            hq=4,
            hk=2,
            d=64,
            causal=causal,
            window=window,
            softcap=softcap,
            q_scale=3.0,
        )
    )


@pytest.mark.parametrize("softmax_scale", [0.05, 2.0])
def test_softmax_scale(softmax_scale):
    check_both(Case(b=1, sq=50, sk=70, hq=2, hk=1, d=64, causal=True, softmax_scale=softmax_scale))


# --------------------------------------------------------------------------------------------
# bf16 / fp16 on the reference path: the FA3 rule against plain same-dtype attention

LOW_CASES = {
    "gqa_causal": Case(b=2, sq=113, sk=128, hq=4, hk=1, d=64, causal=True),
    "window_softcap": Case(
        b=1, sq=100, sk=77, hq=2, hk=2, d=128, window=(16, 4), softcap=5.0, q_scale=3.0
    ),
    "dead_rows": Case(b=1, sq=128, sk=17, hq=2, hk=1, d=32, causal=True),
    "long": Case(b=1, sq=17, sk=1000, hq=2, hk=1, d=80),
}


@pytest.mark.parametrize("case", list(LOW_CASES))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "fp16"])
def test_low_precision(dtype, case):
    check_both(LOW_CASES[case], dtype)


# --------------------------------------------------------------------------------------------
# Fully masked rows: out 0 exactly, lse -inf, gradients finite and dq 0 on those rows


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "case",
    [
        Case(b=1, sq=64, sk=16, hq=4, hk=2, d=32, causal=True),
        Case(b=2, sq=40, sk=8, hq=2, hk=1, d=64, window=(0, 2)),
        Case(b=1, sq=33, sk=1, hq=2, hk=2, d=32, causal=True, softcap=2.0),
    ],
    ids=["causal_sq_gt_sk", "window_0_2", "single_key_softcap"],
)
def test_fully_masked_rows(case, dtype):
    dead = case.dead_rows()
    assert dead.any() and not dead.all()
    seed = seed_of(case, str(jnp.dtype(dtype)))
    x = make_inputs(case, dtype, seed)

    def loss(q, k, v):
        out, lse = flash_attention(
            q, k, v, **case.flash_kwargs(), return_lse=True, implementation=REF
        )
        # Only finite lse entries enter the loss; the -inf ones must not poison the gradient.
        return (out.astype(jnp.float32) * x.dout).sum() + jnp.where(
            jnp.isfinite(lse), lse * x.dlse, 0.0
        ).sum()

    out, lse = flash_attention(*x[:3], **case.flash_kwargs(), return_lse=True, implementation=REF)
    dq, dk, dv = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*x[:3])
    for name, g in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert np.isfinite(np.asarray(g, np.float32)).all(), f"{name} has NaN/inf"
    check_dead_rows(case, out, lse, dq)
    assert np.abs(np.asarray(out, np.float32)[:, ~dead]).max() > 0  # rows that see keys are written


# --------------------------------------------------------------------------------------------
# The blockwise reference with small KV blocks: many online-softmax rescales, padded last block


@pytest.mark.parametrize("block_k", [1, 7, 16])
@pytest.mark.parametrize("mask", ["window_7_9", "causal_window_8"])
def test_reference_block_sizes(block_k, mask):
    causal, window = MASKS[mask]
    case = Case(
        b=1, sq=45, sk=38, hq=4, hk=2, d=32, causal=causal, window=window, softcap=4.0, q_scale=2.0
    )
    x = make_inputs(case, jnp.float32, seed_of(case, block_k))
    kw = case.oracle_kwargs()
    kw["softmax_scale"] = 1.0 / np.sqrt(case.d)
    out, lse = reference_fwd(*x[:3], **kw, block_k=block_k)
    dq, dk, dv = reference_bwd(*x[:3], out, lse, x.dout, x.dlse, **kw, block_k=block_k)
    ref = oracle(*x, **kw)
    assert_tight("out", out, ref.out)
    assert_lse(
        "lse", lse, ref.lse, tol=1e-5 * max(1.0, float(np.abs(ref.lse[np.isfinite(ref.lse)]).max()))
    )
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), ref[2:]):
        assert_tight(name, got, want, rtol=2e-5)
    check_dead_rows(case, out, lse, dq)


# --------------------------------------------------------------------------------------------
# The oracle itself vs jax.vjp of naive_attention in float64, and the reference path vs jax.grad
# of naive_attention directly


def _x64():
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()


ORACLE_CASES = [
    Case(b=2, sq=17, sk=30, hq=4, hk=2, d=32),
    Case(b=1, sq=40, sk=12, hq=2, hk=1, d=16, dv=24, causal=True),  # rows that see nothing
    Case(
        b=1,
        sq=31,
        sk=31,
        hq=4,
        hk=1,
        d=32,
        window=(5, 2),
        softcap=3.0,
        softmax_scale=0.4,
        q_scale=3.0,
    ),
]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=["gqa", "causal_dead_rows", "window_softcap"])
def test_oracle_matches_naive_autodiff_x64(case):
    x = make_inputs(case, jnp.float32, seed_of(case, "oracle"))
    host = [np.asarray(a, np.float64) for a in x]
    ref = oracle(*host, **case.oracle_kwargs())
    with _x64():
        args64 = [jnp.asarray(a, jnp.float64) for a in host]
        assert args64[0].dtype == jnp.float64

        def f(q, k, v):
            return naive_attention(q, k, v, return_lse=True, **case.oracle_kwargs())

        @jax.jit
        def fwd_bwd(q, k, v, dout, dlse):
            (out, lse), vjp = jax.vjp(f, q, k, v)
            return out, lse, vjp((dout, dlse))

        out, lse, grads = fwd_bwd(*args64)
        out, lse = np.asarray(out), np.asarray(lse)
        grads = [np.asarray(g) for g in grads]
    np.testing.assert_allclose(ref.out, out, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(ref.lse), np.isneginf(lse))
    fin = np.isfinite(ref.lse)
    np.testing.assert_allclose(ref.lse[fin], lse[fin], rtol=1e-12, atol=1e-12)
    for name, want, got in zip(("dq", "dk", "dv"), ref[2:], grads):
        np.testing.assert_allclose(want, got, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", ORACLE_CASES[:2], ids=["gqa", "causal_dead_rows"])
def test_reference_grad_matches_naive_grad_x64(case):
    """jax.grad of a scalar loss through flash_attention (float32) vs jax.grad of naive (f64)."""
    x = make_inputs(case, jnp.float32, seed_of(case, "grad"))
    w = np.asarray(x.dout, np.float64)

    def loss_flash(q, k, v):
        return (flash_attention(q, k, v, **case.flash_kwargs(), implementation=REF) * x.dout).sum()

    got = jax.jit(jax.grad(loss_flash, argnums=(0, 1, 2)))(*x[:3])
    with _x64():

        def loss_naive(q, k, v):
            return (naive_attention(q, k, v, **case.oracle_kwargs()) * jnp.asarray(w)).sum()

        want = jax.jit(jax.grad(loss_naive, argnums=(0, 1, 2)))(
            *(jnp.asarray(np.asarray(a, np.float64)) for a in x[:3])
        )
        want = [np.asarray(g) for g in want]
    for name, g, r in zip(("dq", "dk", "dv"), got, want):
        assert_tight(name, g, r, rtol=2e-5)


def test_oracle_is_not_trivially_zero():
    """Guard against a vacuous oracle: outputs and gradients are far from 0 and from each other."""
    case = Case(b=1, sq=20, sk=25, hq=2, hk=1, d=32, causal=True)
    x = make_inputs(case, jnp.float32, seed_of("nonzero"))
    ref = oracle(*x, **case.oracle_kwargs())
    for a in ref:  # out, lse, dq, dk, dv
        assert a is not None
        assert np.abs(a[np.isfinite(a)]).max() > 1e-2
    bad = oracle(*x, **Case(b=1, sq=20, sk=25, hq=2, hk=1, d=32).oracle_kwargs())
    assert np.abs(bad.out - ref.out).max() > 1e-2  # the mask matters

"""NaN in the inputs propagates to exactly the rows it reaches, on every path.

A NaN in query row i makes output row i and its lse NaN; a NaN in key j makes every row that sees
key j NaN (and only those), as ``jax.nn.dot_product_attention`` does. Such a row is not mistaken
for a row that sees no key (output 0, lse -inf): that would hide a diverging model behind
plausible zeros. Rows the NaN does not reach are unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracle import seed_of

from jax_flash3 import flash_attention, fp8
from jax_flash3.ring import _merge


def _inputs(seed, b, sq, sk, hq, hk, d, dtype):
    rng = np.random.default_rng(seed)
    return tuple(
        jnp.asarray(rng.standard_normal(s), dtype)
        for s in ((b, sq, hq, d), (b, sk, hk, d), (b, sk, hk, d))
    )


def _f32(x):
    return np.asarray(jnp.asarray(x, jnp.float32))


def check_nan_rows(fn, q, k, v, exact=True):
    """``fn(q, k, v) -> (out (B, Sq, Hq, D), lse (B, Hq, Sq))``, causal with Sq == Sk (query i sees
    keys j <= i). One NaN in a query row, then one NaN in a key: the rows it reaches are NaN in out
    and lse, every other row equals the clean call's (bitwise if ``exact``)."""
    b, sq, hq, _ = q.shape
    hk = k.shape[2]
    g = hq // hk
    out0, lse0 = (_f32(x) for x in fn(q, k, v))
    assert np.isfinite(out0).all() and np.isfinite(lse0).all()

    bi, i, h = b - 1, sq // 2 + 3, hq - 1
    j, hj = sq // 3, 0
    cases = {
        "query": ((q.at[bi, i, h, 1].set(jnp.nan), k, v), [(bi, r, h) for r in [i]]),
        "key": ((q, k.at[0, j, hj, 2].set(jnp.nan), v),
                [(0, r, hh) for r in range(j, sq) for hh in range(hj * g, (hj + 1) * g)]),
    }
    for name, (args, reached) in cases.items():
        out, lse = (_f32(x) for x in fn(*args))
        hit = np.zeros((b, sq, hq), bool)
        for bb, r, hh in reached:
            hit[bb, r, hh] = True
        assert np.isnan(out[hit]).all(), f"NaN in the {name}: a reached row is not all NaN"
        lse_hit = hit.transpose(0, 2, 1)
        assert np.isnan(lse[lse_hit]).all(), f"NaN in the {name}: a reached row's lse is not NaN"
        if exact:
            np.testing.assert_array_equal(out[~hit], out0[~hit])
            np.testing.assert_array_equal(lse[~lse_hit], lse0[~lse_hit])
        else:
            assert np.isfinite(out[~hit]).all() and np.isfinite(lse[~lse_hit]).all()
            np.testing.assert_allclose(out[~hit], out0[~hit], rtol=2e-2, atol=2e-2)
            np.testing.assert_allclose(lse[~lse_hit], lse0[~lse_hit], rtol=1e-3, atol=1e-3)


def _fa(**kw):
    return jax.jit(functools.partial(flash_attention, causal=True, return_lse=True, **kw))


def _fp8_inputs(q, k, v):
    (q8, qd), (k8, kd), (v8, vd) = fp8.quantize(q), fp8.quantize(k), fp8.quantize(v, granularity="head")
    return (q8, k8, v8), dict(q_descale=qd, k_descale=kd, v_descale=vd)


def _fp8_fn(descales, **kw):
    f = _fa(**kw)
    return lambda q8, k8, v8: f(q8, k8, v8, **descales)


# --------------------------------------------------------------------------------------------
# CPU: the reference path, the FP8 reference path, the ring's merge, and jax.nn for comparison


@pytest.fixture
def _cpu():
    with jax.default_device(jax.devices("cpu")[0]):
        yield


@pytest.mark.usefixtures("_cpu")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_reference_path_propagates_nan(dtype):
    q, k, v = _inputs(seed_of("nan-ref", str(dtype)), 2, 70, 70, 4, 2, 16, dtype)
    check_nan_rows(_fa(implementation="reference"), q, k, v)


@pytest.mark.usefixtures("_cpu")
def test_jax_nn_dot_product_attention_agrees_on_which_rows_turn_nan():
    """The rows check_nan_rows expects NaN are the ones jax.nn.dot_product_attention makes NaN."""
    q, k, v = _inputs(seed_of("nan-jaxnn"), 2, 40, 40, 4, 2, 16, jnp.float32)
    ours = _fa(implementation="reference")

    def theirs(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True), ours(q, k, v)[1]

    check_nan_rows(jax.jit(theirs), q, k, v, exact=False)


@pytest.mark.usefixtures("_cpu")
def test_fp8_reference_path_propagates_nan_in_fp8_data():
    q, k, v = _inputs(seed_of("nan-fp8-ref"), 2, 150, 150, 4, 2, 32, jnp.float32)
    (q8, k8, v8), descales = _fp8_inputs(q, k, v)
    check_nan_rows(_fp8_fn(descales, implementation="reference"), q8, k8, v8)


@pytest.mark.usefixtures("_cpu")
def test_precision_fp8_propagates_nan_from_bf16_inputs():
    q, k, v = _inputs(seed_of("nan-precision-fp8"), 1, 130, 130, 4, 2, 32, jnp.bfloat16)
    check_nan_rows(_fa(implementation="reference", precision="fp8"), q, k, v)


@pytest.mark.usefixtures("_cpu")
def test_ring_merge_keeps_nan_and_empty_rows_apart():
    """_merge of per-hop (out, lse): a NaN lse or out in one hop gives a NaN row, a row that no hop
    saw (lse -inf everywhere) gives 0 / -inf, and the others are the softmax-weighted average."""
    rng = np.random.default_rng(seed_of("nan-ring-merge"))
    n, b, s, h, d = 3, 1, 4, 2, 8
    outs = rng.standard_normal((n, b, s, h, d)).astype(np.float32)
    lses = rng.standard_normal((n, b, h, s)).astype(np.float32)
    lses[:, 0, 0, 1] = -np.inf  # row 1 of head 0: seen by no hop
    lses[1, 0, 1, 2] = np.nan   # row 2 of head 1: NaN lse in one hop
    outs[2, 0, 3, 0, 5] = np.nan  # row 3 of head 0: NaN output in one hop
    out, lse = (np.asarray(x) for x in _merge([(jnp.asarray(outs), jnp.asarray(lses))]))
    assert (out[0, 1, 0] == 0).all() and lse[0, 0, 1] == -np.inf
    assert np.isnan(out[0, 2, 1]).all() and np.isnan(lse[0, 1, 2])
    assert np.isnan(out[0, 3, 0, 5]) and np.isfinite(lse[0, 0, 3])
    w = np.exp(lses[:, 0, 1, 0] - lses[:, 0, 1, 0].max())
    np.testing.assert_allclose(out[0, 0, 1], (w[:, None] * outs[:, 0, 0, 1]).sum(0) / w.sum(),
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# GPU: the Hopper kernels (bf16/fp16 forward at every head-dim family, FP8 with and without the
# LSE, i.e. exact and tensor-core row sums) and the portable kernels


GPU_BF16_CASES = {  # (b, s, hq, hk, d)
    "d64": (2, 300, 4, 2, 64),
    "d128": (2, 300, 4, 2, 128),
    "d256": (1, 300, 4, 2, 256),
    "d40-portable": (1, 200, 4, 2, 40),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dims", list(GPU_BF16_CASES.values()), ids=list(GPU_BF16_CASES))
def test_gpu_kernels_propagate_nan(dims):
    b, s, hq, hk, d = dims
    q, k, v = _inputs(seed_of("nan-gpu", dims), b, s, s, hq, hk, d, jnp.bfloat16)
    check_nan_rows(_fa(implementation="cuda"), q, k, v, exact=False)


GPU_FP8_CASES = {  # (b, s, hq, hk, d, return_lse): s * hq / hk > 2048 runs the pre-pass kernels
    "d128-in-kernel-v": (2, 300, 4, 2, 128, True),
    "d128-prepass": (1, 1100, 4, 2, 128, True),
    "d128-prepass-fast-sum": (1, 1100, 4, 2, 128, False),
    "d64": (2, 300, 4, 2, 64, True),
    "d256-prepass": (1, 1100, 4, 2, 256, True),
    "d40-portable": (1, 200, 4, 2, 40, True),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dims", list(GPU_FP8_CASES.values()), ids=list(GPU_FP8_CASES))
def test_gpu_fp8_kernels_propagate_nan(dims):
    b, s, hq, hk, d, return_lse = dims
    q, k, v = _inputs(seed_of("nan-gpu-fp8", dims), b, s, s, hq, hk, d, jnp.float32)
    (q8, k8, v8), descales = _fp8_inputs(q, k, v)
    fn = _fp8_fn(descales, implementation="cuda")
    if not return_lse:  # the output of the fast-sum kernel; the lse of the exact one
        plain = jax.jit(functools.partial(flash_attention, causal=True, implementation="cuda",
                                          **descales))
        fn = lambda q8, k8, v8, f=fn: (plain(q8, k8, v8), f(q8, k8, v8)[1])
    check_nan_rows(fn, q8, k8, v8, exact=False)

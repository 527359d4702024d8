"""The public API: validation errors, defaults, return_lse, implementation choice, and transforms
(jit, grad, vmap, checkpoint, check_grads). CPU only; numerics grids live in test_reference.py."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracle import Case, assert_tight, make_inputs, oracle, seed_of, visible
from jax.test_util import check_grads

import jax_flash3
from jax_flash3 import UnsupportedError, flash_attention, make_config

REF = "reference"


@pytest.fixture(autouse=True)
def _run_on_cpu():
    """These are the CPU tests: pin them to the host even on a GPU machine (fp32 matmuls exact,
    no TF32, and the reference path's CPU compile times)."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def qkv(b=1, sq=8, sk=8, hq=2, hk=1, d=16, dv=None, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    dv = d if dv is None else dv
    return (
        jnp.asarray(rng.standard_normal((b, sq, hq, d)), dtype),
        jnp.asarray(rng.standard_normal((b, sk, hk, d)), dtype),
        jnp.asarray(rng.standard_normal((b, sk, hk, dv)), dtype),
    )


def exactly_equal(a, b) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    )


# --------------------------------------------------------------------------------------------
# Validation: every error names the argument, and fires before anything is traced


@pytest.fixture
def no_kernel(monkeypatch):
    """Make any attempt to trace attention fail loudly: validation must come first."""

    def boom(*args, **kwargs):
        raise AssertionError("attention was traced before the input was validated")

    monkeypatch.setattr(jax_flash3._sharding, "fwd", boom)
    monkeypatch.setattr(jax_flash3._sharding, "bwd", boom)


def _shape_cases():
    q, k, v = qkv(b=2, sq=8, sk=6, hq=4, hk=2, d=16)
    f32 = jnp.float32
    return {
        "q_rank3": ((q[0], k, v), {}, ValueError, r"\bq must have rank 4"),
        "k_rank5": ((q, k[None], v), {}, ValueError, r"\bk must have rank 4"),
        "v_rank2": ((q, k, v[0, 0]), {}, ValueError, r"\bv must have rank 4"),
        "q_not_array": ((q.tolist(), k, v), {}, TypeError, r"\bq must be an array"),
        "batch_mismatch": ((q[:1], k, v), {}, ValueError, r"batch"),
        "kv_seq_mismatch": ((q, k, v[:, :5]), {}, ValueError, r"\bk and v\b.*sequence length"),
        "kv_heads_mismatch": ((q, k, v[:, :, :1]), {}, ValueError, r"\bk and v\b.*heads"),
        "qk_head_dim_mismatch": ((q, k[..., :8], v), {}, ValueError, r"\bq and k\b.*head_dim"),
        "hq_not_multiple_of_hk": (
            (q[:, :, :3], k, v),
            {},
            ValueError,
            r"query heads \(3\).*multiple.*key/value heads \(2\)",
        ),
        "zero_length": ((q[:, :0], k, v), {}, ValueError, r"sequence lengths must be >= 1"),
        "d_too_big": (
            (
                jnp.zeros((1, 4, 2, 264), f32),
                jnp.zeros((1, 4, 2, 264), f32),
                jnp.zeros((1, 4, 2, 16), f32),
            ),
            {},
            ValueError,
            r"head_dim of q/k must be in \[1, 256\], got 264",
        ),
        "dv_too_big": (
            (
                jnp.zeros((1, 4, 2, 16), f32),
                jnp.zeros((1, 4, 2, 16), f32),
                jnp.zeros((1, 4, 2, 512), f32),
            ),
            {},
            ValueError,
            r"head_dim of v must be in \[1, 256\], got 512",
        ),
        "dtype_int32": (
            tuple(x.astype(jnp.int32) for x in (q, k, v)),
            {},
            TypeError,
            r"dtype must be bfloat16 or float16.*got int32",
        ),
        "dtype_float64": (
            tuple(np.asarray(x, np.float64) for x in (q, k, v)),
            {},
            TypeError,
            r"dtype must be bfloat16 or float16.*got float64",
        ),
        "mixed_dtypes": (
            (q, k.astype(jnp.bfloat16), v),
            {},
            TypeError,
            r"q, k and v must share one dtype.*k=bfloat16",
        ),
    }


SHAPE_CASES = _shape_cases()


@pytest.mark.parametrize("name", list(SHAPE_CASES))
def test_array_validation(name, no_kernel):
    args, kwargs, exc, match = SHAPE_CASES[name]
    with pytest.raises(exc, match=match):
        flash_attention(*args, implementation=REF, **kwargs)
    with pytest.raises(exc, match=match):
        make_config(*args, implementation=REF, **kwargs)


KWARG_CASES = {
    # softmax_scale
    "scale_zero": (
        {"softmax_scale": 0.0},
        ValueError,
        r"softmax_scale must be a finite number > 0",
    ),
    "scale_negative": (
        {"softmax_scale": -0.1},
        ValueError,
        r"softmax_scale must be a finite number > 0",
    ),
    "scale_nan": ({"softmax_scale": float("nan")}, ValueError, r"softmax_scale must be a finite"),
    "scale_inf": ({"softmax_scale": float("inf")}, ValueError, r"softmax_scale must be a finite"),
    # (every path computes in float32: a scale that float32 rounds to inf or 0 is refused)
    "scale_float32_overflow": ({"softmax_scale": 1e39}, ValueError, r"softmax_scale .*float32"),
    "scale_float32_underflow": ({"softmax_scale": 1e-50}, ValueError, r"softmax_scale .*float32"),
    # softcap
    "softcap_zero": ({"softcap": 0.0}, ValueError, r"softcap must be None or a finite number > 0"),
    "softcap_negative": (
        {"softcap": -5.0},
        ValueError,
        r"softcap must be None or a finite number > 0",
    ),
    "softcap_inf": ({"softcap": float("inf")}, ValueError, r"softcap must be None or a finite"),
    "softcap_nan": ({"softcap": float("nan")}, ValueError, r"softcap must be None or a finite"),
    "softcap_list": ({"softcap": [1.0]}, TypeError, r"softcap must be a real number"),
    "softcap_float32_overflow": ({"softcap": 1e39}, ValueError, r"softcap .*float32"),
    "softcap_float32_underflow": ({"softcap": 1e-50}, ValueError, r"softcap .*float32"),
    # window
    "window_int": ({"window": 4}, ValueError, r"window must be None or a pair \(left, right\)"),
    "window_triple": ({"window": (1, 2, 3)}, ValueError, r"window must be None or a pair"),
    "window_string": ({"window": "ab"}, ValueError, r"window must be None or a pair"),
    "window_set": ({"window": {0, 4}}, TypeError, r"window must be None or a pair .*got set"),
    "window_dict": (
        {"window": {"left": 4, "right": 0}}, TypeError, r"window must be None or a pair .*got dict"
    ),
    "window_left_below_minus_one": ({"window": (-2, 0)}, ValueError, r"window left must be >= 0"),
    "window_right_below_minus_one": ({"window": (0, -5)}, ValueError, r"window right must be >= 0"),
    "window_float_side": ({"window": (1.5, 0)}, TypeError, r"window left must be an int"),
    "window_bool_side": ({"window": (0, True)}, TypeError, r"window right must be an int"),
    # flags
    "causal_int": ({"causal": 1}, TypeError, r"causal must be a bool"),
    "causal_string": ({"causal": "yes"}, TypeError, r"causal must be a bool"),
    "causal_none": ({"causal": None}, TypeError, r"causal must be a bool"),
    "deterministic_int": ({"deterministic": 0}, TypeError, r"deterministic must be a bool"),
    "return_lse_string": ({"return_lse": "no"}, TypeError, r"return_lse must be a bool"),
    # implementation
    "implementation_bogus": (
        {"implementation": "bogus"},
        ValueError,
        r"implementation must be one of .*'bogus'",
    ),
    "implementation_none": ({"implementation": None}, ValueError, r"implementation must be one of"),
}


@pytest.mark.parametrize("name", list(KWARG_CASES))
def test_argument_validation(name, no_kernel):
    kwargs, exc, match = KWARG_CASES[name]
    kwargs = {"implementation": REF, **kwargs}
    with pytest.raises(exc, match=match):
        flash_attention(*qkv(), **kwargs)


@pytest.mark.parametrize("arg", ["softmax_scale", "softcap"])
def test_traced_scalars_are_refused(arg, no_kernel):
    q, k, v = qkv()

    @jax.jit
    def f(x):
        return flash_attention(q, k, v, implementation=REF, **{arg: x})

    with pytest.raises(TypeError, match=rf"{arg} must be a static Python number"):
        f(0.5)


@pytest.mark.parametrize("value", [True, "0.5"], ids=["bool", "str"])
@pytest.mark.parametrize("arg", ["softmax_scale", "softcap"])
def test_non_number_scalars_are_refused(arg, value, no_kernel):
    with pytest.raises(TypeError, match=arg):
        flash_attention(*qkv(), implementation=REF, **{arg: value})


def test_validation_under_jit(no_kernel):
    q, k, v = qkv(hq=3, hk=2)
    with pytest.raises(ValueError, match=r"multiple of the number of key/value heads"):
        jax.jit(functools.partial(flash_attention, implementation=REF))(q, k, v)


def test_unsupported_error_is_value_and_runtime_error():
    assert issubclass(UnsupportedError, ValueError) and issubclass(UnsupportedError, RuntimeError)


def test_valid_scalar_forms_are_accepted():
    """numpy scalars and 0-d concrete arrays are static numbers; np integers are window sides."""
    q, k, v = qkv(sq=9, sk=12)
    base = flash_attention(
        q, k, v, softmax_scale=0.25, softcap=3.0, window=(2, 1), implementation=REF
    )
    for kw in (
        {
            "softmax_scale": np.float32(0.25),
            "softcap": np.float64(3.0),
            "window": (np.int64(2), np.int32(1)),
        },
        {"softmax_scale": np.asarray(0.25), "softcap": 3, "window": [2, 1]},
        {"softmax_scale": 0.25, "softcap": 3.0, "window": np.array([2, 1])},
    ):
        out = flash_attention(q, k, v, implementation=REF, **kw)
        assert exactly_equal(out, base), kw
    flash_attention(q, k, v, causal=np.bool_(True), implementation=REF)


# --------------------------------------------------------------------------------------------
# Defaults and semantics shared with jax.nn.dot_product_attention


def test_default_softmax_scale_is_rsqrt_head_dim():
    q, k, v = qkv(d=48, dv=16)
    assert make_config(q, k, v).softmax_scale == pytest.approx(1 / math.sqrt(48))
    assert exactly_equal(
        flash_attention(q, k, v), flash_attention(q, k, v, softmax_scale=1 / math.sqrt(48))
    )


def test_default_config():
    cfg = make_config(*qkv())
    assert (cfg.window_left, cfg.window_right, cfg.softcap, cfg.deterministic) == (
        -1,
        -1,
        0.0,
        False,
    )
    assert cfg.implementation == "reference"  # float32, and the arrays live on the CPU


def test_unbounded_window_spellings_are_equal():
    q, k, v = qkv(sq=11, sk=20)
    base = flash_attention(q, k, v, implementation=REF)
    for window in ((None, None), (-1, -1), (None, -1), [-1, None]):
        assert exactly_equal(flash_attention(q, k, v, window=window, implementation=REF), base)


def test_causal_with_window_forces_right_zero():
    q, k, v = qkv(sq=11, sk=20)
    want = flash_attention(q, k, v, window=(4, 0), implementation=REF)
    for window in ((4, 7), (4, None), (4, 0)):
        assert exactly_equal(
            flash_attention(q, k, v, causal=True, window=window, implementation=REF), want
        )
    assert make_config(q, k, v, causal=True, window=(4, 7)).window_right == 0
    assert exactly_equal(
        flash_attention(q, k, v, causal=True, implementation=REF),
        flash_attention(q, k, v, window=(None, 0), implementation=REF),
    )


def test_matches_jax_nn_dot_product_attention():
    """Same layout, scale default and GQA grouping as jax.nn.dot_product_attention; causal agrees
    when Sq == Sk; when Sq != Sk ours is bottom-right aligned (an explicit mask in jax.nn)."""
    dpa = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal",))
    q, k, v = qkv(b=2, sq=13, sk=29, hq=4, hk=2, d=32)
    assert_tight("full", flash_attention(q, k, v), dpa(q, k, v), rtol=1e-5)

    mask = jnp.asarray(visible(13, 29, -1, 0))[None, None]  # (1, 1, Sq, Sk)
    assert_tight(
        "causal_bottom_right",
        flash_attention(q, k, v, causal=True),
        dpa(q, k, v, mask=mask),
        rtol=1e-5,
    )
    q2, k2, v2 = qkv(b=1, sq=21, sk=21, hq=2, hk=2, d=32, seed=1)
    assert_tight(
        "causal_square",
        flash_attention(q2, k2, v2, causal=True),
        dpa(q2, k2, v2, is_causal=True),
        rtol=1e-5,
    )


def test_causal_alignment_small_example():
    """Sq=2, Sk=4, causal: row 0 sees keys 0..2, row 1 sees keys 0..3 (bottom-right)."""
    v = jnp.arange(4, dtype=jnp.float32).reshape(1, 4, 1, 1)
    q = jnp.zeros((1, 2, 1, 8), jnp.float32)  # equal logits: out = mean of visible values
    k = jnp.zeros((1, 4, 1, 8), jnp.float32)
    out = flash_attention(q, k, v, causal=True, implementation=REF)
    np.testing.assert_allclose(np.asarray(out)[0, :, 0, 0], [1.0, 1.5], rtol=1e-6)
    out = flash_attention(q, k, v, window=(1, 0), implementation=REF)  # keys {1,2} and {2,3}
    np.testing.assert_allclose(np.asarray(out)[0, :, 0, 0], [1.5, 2.5], rtol=1e-6)


@pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=["fp32", "bf16", "fp16"]
)
def test_output_dtype_shape_and_lse(dtype):
    q, k, v = qkv(b=2, sq=5, sk=9, hq=4, hk=2, d=16, dv=24, dtype=dtype)
    out = flash_attention(q, k, v)
    assert not isinstance(out, tuple)
    assert out.shape == (2, 5, 4, 24) and out.dtype == dtype
    res = flash_attention(q, k, v, return_lse=True)
    assert isinstance(res, tuple) and len(res) == 2
    out2, lse = res
    assert exactly_equal(out2, out)
    assert lse.shape == (2, 4, 5) and lse.dtype == jnp.float32
    ref = oracle(q, k, v)
    np.testing.assert_allclose(np.asarray(lse), ref.lse, rtol=1e-5, atol=1e-5)


def test_lse_is_natural_log_of_sum_exp():
    q, k, v = qkv(sq=3, sk=5, hq=1, hk=1, d=4)
    _, lse = flash_attention(q, k, v, softmax_scale=0.5, return_lse=True)
    s = np.einsum("bqhd,bkhd->bhqk", np.asarray(q, np.float64), np.asarray(k, np.float64)) * 0.5
    np.testing.assert_allclose(np.asarray(lse), np.log(np.exp(s).sum(-1)), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Implementation choice


def test_reference_forced():
    assert make_config(*qkv(dtype=jnp.bfloat16), implementation=REF).implementation == "reference"


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "fp16"])
def test_cuda_raises_with_reason_here(dtype, no_kernel):
    """Arrays on the CPU: "cuda" cannot run on any machine, and says why (the missing library or
    GPU where that is the reason, else that the inputs do not live on a GPU)."""
    q, k, v = qkv(d=64, dtype=dtype)
    with pytest.raises(UnsupportedError, match=r'implementation="cuda" cannot run: .+') as info:
        flash_attention(q, k, v, implementation="cuda")
    reason = jax_flash3.cuda_unavailable_reason()
    if reason is not None:
        assert reason in str(info.value)
    else:
        assert "GPU" in str(info.value)
    with pytest.raises(ValueError):  # also catchable as ValueError / RuntimeError
        make_config(q, k, v, implementation="cuda")
    with pytest.raises(RuntimeError):
        make_config(q, k, v, implementation="cuda")


@pytest.mark.parametrize(
    "dtype,d,match",
    [
        (jnp.float32, 64, r"bfloat16 or float16, got float32"),
        (jnp.bfloat16, 20, r"multiples of 8, got 20"),
    ],
    ids=["float32", "head_dim_20"],
)
def test_cuda_refuses_unsupported_config_anywhere(dtype, d, match, no_kernel):
    """These are refused on every machine, GPU or not, with the config's reason."""
    q, k, v = qkv(d=d, dtype=dtype)
    with pytest.raises(UnsupportedError, match=match):
        flash_attention(q, k, v, implementation="cuda")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "fp32"])
def test_auto_falls_back_to_reference(dtype):
    q, k, v = qkv(sq=7, sk=19, d=64, dtype=dtype)
    assert make_config(q, k, v).implementation == "reference"
    for kw in ({}, {"causal": True, "softcap": 2.0}):
        assert exactly_equal(
            flash_attention(q, k, v, **kw), flash_attention(q, k, v, implementation=REF, **kw)
        )
    got = jax.jit(lambda q, k, v: flash_attention(q, k, v, implementation="auto"))(q, k, v)
    assert_tight("auto_under_jit", got, flash_attention(q, k, v, implementation=REF), rtol=1e-6)


def test_deterministic_flag_on_reference():
    q, k, v = qkv(sq=7, sk=19)

    def grad(det):
        return jax.grad(
            lambda q: flash_attention(q, k, v, deterministic=det, implementation=REF).sum()
        )(q)

    g = [grad(det) for det in (False, True, True)]
    assert exactly_equal(g[0], g[1]) and exactly_equal(g[1], g[2])


# --------------------------------------------------------------------------------------------
# Transforms: jit, grad, vmap, checkpoint, check_grads


CASE = Case(b=2, sq=13, sk=21, hq=4, hk=2, d=32, causal=True, window=(6, None), softcap=4.0)


def _attn(q, k, v, **kw):
    return flash_attention(q, k, v, **CASE.flash_kwargs(), implementation=REF, **kw)


def test_jit_matches_eager():
    x = make_inputs(CASE, jnp.float32, seed_of("jit"))
    eager = _attn(*x[:3], return_lse=True)
    jitted = jax.jit(functools.partial(_attn, return_lse=True))(*x[:3])
    for a, b in zip(eager, jitted):
        assert_tight("jit", b, a, rtol=1e-6)


def test_grad_without_lse_matches_oracle():
    """return_lse=False: the lse cotangent is zero; jit(grad) of sum(out * w) vs the oracle."""
    x = make_inputs(CASE, jnp.float32, seed_of("grad"))
    loss = lambda q, k, v: (_attn(q, k, v) * x.dout).sum()
    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*x[:3])
    ref = oracle(*x[:3], x.dout, **CASE.oracle_kwargs())
    for name, g, r in zip(("dq", "dk", "dv"), got, ref[2:]):
        assert_tight(name, g, r, rtol=2e-5)


def test_grad_through_lse_only():
    x = make_inputs(CASE, jnp.float32, seed_of("lse_grad"))
    loss = lambda q, k, v: (_attn(q, k, v, return_lse=True)[1] * x.dlse).sum()
    got = jax.grad(loss, argnums=(0, 1, 2))(*x[:3])
    ref = oracle(*x[:3], np.zeros(x.dout.shape), x.dlse, **CASE.oracle_kwargs())
    for name, g, r in zip(("dq", "dk", "dv"), got, ref[2:]):
        assert_tight(name, g, r, rtol=2e-5)
    np.testing.assert_array_equal(np.asarray(got[2]), 0.0)  # lse does not depend on v


@pytest.mark.parametrize("in_axes", [(0, 0, 0), (0, None, None)], ids=["all", "q_only"])
def test_vmap_over_leading_axis(in_axes):
    n = 3
    rng = np.random.default_rng(seed_of("vmap", in_axes))
    qs = jnp.asarray(rng.standard_normal((n, 2, 13, 4, 32)), jnp.float32)
    ks = jnp.asarray(rng.standard_normal((n, 2, 21, 2, 32)), jnp.float32)
    vs = jnp.asarray(rng.standard_normal((n, 2, 21, 2, 32)), jnp.float32)
    args = (qs, ks if in_axes[1] == 0 else ks[0], vs if in_axes[2] == 0 else vs[0])
    f = functools.partial(_attn, return_lse=True)
    out, lse = jax.vmap(f, in_axes=in_axes)(*args)
    assert out.shape == (n, 2, 13, 4, 32) and lse.shape == (n, 2, 4, 13)
    for i in range(n):
        xi = [a[i] if ax == 0 else a for a, ax in zip(args, in_axes)]
        oi, li = f(*xi)
        assert_tight(f"out[{i}]", out[i], oi, rtol=1e-6)
        assert_tight(f"lse[{i}]", lse[i], li, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float8_e4m3fn], ids=["f32", "e4m3"])
def test_vmap_over_an_empty_axis_returns_empty_results(dtype):
    """vmap over a zero-size axis (as jax.nn.dot_product_attention allows): empty results of the
    per-example shapes, for the output, the lse and (float inputs) the gradients."""
    q = jnp.zeros((0, 2, 9, 4, 16), dtype)
    kv = jnp.zeros((0, 2, 5, 2, 16), dtype)
    out, lse = jax.vmap(functools.partial(flash_attention, return_lse=True))(q, kv, kv)
    assert out.shape == (0, 2, 9, 4, 16) and lse.shape == (0, 2, 4, 9)
    assert out.dtype == (jnp.float32 if dtype == jnp.float32 else jnp.bfloat16)
    assert lse.dtype == jnp.float32
    if dtype == jnp.float32:
        loss = lambda q, k, v: flash_attention(q, k, v).sum()
        grads = jax.vmap(jax.grad(loss, argnums=(0, 1, 2)))(q, kv, kv)
        assert [g.shape for g in grads] == [q.shape, kv.shape, kv.shape]


def test_vmap_of_grad():
    n = 2
    rng = np.random.default_rng(seed_of("vmap_grad"))
    qs = jnp.asarray(rng.standard_normal((n, 1, 9, 4, 16)), jnp.float32)
    ks = jnp.asarray(rng.standard_normal((n, 1, 11, 2, 16)), jnp.float32)
    vs = jnp.asarray(rng.standard_normal((n, 1, 11, 2, 16)), jnp.float32)
    g = jax.jit(jax.grad(lambda q, k, v: (_attn(q, k, v) ** 2).sum(), argnums=(0, 1, 2)))
    batched = jax.jit(jax.vmap(g))(qs, ks, vs)
    for i in range(n):
        for name, b, s in zip(("dq", "dk", "dv"), batched, g(qs[i], ks[i], vs[i])):
            assert_tight(f"{name}[{i}]", b[i], s, rtol=1e-5)


@pytest.mark.parametrize("policy", [None, "nothing_saveable"])
def test_checkpoint(policy):
    x = make_inputs(CASE, jnp.float32, seed_of("remat"))

    def loss(q, k, v):
        out, lse = _attn(q, k, v, return_lse=True)
        return (out * x.dout).sum() + (jnp.where(jnp.isfinite(lse), lse, 0.0) * x.dlse).sum()

    kw = {} if policy is None else {"policy": getattr(jax.checkpoint_policies, policy)}
    plain = jax.grad(loss, argnums=(0, 1, 2))(*x[:3])
    remat = jax.jit(jax.grad(jax.checkpoint(loss, **kw), argnums=(0, 1, 2)))(*x[:3])
    for name, a, b in zip(("dq", "dk", "dv"), remat, plain):
        assert_tight(name, a, b, rtol=1e-6)


CHECK_GRADS_CASES = [
    Case(b=1, sq=3, sk=5, hq=2, hk=1, d=4),
    Case(b=1, sq=5, sk=3, hq=2, hk=2, d=4, dv=3, causal=True),  # a row sees nothing
    Case(b=1, sq=4, sk=6, hq=2, hk=1, d=8, window=(1, 1), softcap=2.0, softmax_scale=0.7),
]
CHECK_GRADS_TOL = {"atol": 1e-2, "rtol": 1e-2, "eps": 1e-2}


def _check_grads_fn(case: Case, scale_grad: float = 1.0):
    """out and lse of a case as one float32 vector; ``scale_grad`` corrupts the VJP on purpose."""

    @jax.custom_vjp
    def corrupt(x):
        return x

    corrupt.defvjp(lambda x: (x, None), lambda _, g: (g * scale_grad,))

    def f(q, k, v):
        out, lse = flash_attention(
            corrupt(q), k, v, **case.flash_kwargs(), return_lse=True, implementation=REF
        )
        return jnp.concatenate([out.ravel(), jnp.where(jnp.isfinite(lse), lse, 0.0).ravel()])

    return f


@pytest.mark.parametrize(
    "case", CHECK_GRADS_CASES, ids=["gqa", "causal_dead_row", "window_softcap"]
)
def test_check_grads(case):
    x = make_inputs(case, jnp.float32, seed_of(case, "check_grads"))
    check_grads(_check_grads_fn(case), x[:3], order=1, modes=["rev"], **CHECK_GRADS_TOL)


def test_check_grads_tolerance_can_fail():
    """The tolerances above are tight enough to catch a dq that is 10% off."""
    case = CHECK_GRADS_CASES[0]
    x = make_inputs(case, jnp.float32, seed_of(case, "check_grads"))
    with pytest.raises(AssertionError):
        check_grads(
            _check_grads_fn(case, scale_grad=1.1), x[:3], order=1, modes=["rev"], **CHECK_GRADS_TOL
        )

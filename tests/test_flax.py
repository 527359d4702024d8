"""Flax integration: jax_flash3.flax (linen) and jax_flash3.nnx against flax's own modules.

Same parameters in, same outputs out (tolerance by dtype), identical parameter trees, gradients,
and the refusals of what cannot be honored (masks, dropout, decode, sow_weights, biases).
"""

import inspect
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

flax = pytest.importorskip("flax")
import flax.linen as nn
from flax import nnx

import jax_flash3.flax as jf3
import jax_flash3.nnx as jf3nnx
from jax_flash3 import reference

# Max abs error allowed between our module and flax's with the same parameters. float32: both
# accumulate in fp32 (ours blockwise, flax in one softmax), so only summation order differs.
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2, jnp.float16: 5e-3}

NNX_HAS_GQA = "num_kv_heads" in inspect.signature(nnx.MultiHeadAttention.__init__).parameters
NNX_HAS_IS_CAUSAL = "is_causal" in inspect.signature(nnx.MultiHeadAttention.__call__).parameters


@pytest.fixture(autouse=True)
def _exact_float32_matmuls():
    """flax's modules use default matmul precision, which is TF32 on GPUs: compare in true fp32."""
    with jax.default_matmul_precision("float32"):
        yield


def _inputs(shape, dtype=jnp.float32, seed=0):
    # numpy, not jax.random: a jax.random.normal compile per new shape costs seconds on CPU CI.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def _max_err(a, b):
    err = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
    print(f"max abs error {err:.3e}")
    return err


def _same_tree(a, b):
    """Same structure, shapes, dtypes and values."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _band_mask(sq, sk, left, right):
    """Boolean (1, 1, sq, sk) mask for jax_flash3's bottom-right aligned window (-1 = unbounded)."""
    vis = reference._visible(sq, sk, jnp.arange(sq), jnp.arange(sk), left, right)
    return vis[None, None]


# --------------------------------------------------------------------------------------------
# linen
# --------------------------------------------------------------------------------------------

LINEN_CONFIGS = {
    "default": {"num_heads": 4},
    "features": {"num_heads": 2, "qkv_features": 48, "out_features": 24},
    "no_bias": {"num_heads": 4, "use_bias": False},
    "normalize_qk": {"num_heads": 4, "normalize_qk": True},
    "out_init": {"num_heads": 4, "out_kernel_init": nn.initializers.normal(0.5),
                     "bias_init": nn.initializers.normal(0.1)},
}


@pytest.mark.parametrize("name", list(LINEN_CONFIGS))
def test_linen_matches_flax(name):
    cfg = LINEN_CONFIGS[name]
    x = _inputs((2, 8, 32))
    ours, theirs = jf3.MultiHeadAttention(**cfg), nn.MultiHeadDotProductAttention(**cfg)
    params = ours.init(jax.random.key(1), x)
    _same_tree(params, theirs.init(jax.random.key(1), x))
    assert _max_err(ours.apply(params, x), theirs.apply(params, x)) < TOL[jnp.float32]


@pytest.mark.parametrize("batch", [(), (2, 3)], ids=["no_batch", "batch2"])
def test_linen_batch_dims(batch):
    x = _inputs((*batch, 16, 32))
    ours, theirs = jf3.MultiHeadAttention(num_heads=4), nn.MultiHeadDotProductAttention(num_heads=4)
    params = theirs.init(jax.random.key(1), x)
    out = ours.apply(params, x)
    assert out.shape == (*batch, 16, 32)
    assert _max_err(out, theirs.apply(params, x)) < TOL[jnp.float32]


def test_linen_cross_attention_call_conventions():
    xq, xk, xv = _inputs((2, 8, 32), seed=0), _inputs((2, 16, 32), seed=1), _inputs((2, 16, 32), seed=2)
    ours, theirs = jf3.MultiHeadAttention(num_heads=4), nn.MultiHeadDotProductAttention(num_heads=4)
    params = theirs.init(jax.random.key(1), xq, xk, xv)
    assert _max_err(ours.apply(params, xq, xk, xv), theirs.apply(params, xq, xk, xv)) < 2e-5
    assert _max_err(ours.apply(params, xq, xk), theirs.apply(params, xq, xk)) < 2e-5
    assert _max_err(ours.apply(params, inputs_q=xq, inputs_k=xk), theirs.apply(params, xq, xk)) < 2e-5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert _max_err(ours.apply(params, xq, inputs_kv=xk), theirs.apply(params, xq, inputs_kv=xk)) < 2e-5
    with pytest.raises(ValueError, match="inputs_k cannot be None"):
        ours.apply(params, xq, None, xv)


@pytest.mark.parametrize("sq,sk", [(16, 16), (8, 16)])
def test_linen_causal_matches_flax_mask(sq, sk):
    """causal=True == flax with the bottom-right aligned causal mask (== make_causal_mask when sq == sk)."""
    xq, xkv = _inputs((2, sq, 32), seed=0), _inputs((2, sk, 32), seed=1)
    theirs = nn.MultiHeadDotProductAttention(num_heads=4)
    params = theirs.init(jax.random.key(1), xq, xkv)
    out = jf3.MultiHeadAttention(num_heads=4, causal=True).apply(params, xq, xkv)
    mask = _band_mask(sq, sk, -1, 0)
    if sq == sk:
        np.testing.assert_array_equal(mask, nn.make_causal_mask(jnp.ones((1, sq)), dtype=bool))
    assert _max_err(out, theirs.apply(params, xq, xkv, mask=mask)) < TOL[jnp.float32]


@pytest.mark.parametrize("window,causal", [((3, 2), False), ((4, None), True), ((None, 1), False)])
def test_linen_window_matches_flax_mask(window, causal):
    x = _inputs((2, 16, 32))
    theirs = nn.MultiHeadDotProductAttention(num_heads=4)
    params = theirs.init(jax.random.key(1), x)
    out = jf3.MultiHeadAttention(num_heads=4, window=window, causal=causal).apply(params, x)
    left = -1 if window[0] is None else window[0]
    right = 0 if causal else (-1 if window[1] is None else window[1])
    assert _max_err(out, theirs.apply(params, x, mask=_band_mask(16, 16, left, right))) < 2e-5


def test_linen_softcap_and_scale():
    """softcap / softmax_scale == flax's module with a naive attention_fn doing the same."""
    x = _inputs((2, 16, 32)) * 3.0
    cap, scale = 5.0, 0.3

    def naive_fn(query, key, value, **_):
        return reference.naive_attention(query, key, value, softmax_scale=scale, softcap=cap)

    theirs = nn.MultiHeadDotProductAttention(num_heads=4, attention_fn=naive_fn)
    params = theirs.init(jax.random.key(1), x)
    ours = jf3.MultiHeadAttention(num_heads=4, softcap=cap, softmax_scale=scale)
    assert _max_err(ours.apply(params, x), theirs.apply(params, x)) < TOL[jnp.float32]


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_linen_gqa(num_kv_heads):
    """GQA == flax's MHA whose key/value kernels repeat each KV head for its query-head group."""
    x = _inputs((2, 16, 32))
    ours = jf3.MultiHeadAttention(num_heads=4, num_kv_heads=num_kv_heads, causal=True)
    params = ours.init(jax.random.key(1), x)
    p = params["params"]
    assert p["key"]["kernel"].shape == (32, num_kv_heads, 8)
    assert p["value"]["bias"].shape == (num_kv_heads, 8)
    assert p["query"]["kernel"].shape == (32, 4, 8)
    group = 4 // num_kv_heads
    repeat = lambda a: jnp.repeat(a, group, axis=-2)
    full = {**p, "key": jax.tree.map(repeat, p["key"]), "value": jax.tree.map(repeat, p["value"])}
    expected = nn.MultiHeadDotProductAttention(num_heads=4).apply(
        {"params": full}, x, mask=nn.make_causal_mask(jnp.ones((2, 16))))
    assert _max_err(ours.apply(params, x), expected) < TOL[jnp.float32]
    with pytest.raises(ValueError, match="num_kv_heads"):
        jf3.MultiHeadAttention(num_heads=4, num_kv_heads=3).init(jax.random.key(1), x)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_linen_low_precision(dtype):
    x = _inputs((2, 16, 32), dtype)
    cfg = {"num_heads": 4, "dtype": dtype}
    theirs = nn.MultiHeadDotProductAttention(**cfg)
    params = theirs.init(jax.random.key(1), x)
    out = jf3.MultiHeadAttention(**cfg).apply(params, x)
    assert out.dtype == dtype
    expected = nn.MultiHeadDotProductAttention(num_heads=4).apply(params, x.astype(jnp.float32))
    # Ours vs the fp32 answer must be about as good as flax's own low-precision module.
    err_ours, err_flax = _max_err(out, expected), _max_err(theirs.apply(params, x), expected)
    assert err_ours <= 2 * err_flax + TOL[dtype] / 10


def test_linen_gradients_match_flax():
    x = _inputs((2, 16, 32))
    theirs = nn.MultiHeadDotProductAttention(num_heads=4, normalize_qk=True)
    ours = jf3.MultiHeadAttention(num_heads=4, normalize_qk=True, causal=True)
    params = theirs.init(jax.random.key(1), x)
    mask = nn.make_causal_mask(jnp.ones((2, 16)))
    target = _inputs((2, 16, 32), seed=5)

    def loss(module, **kw):
        return lambda p, x: jnp.mean((module.apply(p, x, **kw) - target) ** 2)

    (g_ours, gx_ours) = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
    (g_flax, gx_flax) = jax.jit(jax.grad(loss(theirs, mask=mask), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_flax)):
        assert bool(jnp.all(jnp.isfinite(a))) and float(jnp.max(jnp.abs(a))) > 0
        assert _max_err(a, b) < 1e-5
    assert _max_err(gx_ours, gx_flax) < 1e-5


def test_linen_checkpoint_loads_unchanged():
    """A flax checkpoint (serialized bytes) restores into our module's tree and gives flax's outputs."""
    from flax import serialization

    x = _inputs((2, 16, 32))
    theirs = nn.MultiHeadDotProductAttention(num_heads=4)
    blob = serialization.to_bytes(theirs.init(jax.random.key(7), x))
    ours = jf3.MultiHeadAttention(num_heads=4)
    restored = serialization.from_bytes(ours.init(jax.random.key(0), x), blob)
    assert _max_err(ours.apply(restored, x), theirs.apply(restored, x)) < TOL[jnp.float32]


def test_linen_inside_a_model_with_remat_and_scan():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return x + jf3.MultiHeadAttention(num_heads=2, causal=True)(nn.LayerNorm()(x)), None

    Stack = nn.scan(nn.remat(Block), variable_axes={"params": 0}, split_rngs={"params": True},
                    length=2)
    x = _inputs((2, 16, 32))
    model = Stack()
    params = model.init(jax.random.key(0), x, None)
    assert params["params"]["MultiHeadAttention_0"]["query"]["kernel"].shape == (2, 32, 2, 16)
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x, None)[0] ** 2))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_linen_dropout_deterministic_equals_no_dropout():
    x = _inputs((2, 16, 32))
    cfg = {"num_heads": 4, "dropout_rate": 0.1}
    theirs = nn.MultiHeadDotProductAttention(**cfg)
    params = theirs.init(jax.random.key(1), x, deterministic=True)
    out = jf3.MultiHeadAttention(**cfg).apply(params, x, deterministic=True)
    assert _max_err(out, theirs.apply(params, x, deterministic=True)) < TOL[jnp.float32]
    out = jf3.MultiHeadAttention(**cfg, deterministic=True).apply(params, x)
    assert _max_err(out, theirs.apply(params, x, deterministic=True)) < TOL[jnp.float32]


def test_linen_refusals():
    x = _inputs((2, 16, 32))
    params = nn.MultiHeadDotProductAttention(num_heads=4).init(jax.random.key(1), x)
    mha = jf3.MultiHeadAttention(num_heads=4)
    with pytest.raises(ValueError, match="mask is not supported.*causal=True"):
        mha.apply(params, x, mask=nn.make_causal_mask(jnp.ones((2, 16))))
    with pytest.raises(ValueError, match="dropout_rate=0.1 with deterministic=False"):
        jf3.MultiHeadAttention(num_heads=4, dropout_rate=0.1).apply(
            params, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    with pytest.raises(ValueError, match="dropout_rate=0.1 needs deterministic"):
        jf3.MultiHeadAttention(num_heads=4, dropout_rate=0.1).apply(params, x)
    with pytest.raises(ValueError, match="decode=True"):
        jf3.MultiHeadAttention(num_heads=4, decode=True).apply(params, x)
    with pytest.raises(ValueError, match="sow_weights"):
        mha.apply(params, x, sow_weights=True)
    with pytest.raises(ValueError, match="softcap"):
        jf3.MultiHeadAttention(num_heads=4, softcap=-1.0).apply(params, x)
    with pytest.raises(ValueError, match="window"):
        jf3.MultiHeadAttention(num_heads=4, window=(3,)).apply(params, x)


# --------------------------------------------------------------------------------------------
# attention_fn adapter
# --------------------------------------------------------------------------------------------

def test_attention_fn_in_flax_module():
    x = _inputs((2, 3, 16, 32))
    theirs = nn.MultiHeadDotProductAttention(num_heads=4)
    params = theirs.init(jax.random.key(1), x)
    adapted = nn.MultiHeadDotProductAttention(num_heads=4, attention_fn=jf3.attention_fn)
    assert _max_err(adapted.apply(params, x), theirs.apply(params, x)) < TOL[jnp.float32]
    causal = nn.MultiHeadDotProductAttention(
        num_heads=4, attention_fn=jf3.make_attention_fn(causal=True))
    mask = nn.make_causal_mask(jnp.ones((2, 3, 16)))
    assert _max_err(causal.apply(params, x), theirs.apply(params, x, mask=mask)) < 2e-5
    # Dropout configured but off (evaluation): honored.
    adapted = nn.MultiHeadDotProductAttention(
        num_heads=4, attention_fn=jf3.attention_fn, dropout_rate=0.2, deterministic=True)
    assert _max_err(adapted.apply(params, x), theirs.apply(params, x)) < TOL[jnp.float32]


def test_attention_fn_direct_call_and_dtype():
    q, k, v = (_inputs((2, 16, 4, 8), seed=s) for s in range(3))
    out = jf3.attention_fn(q, k, v, dtype=jnp.bfloat16)
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 16, 4, 8)
    expected = nn.dot_product_attention(q, k, v)
    assert _max_err(jf3.attention_fn(q, k, v), expected) < TOL[jnp.float32]
    assert _max_err(out, expected) < TOL[jnp.bfloat16]


def test_attention_fn_refusals():
    q = k = v = _inputs((2, 16, 4, 8))
    fn = jf3.attention_fn
    with pytest.raises(ValueError, match="bias is not supported"):
        fn(q, k, v, bias=jnp.zeros((2, 4, 16, 16)))
    with pytest.raises(ValueError, match="mask is not supported"):
        fn(q, k, v, mask=jnp.ones((2, 1, 16, 16), bool))
    with pytest.raises(ValueError, match="dropout_rate=0.5 with deterministic=False"):
        fn(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(0), deterministic=False)
    with pytest.raises(ValueError, match="qk_attn_weights_einsum is not supported"):
        fn(q, k, v, qk_attn_weights_einsum=jnp.einsum)
    with pytest.raises(ValueError, match="input_positions is not supported"):
        fn(q, k, v, input_positions=jnp.arange(16)[None])
    with pytest.raises(ValueError, match="some_future_arg"):
        fn(q, k, v, some_future_arg=3)
    fn(q, k, v, some_future_arg=None)  # unknown but at its neutral value: fine
    # Through flax's module: sow_weights hands the module over.
    x = _inputs((2, 16, 32))
    adapted = nn.MultiHeadDotProductAttention(num_heads=2, attention_fn=fn)
    params = adapted.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="sow_weights"):
        adapted.apply(params, x, sow_weights=True, mutable=["intermediates"])
    with pytest.raises(ValueError, match="mask is not supported"):
        adapted.apply(params, x, mask=nn.make_causal_mask(jnp.ones((2, 16))))


# --------------------------------------------------------------------------------------------
# nnx
# --------------------------------------------------------------------------------------------

NNX_CONFIGS = {
    "default": {"num_heads": 4, "in_features": 32},
    "features": {"num_heads": 2, "in_features": 32, "qkv_features": 48, "out_features": 24},
    "no_bias": {"num_heads": 4, "in_features": 32, "use_bias": False},
    "normalize_qk": {"num_heads": 4, "in_features": 32, "normalize_qk": True},
    "gqa": {"num_heads": 4, "in_features": 32, "num_kv_heads": 2},
    "mqa_kv_features": {"num_heads": 4, "in_features": 32, "num_kv_heads": 1, "in_kv_features": 20},
}


def _nnx_pair(cfg, seed=3, **ours_kw):
    if "num_kv_heads" in cfg and not NNX_HAS_GQA:
        pytest.skip("this flax's nnx.MultiHeadAttention has no num_kv_heads")
    theirs = nnx.MultiHeadAttention(**cfg, decode=False, rngs=nnx.Rngs(seed))
    ours = jf3nnx.MultiHeadAttention(**cfg, **ours_kw, rngs=nnx.Rngs(seed))
    return ours, theirs


@pytest.mark.parametrize("name", list(NNX_CONFIGS))
def test_nnx_matches_flax(name):
    cfg = NNX_CONFIGS[name]
    ours, theirs = _nnx_pair(cfg)
    _same_tree(nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param))
    xq = _inputs((2, 8, 32))
    xkv = _inputs((2, 16, cfg.get("in_kv_features", 32)), seed=1)
    assert _max_err(ours(xq, xkv), theirs(xq, xkv)) < TOL[jnp.float32]
    if "in_kv_features" not in cfg:
        assert _max_err(ours(xq), theirs(xq)) < TOL[jnp.float32]


def test_nnx_params_transfer_and_from_flax():
    cfg = NNX_CONFIGS["normalize_qk"]
    _, theirs = _nnx_pair(cfg, seed=3)
    ours_other_seed = jf3nnx.MultiHeadAttention(**cfg, rngs=nnx.Rngs(99))
    nnx.update(ours_other_seed, nnx.state(theirs, nnx.Param))
    x = _inputs((2, 16, 32))
    assert _max_err(ours_other_seed(x), theirs(x)) < TOL[jnp.float32]
    converted = jf3nnx.MultiHeadAttention.from_flax(theirs)
    _same_tree(nnx.state(converted, nnx.Param), nnx.state(theirs, nnx.Param))
    assert _max_err(converted(x), theirs(x)) < TOL[jnp.float32]


def test_flax_only_fields_accepted_at_defaults_refused_otherwise():
    """flax's module fields these modules do not implement are accepted at flax's defaults (so
    constructor calls written for flax still work) and refused with a ValueError naming the field
    otherwise; unknown nnx keywords stay a TypeError."""
    x = _inputs((2, 8, 32))
    lin = lambda **kw: jf3.MultiHeadAttention(num_heads=4, **kw)
    for kw in ({}, {"attention_fn": nn.dot_product_attention}, {"qkv_dot_general": None}):
        m = lin(**kw)
        m.apply(m.init(jax.random.PRNGKey(0), x), x)
    for name, value in (("attention_fn", jf3.attention_fn),
                        ("qkv_dot_general", jax.lax.dot_general), ("out_dot_general_cls", object)):
        m = lin(**{name: value})
        with pytest.raises(ValueError, match=rf"MultiHeadAttention: {name}=.* is not supported"):
            m.init(jax.random.PRNGKey(0), x)
    mk = lambda **kw: jf3nnx.MultiHeadAttention(4, 32, rngs=nnx.Rngs(0), **kw)
    for kw in ({"keep_rngs": False}, {"attention_fn": nnx.dot_product_attention},
               {"kernel_metadata": {}}, {"qkv_dot_general": None}):
        mk(**kw)(x)
    for name, value in (("attention_fn", jf3.attention_fn),
                        ("kernel_metadata", {"sharding": ("a",)}),
                        ("out_dot_general", jax.lax.dot_general)):
        with pytest.raises(ValueError, match=rf"MultiHeadAttention: {name}=.* is not supported"):
            mk(**{name: value})
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) bogus"):
        mk(bogus=1)


def test_nnx_from_flax_refuses_what_it_cannot_copy():
    """A custom attention_fn or decode=True on the source module is refused, not dropped."""
    kw = dict(num_heads=4, in_features=32, rngs=nnx.Rngs(0))
    causal_fn = jf3nnx.make_attention_fn(causal=True) if hasattr(jf3nnx, "make_attention_fn") else (
        lambda *a, **k: nnx.dot_product_attention(*a, **k))
    with pytest.raises(ValueError, match=r"from_flax: .*attention_fn"):
        jf3nnx.MultiHeadAttention.from_flax(nnx.MultiHeadAttention(**kw, attention_fn=causal_fn))
    with pytest.raises(ValueError, match=r"from_flax: decode=True"):
        jf3nnx.MultiHeadAttention.from_flax(nnx.MultiHeadAttention(**kw, decode=True))
    jf3nnx.MultiHeadAttention.from_flax(nnx.MultiHeadAttention(**kw))  # the defaults convert


@pytest.mark.parametrize("sq,sk", [(16, 16), (24, 16), (8, 16)])
def test_nnx_causal(sq, sk):
    ours, theirs = _nnx_pair(NNX_CONFIGS["default"])
    ours_causal = jf3nnx.MultiHeadAttention.from_flax(theirs, causal=True)
    xq, xkv = _inputs((2, sq, 32)), _inputs((2, sk, 32), seed=1)
    # Our causal is bottom-right aligned: flax with that explicit mask. The first sq - sk query
    # rows then see no key: ours gives 0 there (flax: the mean of all values).
    expected = theirs(xq, xkv, mask=_band_mask(sq, sk, -1, 0))
    out, blind = ours_causal(xq, xkv), max(sq - sk, 0)
    assert _max_err(out[:, blind:], expected[:, blind:]) < TOL[jnp.float32]
    np.testing.assert_array_equal(out[:, :blind], jnp.broadcast_to(theirs.out.bias[...], out[:, :blind].shape))
    if not NNX_HAS_IS_CAUSAL:
        return
    # nnx's is_causal is top-left aligned: honored where expressible (sq >= sk), else refused.
    if sq >= sk:
        assert _max_err(ours(xq, xkv, is_causal=True), theirs(xq, xkv, is_causal=True)) < 2e-5
    else:
        with pytest.raises(ValueError, match="top-left"):
            ours(xq, xkv, is_causal=True)


def test_nnx_window_softcap():
    ours, theirs = _nnx_pair(NNX_CONFIGS["default"], window=(3, 1))
    x = _inputs((2, 16, 32))
    assert _max_err(ours(x), theirs(x, mask=_band_mask(16, 16, 3, 1))) < TOL[jnp.float32]

    def naive_fn(query, key, value, **_):
        return reference.naive_attention(query, key, value, softcap=2.0)

    ours, _ = _nnx_pair(NNX_CONFIGS["default"], softcap=2.0)
    theirs = nnx.MultiHeadAttention(**NNX_CONFIGS["default"], decode=False, attention_fn=naive_fn,
                                    rngs=nnx.Rngs(3))
    assert _max_err(ours(x * 4), theirs(x * 4)) < TOL[jnp.float32]


@pytest.mark.parametrize("name", ["default", "gqa"])
def test_nnx_gradients_match_flax(name):
    ours, theirs = _nnx_pair(NNX_CONFIGS[name])
    x = _inputs((2, 16, 32))

    def loss(model):
        return jnp.mean(model(x) ** 2)

    g_ours = nnx.jit(nnx.grad(loss))(ours)
    g_flax = nnx.jit(nnx.grad(loss))(theirs)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_flax)):
        assert bool(jnp.all(jnp.isfinite(a))) and float(jnp.max(jnp.abs(a))) > 0
        assert _max_err(a, b) < 1e-5


def test_nnx_attention_fn_adapter():
    cfg = NNX_CONFIGS["default"]
    theirs = nnx.MultiHeadAttention(**cfg, decode=False, rngs=nnx.Rngs(3))
    adapted = nnx.MultiHeadAttention(**cfg, decode=False, attention_fn=jf3.attention_fn,
                                     rngs=nnx.Rngs(3))
    x = _inputs((2, 16, 32))
    assert _max_err(adapted(x), theirs(x)) < TOL[jnp.float32]
    if NNX_HAS_IS_CAUSAL:
        assert _max_err(adapted(x, is_causal=True), theirs(x, is_causal=True)) < TOL[jnp.float32]


def test_nnx_refusals():
    cfg = NNX_CONFIGS["default"]
    mha = jf3nnx.MultiHeadAttention(**cfg, rngs=nnx.Rngs(0))
    x = _inputs((2, 16, 32))
    with pytest.raises(ValueError, match="mask is not supported"):
        mha(x, mask=jnp.ones((2, 1, 16, 16), bool))
    with pytest.raises(ValueError, match="sow_weights"):
        mha(x, sow_weights=True)
    with pytest.raises(ValueError, match="decode=True"):
        mha(x, decode=True)
    with pytest.raises(ValueError, match="input_positions"):
        mha(x, input_positions=jnp.arange(16)[None])
    with pytest.raises(ValueError, match="decode=True"):
        jf3nnx.MultiHeadAttention(**cfg, decode=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_features=32"):
        mha(_inputs((2, 16, 16)))
    with pytest.raises(ValueError, match="num_kv_heads"):
        jf3nnx.MultiHeadAttention(**cfg, num_kv_heads=3, rngs=nnx.Rngs(0))
    dropout = jf3nnx.MultiHeadAttention(**cfg, dropout_rate=0.1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout_rate=0.1 with deterministic=False"):
        dropout(x, deterministic=False)
    with pytest.raises(ValueError, match="needs deterministic"):
        dropout(x)
    dropout(x, deterministic=True)  # evaluation: fine
    theirs = nnx.MultiHeadAttention(**cfg, decode=False, rngs=nnx.Rngs(0))
    nnx.update(dropout, nnx.state(theirs, nnx.Param))
    assert _max_err(dropout(x, deterministic=True), theirs(x)) < TOL[jnp.float32]


def test_import_jax_flash3_does_not_import_flax():
    code = "import sys, jax_flash3; sys.exit(int(any(m.split('.')[0] == 'flax' for m in sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

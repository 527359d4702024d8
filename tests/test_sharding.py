"""flash_attention under jit with sharded inputs (custom_partitioning + Shardy), 8 virtual CPU devices.

Every case compares the sharded forward (out, lse) and gradients (dq, dk, dv, with an lse
cotangent too) to the unsharded reference-path result, and reads the compiled HLO: no collectives
for batch/head sharding, no all-gather of K/V for the automatic ring, collective-permute present.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_flash3
from jax_flash3 import _sharding

COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


def _mesh(shape, names):
    n = int(np.prod(shape))
    if len(jax.devices()) < n:
        pytest.skip(f"needs {n} devices (conftest sets 8 virtual CPU devices)")
    return Mesh(np.array(jax.devices()[:n]).reshape(shape), names)


def _inputs(seed, b, sq, sk, hq, hk, d):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)
    return normal(b, sq, hq, d), normal(b, sk, hk, d), normal(b, sk, hk, d), normal(b, sq, hq, d), normal(b, hq, sq)


def _attention_and_vjp(**kwargs):
    """(q, k, v, dout, dlse) -> (out, lse, dq, dk, dv): the forward and one VJP, no scalar loss
    (a loss would add its own all-reduce to the HLO)."""

    def fn(q, k, v, dout, dlse):
        (out, lse), vjp = jax.vjp(
            lambda q, k, v: jax_flash3.flash_attention(
                q, k, v, implementation="reference", return_lse=True, **kwargs
            ),
            q, k, v,
        )
        return (out, lse) + vjp((dout, dlse))

    return fn


def _collectives(compiled) -> set[str]:
    return set(re.findall(r"\b(" + "|".join(COLLECTIVES) + r")(?:-start)?\b", compiled.as_text()))


def _assert_matches(got, want, names=("out", "lse", "dq", "dk", "dv")):
    for name, a, b in zip(names, got, want):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.array_equal(np.isneginf(a), np.isneginf(b)), f"{name}: -inf rows differ"
        a, b = np.where(np.isinf(b), 0, a), np.where(np.isinf(b), 0, b)
        err = np.abs(a - b)
        scale = max(1.0, float(np.abs(b).max()))
        print(f"{name}: max err {err.max():.3g}, mean err {err.mean():.3g}, scale {scale:.3g}")
        assert not np.isnan(a).any(), f"{name} has NaN"
        assert err.max() <= 2e-5 * scale, f"{name}: max err {err.max():.3g} (scale {scale:.3g})"


def _run_sharded(mesh, specs, inputs, **kwargs):
    """Compile the sharded forward+VJP, run it, and return (results, collectives in its HLO)."""
    shardings = tuple(NamedSharding(mesh, s) for s in specs)
    fn = _attention_and_vjp(**kwargs)
    compiled = jax.jit(fn, in_shardings=shardings).lower(*inputs).compile()
    placed = [jax.device_put(x, s) for x, s in zip(inputs, shardings)]
    return compiled(*placed), _collectives(compiled)


def _run_unsharded(inputs, **kwargs):
    return jax.jit(_attention_and_vjp(**kwargs))(*inputs)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "causal,hq,hk", [(True, 16, 8), (False, 4, 4)], ids=["causal-gqa", "full-mha"]
)
def test_batch_and_head_sharding_has_no_collectives(causal, hq, hk):
    mesh = _mesh((2, 4), ("data", "model"))
    if hq > hk:  # GQA heads are the compound Shardy factor (h g) on this mesh
        assert _sharding._head_factors(hq // hk, hk, mesh)[0] == "(h g)"
    inputs = _inputs(1 + hq, 2, 64, 64, hq, hk, 8)
    # Batch over "data", heads (query and KV, consistently) over "model".
    qo, kv, lse = P("data", None, "model"), P("data", None, "model"), P("data", "model", None)
    got, collectives = _run_sharded(mesh, (qo, kv, kv, qo, lse), inputs, causal=causal)
    _assert_matches(got, _run_unsharded(inputs, causal=causal))
    assert collectives == set(), collectives


def test_query_heads_over_more_devices_than_kv_heads():
    # 8 query heads over 8 devices, 2 KV heads replicated; each device picks its KV head. (A
    # compound (h g) factor would split the mesh axis here, so the heads are independent factors.)
    mesh = _mesh((8,), ("model",))
    assert _sharding._head_factors(4, 2, mesh)[0] == "n"
    inputs = _inputs(2, 2, 32, 32, 8, 2, 16)
    qo, kv, lse = P(None, None, "model"), P(), P(None, "model", None)
    got, collectives = _run_sharded(mesh, (qo, kv, kv, qo, lse), inputs, causal=True)
    _assert_matches(got, _run_unsharded(inputs, causal=True))
    assert not collectives & {"all-gather", "collective-permute"}, collectives


@pytest.mark.parametrize(
    "sq,sk,kwargs",
    [
        (64, 64, {"causal": True}),
        (32, 48, {"causal": False}),
        (64, 48, {"window": (8, 4)}),
    ],
    ids=["causal", "full-sq<sk", "window-sq>sk"],
)
def test_query_sequence_sharding_with_replicated_kv(sq, sk, kwargs):
    mesh = _mesh((4,), ("seq",))
    inputs = _inputs(3 + sq + sk, 2, sq, sk, 4, 2, 16)
    qo, kv, lse = P(None, "seq"), P(), P(None, None, "seq")
    got, collectives = _run_sharded(mesh, (qo, kv, kv, qo, lse), inputs, **kwargs)
    _assert_matches(got, _run_unsharded(inputs, **kwargs))
    # K/V stay replicated and q is never gathered; dK/dV are summed over the query shards.
    assert collectives <= {"all-reduce"}, collectives


def test_query_sequence_sharding_forward_is_local():
    mesh = _mesh((4,), ("seq",))
    q, k, v, _, _ = _inputs(4, 2, 64, 64, 4, 2, 16)
    fn = jax.jit(
        lambda q, k, v: jax_flash3.flash_attention(q, k, v, causal=True, implementation="reference"),
        in_shardings=(NamedSharding(mesh, P(None, "seq")), NamedSharding(mesh, P()), NamedSharding(mesh, P())),
    )
    compiled = fn.lower(q, k, v).compile()
    assert _collectives(compiled) == set()
    _assert_matches([compiled(q, k, v)], [jax_flash3.flash_attention(q, k, v, causal=True, implementation="reference")])


@pytest.mark.parametrize(
    "mesh_shape,specs,sq,sk,hq,hk,kwargs",
    [
        # Batch over "data", ring over "seq" (4 devices); causal -> zigzag reorder; GQA 4:2.
        ((2, 4), (P("data", "seq"), P("data", "seq")), 64, 64, 4, 2, {"causal": True}),
        # Sequence over both mesh axes (an 8-device ring), non-causal, Sq != Sk, softcap.
        ((2, 4), (P(None, ("data", "seq")), P(None, ("data", "seq"))), 32, 64, 4, 1,
         {"softcap": 5.0}),
    ],
    ids=["causal-gqa-batch+ring4", "full-ring8-sq<sk"],
)
def test_kv_sequence_sharding_becomes_ring_attention(mesh_shape, specs, sq, sk, hq, hk, kwargs):
    mesh = _mesh(mesh_shape, ("data", "seq"))
    inputs = _inputs(5 + sq + sk, 2, sq, sk, hq, hk, 16)
    qo, kv = specs
    lse = P(qo[0], None, qo[1])
    got, collectives = _run_sharded(mesh, (qo, kv, kv, qo, lse), inputs, **kwargs)
    _assert_matches(got, _run_unsharded(inputs, **kwargs))
    assert "collective-permute" in collectives, collectives
    assert "all-gather" not in collectives, collectives


def test_kv_sequence_sharding_with_window_gathers_kv():
    # Sliding windows cannot run as a ring (no per-block offsets in the kernels): K/V are gathered
    # and the query shards run locally. Correct, with an all-gather.
    mesh = _mesh((4,), ("seq",))
    inputs = _inputs(6, 2, 64, 64, 4, 2, 16)
    qo, lse = P(None, "seq"), P(None, None, "seq")
    got, collectives = _run_sharded(mesh, (qo, qo, qo, qo, lse), inputs, window=(8, 0))
    _assert_matches(got, _run_unsharded(inputs, window=(8, 0)))
    assert "all-gather" in collectives


def test_head_dim_sharding_is_refused():
    mesh = _mesh((4,), ("model",))
    q, k, v, _, _ = _inputs(7, 2, 32, 32, 4, 2, 16)
    spec = NamedSharding(mesh, P(None, None, None, "model"))
    fn = jax.jit(lambda q, k, v: jax_flash3.flash_attention(q, k, v, implementation="reference"),
                 in_shardings=(spec, spec, spec))
    with pytest.raises(Exception, match=r"cannot shard the head dimension \(axis 3"):
        fn.lower(q, k, v).compile()


def test_explicit_sharding_mode():
    mesh = _mesh((4,), ("seq",))
    mesh = jax.sharding.Mesh(mesh.devices, ("seq",), axis_types=(jax.sharding.AxisType.Explicit,))
    q, k, v, dout, _ = _inputs(8, 2, 32, 32, 4, 2, 16)

    def out_and_grads(q, k, v):
        def loss(q, k, v):
            out = jax_flash3.flash_attention(q, k, v, implementation="reference")
            return jnp.sum(out * dout), out

        (_, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
        return out, *grads

    sharded = [jax.device_put(x, NamedSharding(mesh, P(None, "seq"))) for x in (q, k, v)]
    got = jax.jit(out_and_grads)(*sharded)
    assert got[0].sharding.spec[:2] == (None, "seq")
    _assert_matches(got, jax.jit(out_and_grads)(q, k, v), names=("out", "dq", "dk", "dv"))


def test_vmap_folds_into_batch():
    # custom_partitioning has no batching rule; vmap must still work (mapped axis -> batch).
    q, k, v, _, _ = _inputs(9, 2, 16, 16, 4, 2, 8)
    qs = np.stack([q, -q, 2 * q])

    def attend(q, k, v):
        return jax_flash3.flash_attention(q, k, v, causal=True, implementation="reference")

    def loss(q):
        return jnp.sum(attend(q, k, v) ** 2)

    def out_and_grad(q):
        return attend(q, k, v), jax.grad(loss)(q)

    got, grad = jax.jit(jax.vmap(out_and_grad))(qs)
    one = jax.jit(out_and_grad)
    want, want_grad = (np.stack(x) for x in zip(*[one(x) for x in qs]))
    _assert_matches([got, grad], [want, want_grad], names=("out", "dq"))


# --------------------------------------------------------------------------------------------
# FP8 forward (jax_flash3.fp8): batch/head sharding partitions with no collectives; a sharded
# sequence is gathered (the FP8 call takes whole sequences) and still gives the same result.


@pytest.mark.parametrize("hq,hk", [(4, 4), (8, 2)])
def test_fp8_batch_and_head_sharding_has_no_collectives(hq, hk):
    from jax_flash3 import fp8

    mesh = _mesh((2, 2), ("b", "h"))
    q, k, v, _, _ = _inputs(11 + hq, 4, 160, 200, hq, hk, 32)
    q8, qd = fp8.quantize(q)
    k8, kd = fp8.quantize(k)
    v8, vd = fp8.quantize(v, granularity="head")

    def fn(q8, k8, v8, qd, kd, vd):
        return jax_flash3.flash_attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd,
                                          causal=True, return_lse=True, implementation="reference")

    want = fn(q8, k8, v8, qd, kd, vd)
    bshd, bhn, bh = (NamedSharding(mesh, s) for s in (P("b", None, "h", None), P("b", "h", None), P("b", "h")))
    args = [jax.device_put(x, s) for x, s in zip((q8, k8, v8, qd, kd, vd), (bshd,) * 3 + (bhn, bhn, bh))]
    compiled = jax.jit(fn).lower(*args).compile()
    assert _collectives(compiled) == set()
    got = compiled(*args)
    np.testing.assert_array_equal(np.asarray(got[0], np.float32), np.asarray(want[0], np.float32))
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-6, atol=1e-6)
    assert tuple(got[0].sharding.spec)[:3] == ("b", None, "h")


def test_fp8_precision_path_sharded_forward_and_grad():
    mesh = _mesh((2, 4), ("b", "h"))
    q, k, v, dout, _ = _inputs(5, 4, 96, 96, 8, 4, 64)

    def fn(q, k, v, dout):
        out, vjp = jax.vjp(lambda q, k, v: jax_flash3.flash_attention(
            q, k, v, causal=True, precision="fp8", implementation="reference"), q, k, v)
        return (out,) + vjp(dout)

    want = fn(q, k, v, dout)
    sh = NamedSharding(mesh, P("b", None, "h", None))
    args = [jax.device_put(x, sh) for x in (q, k, v, dout)]
    compiled = jax.jit(fn).lower(*args).compile()
    # The backward is the ordinary partitioned backward; nothing gathers the heads or the batch.
    assert not {"all-gather", "collective-permute", "all-to-all"} & _collectives(compiled)
    # At head dim 64 precision="fp8" adds the residual term of q and v (kernel run at head dim
    # 128); the per-shard float32 arithmetic then rounds a few bfloat16 outputs of the sharded
    # program one unit differently (measured: <= 3.9e-3 at max|out| 3.5, i.e. one bf16 step at
    # 0.5-1; the gradients inherit it through rowsum(dout * out)). Allow two bf16 steps of each
    # array's largest entry: a wrong shard layout would be off by O(1).
    for a, b in zip(compiled(*args), want):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=0, atol=2.0**-7 * np.abs(b).max())
    # Without the residual term the sharded program is the unsharded one to float32 rounding.
    def fn1(q, k, v, dout):
        out, vjp = jax.vjp(lambda q, k, v: jax_flash3.fp8.attention(
            q, k, v, causal=True, implementation="reference", residual=False), q, k, v)
        return (out,) + vjp(dout)

    want1 = fn1(q, k, v, dout)
    for a, b in zip(jax.jit(fn1)(*args), want1):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,s,hq,hk,causal,kv_sharded,explicit", [
    (8, 256, 2, 2, True, False, False),   # 2 scale blocks on 8 devices
    (8, 256, 4, 2, False, False, False),  # GQA
    (4, 640, 2, 1, True, True, False),    # 5 blocks on 4 devices, K/V sequence sharded too
    (8, 256, 2, 2, True, False, True),    # explicit mesh axes
])
def test_fp8_precision_path_sequence_sharded_grad(n, s, hq, hk, causal, kv_sharded, explicit):
    # precision="fp8" quantizes per 128-row block inside jit. With the query sequence sharded,
    # the block axis is smaller than (or no multiple of) the mesh axis; it once reached the FP8
    # call sharded over part of the axis, which the partitioner could not take (compile error).
    mesh = _mesh((n,), ("x",))
    if explicit:
        mesh = jax.sharding.Mesh(mesh.devices, ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
    q, k, v, dout, _ = _inputs(31 + n + hq, 1, s, s, hq, hk, 32)

    def out_and_grads(q, k, v):
        def loss(q, k, v):
            out = jax_flash3.flash_attention(q, k, v, causal=causal, precision="fp8",
                                             implementation="reference")
            return jnp.sum(out * dout), out

        (_, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
        return out, *grads

    want = jax.jit(out_and_grads)(q, k, v)
    seq, rep = NamedSharding(mesh, P(None, "x")), NamedSharding(mesh, P())
    args = [jax.device_put(q, seq)] + [jax.device_put(x, seq if kv_sharded else rep) for x in (k, v)]
    got = jax.jit(out_and_grads)(*args)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.isfinite(a).all(), name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


_HANG_SCRIPT = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jax_flash3
    m = Mesh(np.array(jax.devices()[:2]), ("x",))
    r = np.random.default_rng(int(sys.argv[1]))
    q, k, v = (jnp.asarray(r.standard_normal((1, 256, 2, 32), np.float32), jnp.bfloat16) for _ in range(3))
    f = lambda q, k, v: jax_flash3.flash_attention(q, k, v, causal=True, precision="fp8", implementation="reference")
    g = jax.jit(jax.grad(lambda q, k, v: f(q, k, v).astype(jnp.float32).sum(), (0, 1, 2)))
    qs = jax.device_put(q, NamedSharding(m, P(None, "x")))
    t = time.time()
    got = g(qs, k, v)
    took = time.time() - t
    for a, b in zip(got, g(q, k, v)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=0, atol=2.0**-6 * np.abs(b).max())
    print("ok in %.1f s" % took)
""")


def test_fp8_residual_grad_with_query_sequence_sharded_compiles():
    # jit(grad) of precision="fp8" (bfloat16, head dim <= 64: residual term on), causal, with the
    # query sequence sharded: the per-shard lax.switch of reference backwards once made XLA's
    # while-loop simplifier spend hours on source locations (compile never finished; JAX 0.10.2,
    # CPU). Run in a subprocess so that a regression fails here instead of stalling the suite.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _HANG_SCRIPT, str(np.random.SeedSequence().entropy % 1000)],
                       env=env, capture_output=True, text=True, timeout=240, check=False)
    assert r.returncode == 0 and "ok in" in r.stdout, r.stdout + r.stderr[-3000:]


@pytest.mark.xfail(strict=True, reason=(
    "known limitation: traced descales are checked per (batch, KV head) by a (Hk, group) reshape "
    "of the query heads; with the query heads sharded over more devices than there are KV heads "
    "that reshape shards Hk over part of a mesh axis, which reaches the FP8 call and fails in "
    "the partitioner. A 0/1 grouping matrix fixes it but adds a collective to every head-sharded "
    "call with traced descales."))
def test_fp8_traced_descales_with_query_heads_sharded_past_kv_heads():
    # Traced descales are checked per (batch, KV head) inside jit.
    from jax_flash3 import fp8

    mesh = _mesh((8,), ("h",))
    q, k, v, _, _ = _inputs(41, 2, 256, 256, 8, 2, 32)
    q8, qd = fp8.quantize(q)
    k8, kd = fp8.quantize(k)
    v8, vd = fp8.quantize(v, granularity="head")
    fn = jax.jit(lambda *a: jax_flash3.flash_attention(*a[:3], q_descale=a[3], k_descale=a[4], v_descale=a[5],
                                                       causal=True, return_lse=True,
                                                       implementation="reference"))
    want = fn(q8, k8, v8, qd, kd, vd)
    q8s = jax.device_put(q8, NamedSharding(mesh, P(None, None, "h")))
    got = fn(q8s, k8, v8, qd, kd, vd)
    np.testing.assert_array_equal(np.asarray(got[0], np.float32), np.asarray(want[0], np.float32))
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-6, atol=1e-6)
    # A bad descale still poisons exactly its (batch, KV head): query heads 4-7 of batch 1 here.
    bad = qd.at[1, 5, 0].set(-1.0)
    out, lse = fn(q8s, k8, v8, bad, kd, vd)
    out, lse = np.asarray(out, np.float32), np.asarray(lse)
    assert np.isnan(out[1, :, 4:]).all() and np.isnan(lse[1, 4:]).all()
    np.testing.assert_array_equal(out[0], np.asarray(want[0], np.float32)[0])
    np.testing.assert_array_equal(out[1, :, :4], np.asarray(want[0], np.float32)[1, :, :4])


def test_fp8_sequence_sharding_is_gathered_and_correct():
    from jax_flash3 import fp8

    mesh = _mesh((4,), ("s",))
    q, k, v, _, _ = _inputs(7, 2, 256, 256, 4, 2, 32)
    q8, qd = fp8.quantize(q)
    k8, kd = fp8.quantize(k)
    v8, vd = fp8.quantize(v, granularity="head")
    fn = lambda *a: jax_flash3.flash_attention(*a[:3], q_descale=a[3], k_descale=a[4], v_descale=a[5],
                                               implementation="reference")
    want = fn(q8, k8, v8, qd, kd, vd)
    sh = NamedSharding(mesh, P(None, "s"))
    got = jax.jit(fn)(*(jax.device_put(x, sh) for x in (q8, k8, v8)), qd, kd, vd)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))

"""Shared test helpers: a hand-written attention oracle (forward and gradients) and the FA3 rule.

The oracle is plain numpy in float64 (forward and hand-written VJP): version-independent, no x64
switch, and fast enough on the host even for the GPU suite's 4097-long sequences (one (Sq, Sk)
float64 matrix per head). The formulas are the textbook ones; ``test_reference.py`` checks them
against ``jax.vjp`` of ``jax_flash3.reference.naive_attention`` under x64.

Layouts follow the package: ``q (B, Sq, Hq, D)``, ``k (B, Sk, Hk, D)``, ``v (B, Sk, Hk, Dv)``,
``lse (B, Hq, Sq)``. Masking: query ``i`` sees key ``j`` iff
``i + Sk - Sq - left <= j <= i + Sk - Sq + right`` (a negative side is unbounded).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import NamedTuple

import numpy as np

# --------------------------------------------------------------------------------------------
# Inputs


def seed_of(*params) -> int:
    """A stable per-test seed derived from the test parameters (never Python's salted hash)."""
    return zlib.crc32(repr(params).encode())


def random_qkv(seed, b, sq, sk, hq, hk, d, dv=None, *, q_scale=1.0):
    """Fresh float32 numpy inputs ``(q, k, v)``, standard normal (q times ``q_scale``)."""
    dv = d if dv is None else dv
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, sq, hq, d), dtype=np.float32) * np.float32(q_scale)
    k = rng.standard_normal((b, sk, hk, d), dtype=np.float32)
    v = rng.standard_normal((b, sk, hk, dv), dtype=np.float32)
    return q, k, v


def random_like(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def to_f64(x) -> np.ndarray:
    """Any array (jax or numpy, bf16/fp16/fp32/fp64) as a float64 numpy array, values exact."""
    return np.asarray(x).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Masks


def visible(sq: int, sk: int, window_left: int = -1, window_right: int = -1) -> np.ndarray:
    """Boolean ``(Sq, Sk)``: whether query i sees key j (bottom-right aligned window)."""
    i = np.arange(sq)[:, None]
    j = np.arange(sk)[None, :]
    diag = i + (sk - sq)
    ok = np.ones((sq, sk), bool)
    if window_right >= 0:
        ok &= j <= diag + window_right
    if window_left >= 0:
        ok &= j >= diag - window_left
    return ok


def window_sides(causal: bool, window) -> tuple[int, int]:
    """The contract's ``(causal, window)`` -> ``(left, right)`` with -1 for unbounded."""
    if window is None:
        left, right = -1, -1
    else:
        left = -1 if window[0] is None else int(window[0])
        right = -1 if window[1] is None else int(window[1])
    if causal:
        right = 0
    return left, right


# --------------------------------------------------------------------------------------------
# Oracle


class Oracle(NamedTuple):
    out: np.ndarray  # (B, Sq, Hq, Dv)
    lse: np.ndarray  # (B, Hq, Sq); -inf where a row sees nothing
    dq: np.ndarray | None = None
    dk: np.ndarray | None = None
    dv: np.ndarray | None = None


def oracle(
    q,
    k,
    v,
    dout=None,
    dlse=None,
    *,
    softmax_scale: float | None = None,
    window_left: int = -1,
    window_right: int = -1,
    softcap: float = 0.0,
) -> Oracle:
    """Attention forward in float64, and with ``dout`` (and optional ``dlse``) its VJP.

    Inputs are converted to float64 numpy arrays (pass the low-precision arrays the kernel saw, so
    their rounding is not counted as error). A query row that sees no key gets out 0, lse -inf and
    zero dq.
    """
    q, k, v = (to_f64(x) for x in (q, k, v))
    b, sq, hq, d = q.shape
    sk, hk, dv_dim = k.shape[1], k.shape[2], v.shape[-1]
    g = hq // hk
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else float(softmax_scale)
    # (B, Hk, G, S, D): query head h uses KV head h // G; one broadcasting matmul covers GQA.
    qg = q.transpose(0, 2, 1, 3).reshape(b, hk, g, sq, d)
    kt = k.transpose(0, 2, 3, 1)[:, :, None]  # (B, Hk, 1, D, Sk)
    vg = v.transpose(0, 2, 1, 3)[:, :, None]  # (B, Hk, 1, Sk, Dv)
    vis = visible(sq, sk, window_left, window_right)

    s = np.matmul(qg, kt) * scale  # (B, Hk, G, Sq, Sk)
    t = None
    if softcap:
        t = np.tanh(s / softcap)
        s = softcap * t
    s = np.where(vis, s, -np.inf)
    m = s.max(axis=-1)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    p = np.where(vis, np.exp(s - m_safe[..., None]), 0.0)
    l = p.sum(axis=-1)
    seen = l > 0
    l_safe = np.where(seen, l, 1.0)
    p /= l_safe[..., None]
    o = np.matmul(p, vg)  # (B, Hk, G, Sq, Dv)
    lse = np.where(seen, m_safe + np.log(l_safe), -np.inf)
    out = o.reshape(b, hq, sq, dv_dim).transpose(0, 2, 1, 3)
    lse_out = lse.reshape(b, hq, sq)
    if dout is None:
        return Oracle(out, lse_out)

    do = to_f64(dout).transpose(0, 2, 1, 3).reshape(b, hk, g, sq, dv_dim)
    delta = (do * o).sum(axis=-1)  # rowsum(dO * O)
    if dlse is not None:
        delta = delta - to_f64(dlse).reshape(b, hk, g, sq)  # d lse / d s = p
    dv = np.matmul(p.swapaxes(-1, -2), do).sum(axis=2)  # (B, Hk, Sk, Dv)
    ds = p * (np.matmul(do, vg.swapaxes(-1, -2)) - delta[..., None])  # P * (dP - delta)
    if softcap:
        ds *= 1.0 - t * t
    ds *= scale
    dq = np.matmul(ds, kt.swapaxes(-1, -2))  # (B, Hk, G, Sq, D)
    dk = np.matmul(ds.swapaxes(-1, -2), qg).sum(axis=2)  # (B, Hk, Sk, D)
    return Oracle(
        out,
        lse_out,
        dq.reshape(b, hq, sq, d).transpose(0, 2, 1, 3),
        dk.transpose(0, 2, 1, 3),
        dv.transpose(0, 2, 1, 3),
    )


# --------------------------------------------------------------------------------------------
# Comparisons


def assert_finite(name: str, x) -> None:
    a = to_f64(x)
    bad = ~np.isfinite(a)
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} non-finite values (first at {np.argwhere(bad)[0]})"
    )


def assert_fa3_close(name: str, actual, ref, baseline, *, atol: float, factor: float = 2.0):
    """FA3 rule: max|actual - ref| <= factor * max|baseline - ref| + atol (the rounding noise).

    ``ref`` is the float64 oracle on the same (rounded) inputs; ``baseline`` is plain attention in
    the same low dtype as ``actual``. NaN/inf in ``actual`` never passes. Prints the errors first.
    """
    a, r, bl = to_f64(actual), to_f64(ref), to_f64(baseline)
    assert a.shape == r.shape == bl.shape, f"{name}: shapes {a.shape} {r.shape} {bl.shape}"
    assert_finite(name, actual)
    err = np.abs(a - r)
    base = np.abs(bl - r)
    base = np.where(np.isfinite(base), base, 0.0)  # a NaN-prone baseline must not loosen the bound
    bound = factor * float(base.max(initial=0.0)) + atol
    print(
        f"{name}: max err {err.max(initial=0.0):.3e} mean {err.mean() if err.size else 0.0:.3e} | "
        f"baseline max {base.max(initial=0.0):.3e} mean {base.mean() if base.size else 0.0:.3e} | "
        f"bound {bound:.3e} | ref scale {np.abs(r).max(initial=0.0):.3e}"
    )
    assert err.max(initial=0.0) <= bound, (
        f"{name}: max err {err.max():.3e} > bound {bound:.3e} "
        f"(worst at {np.unravel_index(err.argmax(), err.shape)})"
    )


def assert_tight(name: str, actual, ref, *, rtol: float = 1e-5, atol: float = 1e-6):
    """max|actual - ref| <= rtol * max|ref| + atol: for float32 vs the float64 oracle."""
    a, r = to_f64(actual), to_f64(ref)
    assert a.shape == r.shape, f"{name}: shapes {a.shape} vs {r.shape}"
    assert_finite(name, actual)
    err = np.abs(a - r)
    scale = float(np.abs(r).max(initial=0.0))
    bound = rtol * scale + atol
    print(
        f"{name}: max err {err.max(initial=0.0):.3e} mean {err.mean() if err.size else 0.0:.3e} | "
        f"bound {bound:.3e} | ref scale {scale:.3e}"
    )
    assert err.max(initial=0.0) <= bound, (
        f"{name}: max err {err.max():.3e} > bound {bound:.3e} "
        f"(worst at {np.unravel_index(err.argmax(), err.shape)})"
    )


def assert_lse(name: str, actual, ref, *, tol: float):
    """lse: float32, -inf exactly where the oracle is -inf, close elsewhere (absolute, in nats)."""
    a, r = np.asarray(actual), np.asarray(ref, np.float64)
    assert a.dtype == np.float32, f"{name}: lse dtype {a.dtype}, want float32"
    assert a.shape == r.shape, f"{name}: shapes {a.shape} vs {r.shape}"
    assert not np.isnan(a).any(), f"{name}: NaN in lse"
    dead = np.isneginf(r)
    assert np.array_equal(np.isneginf(a), dead), (
        f"{name}: lse is -inf at {int(np.isneginf(a).sum())} rows, oracle at {int(dead.sum())}"
    )
    assert np.isfinite(a[~dead]).all(), f"{name}: non-finite lse on rows that see keys"
    err = np.abs(a[~dead].astype(np.float64) - r[~dead])
    mean = err.mean() if err.size else 0.0
    print(f"{name}: max err {err.max(initial=0.0):.3e} mean {mean:.3e} | tol {tol:.1e}")
    assert err.max(initial=0.0) <= tol, f"{name}: max err {err.max():.3e} > {tol:.1e}"


def dead_rows(sq: int, sk: int, window_left: int, window_right: int) -> np.ndarray:
    """Boolean ``(Sq,)``: query rows that see no key."""
    return ~visible(sq, sk, window_left, window_right).any(axis=1)


# --------------------------------------------------------------------------------------------
# One attention configuration, run through jax_flash3 and checked against the oracle


@dataclasses.dataclass(frozen=True)
class Case:
    """Shapes and masking of one test configuration (batch, lengths, heads, head dims, mask)."""

    b: int = 1
    sq: int = 17
    sk: int = 128
    hq: int = 2
    hk: int = 1
    d: int = 64
    dv: int | None = None
    causal: bool = False
    window: tuple | None = None
    softcap: float | None = None
    softmax_scale: float | None = None
    q_scale: float = 1.0  # > 1 pushes logits into softcap's nonlinear range / stresses softmax

    @property
    def d_v(self) -> int:
        return self.d if self.dv is None else self.dv

    @property
    def sides(self) -> tuple[int, int]:
        return window_sides(self.causal, self.window)

    def flash_kwargs(self) -> dict:
        return {
            "causal": self.causal,
            "window": self.window,
            "softcap": self.softcap,
            "softmax_scale": self.softmax_scale,
        }

    def oracle_kwargs(self) -> dict:
        left, right = self.sides
        return {
            "softmax_scale": self.softmax_scale,
            "window_left": left,
            "window_right": right,
            "softcap": self.softcap or 0.0,
        }

    def dead_rows(self) -> np.ndarray:
        return dead_rows(self.sq, self.sk, *self.sides)


class Inputs(NamedTuple):
    q: object
    k: object
    v: object
    dout: object  # (B, Sq, Hq, Dv), input dtype
    dlse: object  # (B, Hq, Sq) float32, values representable in the input dtype


def make_inputs(case: Case, dtype, seed: int) -> Inputs:
    """Fresh random normal inputs for ``case`` in ``dtype`` (jax arrays on the default device).

    Rounding to ``dtype`` happens on the host, so making inputs compiles nothing."""
    import jax
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    q, k, v = random_qkv(
        seed, case.b, case.sq, case.sk, case.hq, case.hk, case.d, case.d_v, q_scale=case.q_scale
    )
    rng = np.random.default_rng(seed ^ 0x5EED)
    dout = rng.standard_normal((case.b, case.sq, case.hq, case.d_v), dtype=np.float32)
    dlse = rng.standard_normal((case.b, case.hq, case.sq), dtype=np.float32)
    return Inputs(
        *(jax.device_put(x.astype(dt)) for x in (q, k, v, dout)),
        jax.device_put(dlse.astype(dt).astype(np.float32)),
    )


def flash_forward_fn(case: Case, implementation: str, deterministic: bool = False):
    """jit'ed ``(q, k, v) -> (out, lse)`` through ``jax_flash3.flash_attention``."""
    import jax

    from jax_flash3 import flash_attention

    def fwd(q, k, v):
        return flash_attention(
            q,
            k,
            v,
            **case.flash_kwargs(),
            return_lse=True,
            deterministic=deterministic,
            implementation=implementation,
        )

    return jax.jit(fwd)


def flash_vjp_fn(case: Case, implementation: str, deterministic: bool = False):
    """jit'ed ``(q, k, v, dout, dlse) -> (out, lse, dq, dk, dv)`` through ``flash_attention``."""
    import jax

    fwd = flash_forward_fn(case, implementation, deterministic)

    def fwd_bwd(q, k, v, dout, dlse):
        (out, lse), vjp = jax.vjp(fwd, q, k, v)
        return (out, lse, *vjp((dout, dlse)))

    return jax.jit(fwd_bwd)


def baseline_fn(case: Case, grads: bool = True):
    """Plain attention in the inputs' own dtype (``naive_attention``) and its autodiff VJP: the
    FA3 rule's same-precision baseline. jit'ed ``(q, k, v, dout, dlse) -> (out, dq, dk, dv)``,
    or ``(q, k, v) -> out`` without ``grads``."""
    import jax

    from jax_flash3.reference import naive_attention

    def fwd(q, k, v):
        return naive_attention(q, k, v, return_lse=True, **case.oracle_kwargs())

    def fwd_bwd(q, k, v, dout, dlse):
        (out, lse), vjp = jax.vjp(fwd, q, k, v)
        return (out, *vjp((dout, dlse.astype(lse.dtype))))

    return jax.jit(fwd_bwd) if grads else jax.jit(lambda q, k, v: fwd(q, k, v)[0])


def run_poisoned(fn, args, decoy_args):
    """Call jit'ed ``fn`` on ``args`` after making stale device memory conspicuous.

    Output buffers belong to XLA, so we cannot pre-fill them. Best effort instead: compile first
    (so compilation allocates nothing in between), run once on different ``decoy_args`` and free
    those results, then allocate NaN-filled arrays with exactly the output shapes/dtypes and free
    them, and only then run on ``args``. The allocator tends to hand those just-freed blocks to
    the next outputs of the same size, so an element the kernel never writes shows up as NaN or
    as a decoy value; callers then require every element finite and equal to the oracle.
    """
    import jax

    compiled = fn.lower(*args).compile()
    for x in jax.tree_util.tree_leaves(jax.block_until_ready(compiled(*decoy_args))):
        x.delete()
    shapes = jax.tree_util.tree_leaves(jax.eval_shape(fn, *args))
    # Filled on the host and copied over: no compilation between here and the real call.
    poison = [jax.device_put(np.full(s.shape, np.nan, s.dtype)) for s in shapes]
    for x in jax.block_until_ready(poison):
        x.delete()
    return jax.block_until_ready(compiled(*args))


def is_low_precision(dtype) -> bool:
    return np.dtype(dtype).itemsize < 4


def lse_tolerance(case: Case, implementation: str, lse_ref) -> float:
    """Absolute lse tolerance (nats). lse is float32 on every path: fp32-accurate, except that a
    kernel may evaluate softcap's tanh with the hardware approximation (~5e-4 relative)."""
    finite = np.asarray(lse_ref)[np.isfinite(lse_ref)]
    scale = max(1.0, float(np.abs(finite).max(initial=0.0)))
    if implementation == "reference":
        return 1e-5 * scale
    return 1e-4 * scale + 1e-3 * (case.softcap or 0.0)


def check_dead_rows(case: Case, out, lse, dq=None) -> None:
    """Rows that see no key: out exactly 0, lse exactly -inf, dq exactly 0 (and nothing NaN).
    ``lse=None``: a call that returned no lse (out, and dq if given, are still checked)."""
    dead = case.dead_rows()
    if not dead.any():
        return
    out_dead = to_f64(out)[:, dead]
    assert np.all(out_dead == 0.0), (
        f"out of fully masked rows is not 0: max {np.abs(out_dead).max()}"
    )
    if lse is not None:
        lse_dead = np.asarray(lse)[:, :, dead]
        assert np.all(np.isneginf(lse_dead)), "lse of fully masked rows is not -inf"
    if dq is not None:
        dq_dead = to_f64(dq)[:, dead]
        assert np.all(dq_dead == 0.0), (
            f"dq of fully masked rows is not 0: max {np.abs(dq_dead).max()}"
        )


def _check_out_lse(
    case: Case, dtype, implementation: str, x: Inputs, out, lse, ref: Oracle, base_out
):
    assert out.shape == (case.b, case.sq, case.hq, case.d_v), f"out shape {out.shape}"
    assert out.dtype == np.dtype(dtype), f"out dtype {out.dtype}"
    assert lse.shape == (case.b, case.hq, case.sq), f"lse shape {lse.shape}"
    if is_low_precision(dtype):
        scale = max(1.0, float(np.abs(ref.out).max(initial=0.0)))
        assert_fa3_close("out", out, ref.out, base_out, atol=1e-5 * scale)
    else:
        assert_tight("out", out, ref.out, rtol=1e-5)
    assert_lse("lse", lse, ref.lse, tol=lse_tolerance(case, implementation, ref.lse))


def check_forward(case: Case, dtype, implementation: str, seed: int, *, poison=False, **kw):
    """Forward (out, lse) of ``flash_attention`` vs the float64 oracle. float32: tight tolerance;
    bf16/fp16: the FA3 rule against plain same-dtype attention. Returns ``(out, lse)``."""
    x = make_inputs(case, dtype, seed)
    fn = flash_forward_fn(case, implementation, **kw)
    if poison:
        out, lse = run_poisoned(fn, x[:3], make_inputs(case, dtype, seed + 1)[:3])
    else:
        out, lse = fn(*x[:3])
    ref = oracle(*x[:3], **case.oracle_kwargs())
    base_out = baseline_fn(case, grads=False)(*x[:3]) if is_low_precision(dtype) else None
    _check_out_lse(case, dtype, implementation, x, out, lse, ref, base_out)
    check_dead_rows(case, out, lse)
    return out, lse


def check_backward(case: Case, dtype, implementation: str, seed: int, *, poison=False, **kw):
    """Forward and backward in one jit: out and lse as in ``check_forward``, then dq, dk, dv
    (cotangents on both out and lse) vs the float64 oracle's VJP by the same rules (gradient
    noise term 1e-4 of the gradient's scale, more with softcap).

    Returns ``(out, lse, dq, dk, dv)``."""
    x = make_inputs(case, dtype, seed)
    fn = flash_vjp_fn(case, implementation, **kw)
    if poison:
        res = run_poisoned(fn, tuple(x), tuple(make_inputs(case, dtype, seed + 1)))
    else:
        res = fn(*x)
    out, lse, dq, dk, dv = res
    for name, g, want in (("dq", dq, x.q), ("dk", dk, x.k), ("dv", dv, x.v)):
        assert g.shape == want.shape and g.dtype == want.dtype, f"{name}: {g.shape} {g.dtype}"
    ref = oracle(*x, **case.oracle_kwargs())
    base = baseline_fn(case)(*x) if is_low_precision(dtype) else None
    _check_out_lse(case, dtype, implementation, x, out, lse, ref, None if base is None else base[0])
    if base is not None:
        for name, got, want, bl in zip(("dq", "dk", "dv"), (dq, dk, dv), ref[2:], base[1:]):
            scale = float(np.abs(want).max(initial=0.0))
            atol = 1e-4 * scale + (3e-4 * max(1.0, scale) if case.softcap else 0.0) + 1e-6
            assert_fa3_close(name, got, want, bl, atol=atol)
    else:
        for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), ref[2:]):
            assert_tight(name, got, want, rtol=2e-5)
    check_dead_rows(case, out, lse, dq)
    return res

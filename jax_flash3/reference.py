"""Pure-JAX attention: the CPU / non-Hopper path of jax_flash3 and the tests' fast oracle sibling.

Memory-efficient: a blockwise online softmax over KV blocks (``lax.scan``), so no ``(Sq, Sk)``
matrix is built for long sequences; fp32 accumulation whatever the input dtype. The backward pass
recomputes each block from ``(q, k, v, out, lse)``, the same residual contract as the CUDA kernels.

Shapes follow ``jax.nn.dot_product_attention``: ``q (B, Sq, Hq, D)``, ``k (B, Sk, Hk, D)``,
``v (B, Sk, Hk, Dv)``; ``lse`` is float32 ``(B, Hq, Sq)``, natural log. Masking convention (shared
with the kernels): query ``i`` sees key ``j`` iff
``i + Sk - Sq - window_left <= j <= i + Sk - Sq + window_right``; a negative window side is
unbounded. A query row that sees no key gets output 0 and lse ``-inf``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32
_HI = lax.Precision.HIGHEST

DEFAULT_BLOCK_K = 512


def _visible(sq: int, sk: int, q_idx, k_idx, window_left: int, window_right: int):
    """Boolean (len(q_idx), len(k_idx)) visibility under the bottom-right aligned window."""
    diag = q_idx[:, None] + (sk - sq)
    kk = k_idx[None, :]
    ok = kk < sk
    # A side of Sq + Sk or more spans every key: clamped, diag + window cannot overflow int32.
    window_left = min(window_left, sq + sk)
    window_right = min(window_right, sq + sk)
    if window_right >= 0:
        ok = ok & (kk <= diag + window_right)
    if window_left >= 0:
        ok = ok & (kk >= diag - window_left)
    return ok


def _block_k(sk: int, block_k: int | None) -> int:
    bk = DEFAULT_BLOCK_K if block_k is None else int(block_k)
    return max(1, min(bk, sk))


def _split_kv(x, bk: int):
    """(B, Sk, Hk, D) -> (nblk, B, bk, Hk, D), zero-padded along Sk."""
    b, sk, h, d = x.shape
    nblk = -(-sk // bk)
    pad = nblk * bk - sk
    if pad:
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    return x.reshape(b, nblk, bk, h, d).transpose(1, 0, 2, 3, 4)


def _logits(qg, kb, scale: float, softcap: float):
    """qg (B, Sq, Hk, G, D) f32, kb (B, bk, Hk, D) -> (B, Hk, G, Sq, bk) f32, and tanh if softcap."""
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, kb.astype(_F32), precision=_HI) * scale
    if softcap:
        t = jnp.tanh(s / softcap)
        return softcap * t, t
    return s, None


@functools.partial(
    jax.jit,
    static_argnames=("softmax_scale", "window_left", "window_right", "softcap", "block_k"),
)
def reference_fwd(
    q,
    k,
    v,
    *,
    softmax_scale: float,
    window_left: int = -1,
    window_right: int = -1,
    softcap: float = 0.0,
    block_k: int | None = None,
):
    """Blockwise forward. Returns ``(out (B, Sq, Hq, Dv) in q.dtype, lse f32 (B, Hq, Sq))``."""
    b, sq, hq, d = q.shape
    sk, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = hq // hk
    bk = _block_k(sk, block_k)
    qg = q.astype(_F32).reshape(b, sq, hk, g, d)
    kblocks, vblocks = _split_kv(k, bk), _split_kv(v, bk)
    q_idx = jnp.arange(sq)

    def step(carry, blk):
        m, l, acc = carry
        i, kb, vb = blk
        s, _ = _logits(qg, kb, softmax_scale, softcap)
        vis = _visible(sq, sk, q_idx, i * bk + jnp.arange(bk), window_left, window_right)
        s = jnp.where(vis, s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe[..., None])
        alpha = jnp.exp(m - m_safe)
        l = l * alpha + p.sum(-1)
        acc = acc * alpha[..., None] + jnp.einsum(
            "bhgqk,bkhd->bhgqd", p, vb.astype(_F32), precision=_HI
        )
        return (m_new, l, acc), None

    # Carries built from q (not fresh constants) so they vary like the inputs inside shard_map.
    l0 = jnp.zeros_like(qg[..., 0]).transpose(0, 2, 3, 1)  # (B, Hk, G, Sq)
    init = (jnp.full_like(l0, -jnp.inf), l0, l0[..., None] + jnp.zeros((dv,), _F32))
    nblk = kblocks.shape[0]
    (m, l, acc), _ = lax.scan(step, init, (jnp.arange(nblk), kblocks, vblocks))
    # Only l == 0 is a row that saw nothing; a NaN l (NaN or inf in the inputs) stays NaN.
    seen = l != 0
    out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
    out = out.reshape(b, hq, sq, dv).transpose(0, 2, 1, 3).astype(q.dtype)
    return out, lse.reshape(b, hq, sq)


@functools.partial(
    jax.jit,
    static_argnames=("softmax_scale", "window_left", "window_right", "softcap", "block_k"),
)
def reference_bwd(
    q,
    k,
    v,
    out,
    lse,
    dout,
    dlse=None,
    *,
    softmax_scale: float,
    window_left: int = -1,
    window_right: int = -1,
    softcap: float = 0.0,
    block_k: int | None = None,
):
    """Blockwise backward from the forward residuals. Returns ``(dq, dk, dv)`` in input dtypes.

    ``dlse`` (optional, f32 ``(B, Hq, Sq)``) is the cotangent of the returned lse; it enters as
    ``dS = P * (dP - (rowsum(dO * O) - dlse))``.
    """
    b, sq, hq, d = q.shape
    sk, hk, dv_dim = k.shape[1], k.shape[2], v.shape[-1]
    g = hq // hk
    bk = _block_k(sk, block_k)
    qg = q.astype(_F32).reshape(b, sq, hk, g, d)
    dog = dout.astype(_F32).reshape(b, sq, hk, g, dv_dim)
    # delta_i = rowsum(dO * O) - dlse_i, laid out (B, Hk, G, Sq).
    delta = jnp.einsum("bqhgd,bqhgd->bhgq", dog, out.astype(_F32).reshape(dog.shape), precision=_HI)
    if dlse is not None:
        delta = delta - dlse.astype(_F32).reshape(b, hk, g, sq)
    lse_g = lse.astype(_F32).reshape(b, hk, g, sq)
    # A row that saw nothing has lse -inf: make every p of that row exactly 0 (a NaN lse stays).
    lse_g = jnp.where(lse_g == -jnp.inf, jnp.inf, lse_g)
    kblocks, vblocks = _split_kv(k, bk), _split_kv(v, bk)
    q_idx = jnp.arange(sq)

    def step(dq_acc, blk):
        i, kb, vb = blk
        s, t = _logits(qg, kb, softmax_scale, softcap)
        vis = _visible(sq, sk, q_idx, i * bk + jnp.arange(bk), window_left, window_right)
        p = jnp.where(vis, jnp.exp(s - lse_g[..., None]), 0.0)
        vbf = vb.astype(_F32)
        dv_blk = jnp.einsum("bhgqk,bqhgd->bkhd", p, dog, precision=_HI)
        dp = jnp.einsum("bqhgd,bkhd->bhgqk", dog, vbf, precision=_HI)
        ds = p * (dp - delta[..., None])
        if softcap:
            ds = ds * (1.0 - t * t)
        ds = ds * softmax_scale
        dq_acc = dq_acc + jnp.einsum("bhgqk,bkhd->bqhgd", ds, kb.astype(_F32), precision=_HI)
        dk_blk = jnp.einsum("bhgqk,bqhgd->bkhd", ds, qg, precision=_HI)
        return dq_acc, (dk_blk, dv_blk)

    nblk = kblocks.shape[0]
    dq, (dk, dv) = lax.scan(
        step, jnp.zeros_like(qg), (jnp.arange(nblk), kblocks, vblocks)
    )
    dk = dk.transpose(1, 0, 2, 3, 4).reshape(b, nblk * bk, hk, d)[:, :sk]
    dv = dv.transpose(1, 0, 2, 3, 4).reshape(b, nblk * bk, hk, dv_dim)[:, :sk]
    return dq.reshape(q.shape).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def naive_attention(
    q,
    k,
    v,
    *,
    softmax_scale: float | None = None,
    window_left: int = -1,
    window_right: int = -1,
    softcap: float = 0.0,
    return_lse: bool = False,
):
    """Textbook attention that materializes ``(Sq, Sk)``: for tests and small inputs only.

    Computes in the inputs' dtype (pass float64 arrays under x64 for an oracle). Fully masked rows
    give 0 (and lse ``-inf``), matching the contract of ``flash_attention``.
    """
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    g = hq // hk
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else softmax_scale
    kr = jnp.repeat(k, g, axis=2)
    vr = jnp.repeat(v, g, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, kr, precision=_HI) * scale
    if softcap:
        s = softcap * jnp.tanh(s / softcap)
    vis = _visible(sq, sk, jnp.arange(sq), jnp.arange(sk), window_left, window_right)
    s = jnp.where(vis, s, -jnp.inf)
    m = s.max(-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(vis, jnp.exp(s - m), 0.0)
    l = p.sum(-1, keepdims=True)
    seen = l != 0  # (NaN: not a row that saw nothing)
    p = p / jnp.where(seen, l, 1.0)
    out = jnp.einsum("bhqk,bkhd->bqhd", p, vr, precision=_HI)
    if not return_lse:
        return out
    lse = jnp.where(seen[..., 0], (m + jnp.log(jnp.where(seen, l, 1.0)))[..., 0], -jnp.inf)
    return out, lse

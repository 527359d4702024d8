"""Backend dispatch: one forward and one backward entry point over the CUDA and reference paths.

Both take and return the residual contract ``(q, k, v, out, lse)``; the partitioner
(``_sharding.py``) wraps exactly these two functions.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jax_flash3 import _ffi
from jax_flash3._config import AttentionConfig
from jax_flash3.reference import reference_bwd, reference_fwd


def _ref_kwargs(cfg: AttentionConfig) -> dict:
    return dict(
        softmax_scale=float(cfg.softmax_scale),
        window_left=int(cfg.window_left),
        window_right=int(cfg.window_right),
        softcap=float(cfg.softcap),
    )


def fwd(q, k, v, cfg: AttentionConfig):
    """``(out (B, Sq, Hq, Dv), lse f32 (B, Hq, Sq))`` on the path ``cfg.implementation`` names."""
    ref = lambda q, k, v: reference_fwd(q, k, v, **_ref_kwargs(cfg))
    if cfg.implementation != "cuda":
        return ref(q, k, v)
    cuda = lambda q, k, v: _ffi.fwd(q, k, v, cfg)
    if cfg.auto:
        return lax.platform_dependent(q, k, v, cuda=cuda, default=ref)
    return cuda(q, k, v)


def bwd(q, k, v, out, lse, dout, dlse, cfg: AttentionConfig):
    """``(dq, dk, dv)`` from the residuals, the output cotangent and the lse cotangent."""
    if dlse is None:
        dlse = jnp.zeros(lse.shape, jnp.float32)
    args = (q, k, v, out, lse, dout, dlse)
    ref = lambda *a: reference_bwd(*a, **_ref_kwargs(cfg))
    if cfg.implementation != "cuda":
        return ref(*args)
    cuda = lambda *a: _ffi.bwd(*a, cfg)
    if cfg.auto:
        return lax.platform_dependent(*args, cuda=cuda, default=ref)
    return cuda(*args)

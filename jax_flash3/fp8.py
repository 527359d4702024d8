"""FP8 attention forward: e4m3 quantization with block scales, Hadamard incoherent processing.

Two ways in:

* **Already quantized inputs.** ``flash_attention(q8, k8, v8, q_descale=..., k_descale=...,
  v_descale=...)`` with ``float8_e4m3fn`` q/k/v. The real values are ``q8 * q_descale`` (broadcast
  as below); the output is bfloat16. Forward only: gradients through float8 inputs are refused.
* **Quantize inside ``jit``.** ``flash_attention(q, k, v, precision="fp8")`` (or
  :func:`attention` for the knobs) on bfloat16/float16/float32 inputs: q and k get a random-sign
  Hadamard rotation along the head dim (it leaves ``q @ k.T`` unchanged and spreads outliers over
  the row), then q and k are quantized per block of 128 rows and v per (batch, head) (at head
  dims <= 64 q and v also keep their rounding residual as a second e4m3 term: ``residual`` in
  :func:`attention`); the FP8 kernel runs the forward (the rotation matters most when a few
  head-dim channels of q and k carry large values, as in LLM activations;
  `benchmarks/fp8_accuracy.py` measures it). **Training:** the gradient is that of ordinary
  attention at the *unquantized* inputs, computed by the bf16/fp16 backward kernel from the FP8
  forward's output and log-sum-exp (a straight-through estimator for the quantization).

Descale shapes (``B`` batch, ``Hq``/``Hk`` query/KV heads, ``nq = ceil(Sq / 128)``,
``nk = ceil(Sk / 128)``; ``SCALE_BLOCK = 128`` rows per block scale):

==============  =========================================================================
``q_descale``   ``()``, ``(B, Hq)``, ``(B, Hk)``, ``(B, Hq, nq)`` or ``(B, Hk, nq)`` (a KV-head
                scale applies to every query head of its group)
``k_descale``   ``()``, ``(B, Hk)`` or ``(B, Hk, nk)``
``v_descale``   ``()`` or ``(B, Hk)`` (it folds into the final softmax normalization, so it is
                per head, not per block)
==============  =========================================================================

Every descale must be finite and > 0 (checked when the value is concrete). ``None`` means 1.

The kernel: q·k descales fold into the softmax scale, the v descale into the final 1/l; P is
rounded to e4m3 for the PV product (as the FP8 tensor cores need). The pure-JAX path (CPU, or no
Hopper GPU) dequantizes and runs the float32 reference, so it has the input quantization error
but not P's.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_flash3 import _ffi, _sharding
from jax_flash3._config import AttentionConfig
from jax_flash3.reference import reference_fwd

E4M3 = jnp.dtype(jnp.float8_e4m3fn)
E4M3_MAX = 448.0
SCALE_BLOCK = 128
GRANULARITIES = ("block", "head", "tensor")

_F32 = jnp.float32
_HI = lax.Precision.HIGHEST

__all__ = [
    "E4M3",
    "E4M3_MAX",
    "GRANULARITIES",
    "SCALE_BLOCK",
    "attention",
    "dequantize",
    "hadamard_matrix",
    "quantize",
    "random_signs",
    "rotate",
]


# ------------------------------------------------------------------------------------------------
# Quantization
# ------------------------------------------------------------------------------------------------


def _num_blocks(s: int) -> int:
    return -(-s // SCALE_BLOCK)


def _check_bshd(name: str, x) -> None:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have rank 4 (batch, seq, heads, head_dim), got shape {tuple(x.shape)}")


def quantize(x, *, granularity: str = "block"):
    """Quantize ``x (B, S, H, D)`` to float8_e4m3fn with scales: ``x ≈ x8 * descale``.

    Args:
      x: a floating array ``(B, S, H, D)``.
      granularity: ``"block"`` (one scale per 128 rows of each (batch, head): descale
        ``(B, H, ceil(S/128))``), ``"head"`` (``(B, H)``) or ``"tensor"`` (``()``).

    Returns:
      ``(x8, descale)``: ``x8`` float8_e4m3fn ``(B, S, H, D)`` and a float32 descale of the shape
      above, each block's absolute maximum mapped to 448 (all-zero blocks get descale 1).

    Example::

      q8, q_descale = jax_flash3.fp8.quantize(q)
      k8, k_descale = jax_flash3.fp8.quantize(k)
      v8, v_descale = jax_flash3.fp8.quantize(v, granularity="head")
      out = jax_flash3.flash_attention(q8, k8, v8, q_descale=q_descale, k_descale=k_descale,
                                       v_descale=v_descale)
    """
    _check_bshd("x", x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating array, got {jnp.dtype(x.dtype).name}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    x8, descale, _ = _quantize_with_scaled(x, granularity)
    return x8, descale


def _quantize_with_scaled(x, granularity: str):
    """quantize's ``(x8, descale)`` and the float32 ``x / descale`` that x8 rounds."""
    b, s, h, d = x.shape
    finite = jnp.isfinite(x)
    xa = jnp.where(finite, jnp.abs(x.astype(_F32)), 0.0)  # scales from the finite values
    if granularity == "tensor":
        amax = xa.max()
    elif granularity == "head":
        amax = xa.max(axis=(1, 3))  # (B, H)
    else:
        # A strided window rather than a (n, SCALE_BLOCK) reshape of the sequence: under jit with
        # the sequence sharded, a reshape lets the partitioner shard the block axis over part of
        # a mesh axis (n smaller than, or not a multiple of, the axis size), a sharding the FP8
        # kernel's partitioning rule cannot be handed. The window keeps the block axis unsharded.
        # With explicit mesh axes the window cannot split a sharded sequence by itself: gather
        # the row maxima first ((B, S, H), 1/D of x's size).
        pad = _num_blocks(s) * SCALE_BLOCK - s
        rows = xa.max(axis=3)
        spec = _sharding._explicit_spec(rows)
        if spec is not None and spec[1] is not None:
            mesh = jax.typeof(rows).sharding.mesh
            rows = jax.sharding.reshard(rows, NamedSharding(mesh, P(spec[0], None, spec[2])))
        amax = lax.reduce_window(
            rows, -jnp.inf, lax.max, (1, SCALE_BLOCK, 1), (1, SCALE_BLOCK, 1),
            padding=((0, 0), (0, pad), (0, 0)),
        ).transpose(0, 2, 1)  # (B, H, n)
    descale = jnp.where(amax > 0, amax / E4M3_MAX, 1.0).astype(_F32)
    scaled = x.astype(_F32) / _broadcast_rows(descale, s, h)
    # Non-finite inputs stay visible as NaN (e4m3fn has no infinity) instead of saturating.
    x8 = jnp.where(finite, jnp.clip(scaled, -E4M3_MAX, E4M3_MAX), jnp.nan).astype(E4M3)
    return x8, descale, scaled


def _broadcast_rows(descale, s: int, h: int):
    """A descale of shape (), (B, H) or (B, H, n) as an array broadcastable to (B, S, H, D)."""
    if descale.ndim == 0:
        return descale
    if descale.ndim == 2:
        return descale[:, None, :, None]
    rows = jnp.repeat(descale, SCALE_BLOCK, axis=2)[:, :, :s]  # (B, H, S)
    return rows.transpose(0, 2, 1)[..., None]


def dequantize(x8, descale):
    """float32 ``x8 * descale`` for a descale shaped as :func:`quantize` returns."""
    _check_bshd("x8", x8)
    descale = jnp.asarray(descale, _F32)
    b, s, h, _ = x8.shape
    if descale.ndim == 3 and descale.shape != (b, h, _num_blocks(s)):
        raise ValueError(f"descale must have shape {(b, h, _num_blocks(s))}, got {descale.shape}")
    if descale.ndim == 2 and descale.shape != (b, h):
        raise ValueError(f"descale must have shape {(b, h)}, got {descale.shape}")
    if descale.ndim not in (0, 2, 3):
        raise ValueError(f"descale must have rank 0, 2 or 3, got shape {descale.shape}")
    return x8.astype(_F32) * _broadcast_rows(descale, s, h)


# ------------------------------------------------------------------------------------------------
# Hadamard incoherent processing
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _hadamard_np(d: int) -> np.ndarray:
    p = d & -d  # the largest power of two dividing d: a block-diagonal Sylvester matrix
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    return np.kron(np.eye(d // p), h) / math.sqrt(p)


def hadamard_matrix(d: int):
    """Orthonormal ``(d, d)`` Walsh-Hadamard matrix (block-diagonal when d is not a power of 2)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    return jnp.asarray(_hadamard_np(d), _F32)


def random_signs(key, d: int):
    """float32 ``(d,)`` of random ±1 from a PRNG key: the diagonal of the random-sign rotation."""
    return jax.random.rademacher(key, (d,), dtype=_F32)


def rotate(x, signs):
    """``(x * signs) @ H``: the random-sign Hadamard rotation along the last dim, in float32.

    Applied to both q and k it leaves ``q @ k.T`` unchanged (``H`` is orthonormal) while spreading
    an outlier coordinate over the whole row, which is what makes per-block FP8 scales accurate.
    """
    d = x.shape[-1]
    if signs.shape != (d,):
        raise ValueError(f"signs must have shape ({d},), got {tuple(signs.shape)}")
    return jnp.matmul(x.astype(_F32) * signs.astype(_F32), hadamard_matrix(d), precision=_HI)


# ------------------------------------------------------------------------------------------------
# Descale validation
# ------------------------------------------------------------------------------------------------


def _descale(name: str, x, allowed: dict[tuple, str]):
    """``x`` as float32, checked against the allowed shapes (shape -> its description)."""
    if x is None:
        return jnp.ones((), _F32)
    if isinstance(x, bool) or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a float array or number, got {type(x).__name__}")
    if not hasattr(x, "shape"):
        try:
            x = np.asarray(x, np.float32)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a float array or number, got {type(x).__name__}") from None
    if not jnp.issubdtype(x.dtype, jnp.floating) and not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be a floating array, got dtype {jnp.dtype(x.dtype).name}")
    shape = tuple(x.shape)
    if shape not in allowed:
        raise ValueError(
            f"{name} has shape {shape}; allowed: " + ", ".join(f"{s} {d}" for s, d in allowed.items())
        )
    if not isinstance(x, jax.core.Tracer):
        values = np.asarray(x, np.float64)
        bad = values[~(np.isfinite(values) & (values > 0))]
        if bad.size:
            raise ValueError(
                f"{name} must be finite and > 0 everywhere; got {float(bad.flat[0])} "
                f"({bad.size} of {values.size} entries are not)"
            )
    return jnp.asarray(x, _F32)


def normalize_descales(q, k, v, q_descale, k_descale, v_descale):
    """Validate the descales and broadcast them to the kernel's shapes.

    Returns ``(qd (B, Hq, nq), kd (B, Hk, nk), vd (B, Hk))`` float32.
    """
    b, sq, hq, _ = q.shape
    sk, hk = k.shape[1], k.shape[2]
    nq, nk = _num_blocks(sq), _num_blocks(sk)
    qd = _descale("q_descale", q_descale, {
        (): "(per tensor)", (b, hq): "(B, Hq)", (b, hk): "(B, Hk)",
        (b, hq, nq): "(B, Hq, ceil(Sq/128))", (b, hk, nq): "(B, Hk, ceil(Sq/128))"})
    kd = _descale("k_descale", k_descale, {
        (): "(per tensor)", (b, hk): "(B, Hk)", (b, hk, nk): "(B, Hk, ceil(Sk/128))"})
    vd = _descale("v_descale", v_descale, {(): "(per tensor)", (b, hk): "(B, Hk)"})
    if qd.ndim == 2:
        qd = qd[:, :, None]
    if qd.ndim == 3 and qd.shape[1] != hq:
        qd = jnp.repeat(qd, hq // hk, axis=1)
    qd = jnp.broadcast_to(qd, (b, hq, nq))
    if kd.ndim == 2:
        kd = kd[:, :, None]
    kd = jnp.broadcast_to(kd, (b, hk, nk))
    vd = jnp.broadcast_to(vd, (b, hk))
    return qd, kd, vd


# ------------------------------------------------------------------------------------------------
# Forward on quantized inputs (CUDA kernel or reference)
# ------------------------------------------------------------------------------------------------


def _reference_fp8(q8, k8, v8, qd, kd, vd, cfg: AttentionConfig):
    q = dequantize(q8, qd)
    k = dequantize(k8, kd)
    v = dequantize(v8, vd)
    out, lse = reference_fwd(
        q, k, v, softmax_scale=float(cfg.softmax_scale), window_left=int(cfg.window_left),
        window_right=int(cfg.window_right), softcap=float(cfg.softcap),
    )
    return out.astype(jnp.bfloat16), lse


def forward_quantized(q8, k8, v8, qd, kd, vd, cfg: AttentionConfig):
    """``(out bf16 (B, Sq, Hq, Dv), lse f32 (B, Hq, Sq))`` from e4m3 inputs and normalized descales."""
    ref = lambda *a: _reference_fp8(*a, cfg)
    if cfg.implementation != "cuda":
        return ref(q8, k8, v8, qd, kd, vd)
    cuda = lambda *a: _ffi.fwd_fp8(*a, cfg)
    if cfg.auto:
        return lax.platform_dependent(q8, k8, v8, qd, kd, vd, cuda=cuda, default=ref)
    return cuda(q8, k8, v8, qd, kd, vd)


# ------------------------------------------------------------------------------------------------
# Partitioning under jit: batch and head axes shard with no collectives; the sequence and head-dim
# axes are replicated (sharding them gathers). GQA: query heads are the compound (h g) factor as in
# _sharding.py; a head sharding that does not divide the KV heads runs replicated.


def _fp8_rule(group: int, num_kv_heads: int, *args):
    heads, sizes = _sharding._head_factors(group, num_kv_heads, args[-3])
    rule = (f"b q {heads} d, b k h d, b k h v, b {heads} x, b h y, b h "
            f"-> b q {heads} v, b {heads} q")
    return rule, dict(sizes, need_replication_factors=("q", "d", "k", "v", "x", "y"))


def _fp8_specs(mesh, q, k):
    """(q/out spec, k/v spec, q-descale spec, k-descale spec, v-descale spec, lse spec)."""
    qs, ks = (getattr(x.sharding, "spec", P()) if isinstance(x.sharding, NamedSharding) else P()
              for x in (q, k))
    axes = lambda spec, i: _sharding._spec_axes(spec, i)
    hq, hk = q.shape[2], k.shape[2]
    batch = axes(qs, 0) or axes(ks, 0)
    if q.shape[0] % _sharding._axes_size(mesh, batch):
        batch = ()
    heads = tuple(a for a in (axes(qs, 2) or axes(ks, 2)) if a not in batch)
    if hk % _sharding._axes_size(mesh, heads) or hq % _sharding._axes_size(mesh, heads):
        heads = ()
    b, h = _sharding._entry(batch), _sharding._entry(heads)
    return P(b, None, h, None), P(b, None, h, None), P(b, h, None), P(b, h, None), P(b, h), P(b, h, None)


def _fp8_partition(cfg, mesh, arg_shapes, result_shape):
    if not isinstance(arg_shapes[0].sharding, NamedSharding):
        mesh_specs = (P(),) * 6
    else:
        mesh_specs = _fp8_specs(mesh, arg_shapes[0], arg_shapes[1])
    q_s, kv_s, qd_s, kd_s, vd_s, lse_s = (NamedSharding(mesh, s) for s in mesh_specs)
    lower = lambda *a: forward_quantized(*a, cfg)
    return mesh, lower, (q_s, lse_s), (q_s, kv_s, kv_s, qd_s, kd_s, vd_s)


def _fp8_infer(cfg, mesh, arg_shapes, result_shape):
    if not isinstance(arg_shapes[0].sharding, NamedSharding):
        return NamedSharding(mesh, P()), NamedSharding(mesh, P())
    specs = _fp8_specs(mesh, arg_shapes[0], arg_shapes[1])
    return NamedSharding(mesh, specs[0]), NamedSharding(mesh, specs[5])


def _fp8_impl(q8, k8, v8, qd, kd, vd, cfg):
    return forward_quantized(q8, k8, v8, qd, kd, vd, cfg)


@functools.cache
def _fp8_op(group: int, num_kv_heads: int):
    op = custom_partitioning(_fp8_impl, static_argnums=(6,))
    op.def_partition(
        partition=_fp8_partition, infer_sharding_from_operands=_fp8_infer,
        sharding_rule=functools.partial(_fp8_rule, group, num_kv_heads),
    )
    return op


@functools.cache
def _batchable_fp8(cfg: AttentionConfig):
    @jax.custom_batching.custom_vmap
    def call(q8, k8, v8, qd, kd, vd):
        return tuple(_fp8_op(q8.shape[2] // k8.shape[2], k8.shape[2])(q8, k8, v8, qd, kd, vd, cfg))

    call.def_vmap(functools.partial(_sharding._fold_into_batch, call))
    return call


def partitioned_forward(q8, k8, v8, qd, kd, vd, cfg: AttentionConfig):
    """``forward_quantized`` that partitions itself under ``jit`` (batch/head sharding)."""
    _, _, _, out_spec, lse_spec = _sharding._type_specs(q8, k8, v8)
    return _sharding._in_auto_mode(_batchable_fp8(cfg), (q8, k8, v8, qd, kd, vd), (out_spec, lse_spec))


_NO_GRAD = (
    "gradients with respect to float8_e4m3fn q/k/v (or their descales) are not supported; to "
    "train with an FP8 forward, pass bfloat16/float16 inputs with precision=\"fp8\" (the backward "
    "then runs in the inputs' precision)"
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _quantized_inputs(q8, k8, v8, qd, kd, vd, cfg):
    return partitioned_forward(q8, k8, v8, qd, kd, vd, cfg)


def _quantized_inputs_fwd(q8, k8, v8, qd, kd, vd, cfg):
    return partitioned_forward(q8, k8, v8, qd, kd, vd, cfg), None


def _quantized_inputs_bwd(cfg, residuals, cotangents):
    raise TypeError("jax_flash3.flash_attention: " + _NO_GRAD)


_quantized_inputs.defvjp(_quantized_inputs_fwd, _quantized_inputs_bwd)


def _descales_ok(qd, kd, vd):
    """Per (batch, KV head): whether every descale that (batch, KV head) reads is finite and > 0.

    ``qd (B, Hq, nq)``, ``kd (B, Hk, nk)``, ``vd (B, Hk)`` as ``normalize_descales`` returns them.
    """
    good = lambda d: jnp.isfinite(d) & (d > 0)
    b, hq, nq = qd.shape
    hk = vd.shape[1]
    q_ok = good(qd).reshape(b, hk, (hq // hk) * nq).all(axis=2)
    return q_ok & good(kd).all(axis=2) & good(vd)


def attention_quantized(q8, k8, v8, q_descale, k_descale, v_descale, cfg: AttentionConfig):
    """``(out bf16, lse)`` for validated float8_e4m3fn inputs (``flash_attention`` calls this).

    Concrete descales are checked here (a value that is not finite and > 0 raises). Traced ones
    (arguments of a ``jit``-ed function, or under ``vmap``) have no values at trace time: a
    (batch, KV head) that reads a bad one then returns NaN in every output row that sees a key,
    and NaN log-sum-exp, for all its query heads, so that the error cannot pass unnoticed.
    """
    qd, kd, vd = normalize_descales(q8, k8, v8, q_descale, k_descale, v_descale)
    traced = any(isinstance(d, jax.core.Tracer) for d in (q_descale, k_descale, v_descale))
    if not traced:
        return _quantized_inputs(q8, k8, v8, qd, kd, vd, cfg)
    ok = _descales_ok(qd, kd, vd)  # (B, Hk)
    # v_descale multiplies every output row in the final normalization (kernels and reference);
    # the bad q/k entries become 1 so that the scores stay finite (an inf or NaN score would make
    # its row look empty, whose output is 0) and the NaN reaches every row that sees a key.
    vd = jnp.where(ok, vd, jnp.nan)
    qd = jnp.where(jnp.isfinite(qd) & (qd > 0), qd, 1.0)
    kd = jnp.where(jnp.isfinite(kd) & (kd > 0), kd, 1.0)
    out, lse = _quantized_inputs(q8, k8, v8, qd, kd, vd, cfg)
    ok_q = jnp.repeat(ok, qd.shape[1] // ok.shape[1], axis=1)  # (B, Hq)
    return out, jnp.where(ok_q[:, :, None], lse, jnp.nan)


# ------------------------------------------------------------------------------------------------
# Quantize inside jit: FP8 forward, backward in the inputs' precision
# ------------------------------------------------------------------------------------------------


def _rotate_for_fp8(x, signs):
    """``rotate`` at tensor-core speed, for quantizing to e4m3 right after. The ±1 Sylvester
    blocks and the signs are exact in bfloat16; x (scaled by 1/sqrt(p)) and the float32-accumulated
    product are each rounded to bfloat16 (2^-9 relative, far below e4m3's 2^-4). A bfloat16 result
    halves the bytes the rotation writes and quantize reads twice (amax, then scale)."""
    d = x.shape[-1]
    p = d & -d
    ones = jnp.asarray(_hadamard_np(d) * math.sqrt(p), jnp.bfloat16)  # entries 0, ±1: exact
    xs = (x.astype(_F32) * (signs.astype(_F32) / math.sqrt(p))).astype(jnp.bfloat16)
    return jnp.matmul(xs, ones, preferred_element_type=jnp.bfloat16)


def _residual_e4m3(x8, scaled):
    """The rounding residual of ``x8`` (``scaled = x / descale`` rounded to e4m3) as a second e4m3
    term at the same scale: ``x ≈ (x8 + lo) * descale``. The residual is at most half an e4m3
    step of each element (1/16 of it), far inside e4m3's range; non-finite inputs stay NaN."""
    # The barrier keeps x8 an e4m3 array: with XLA's default excess precision the GPU compiler
    # otherwise folds f32 -> e4m3 -> f32 into the identity, and the residual becomes 0.
    r = scaled - lax.optimization_barrier(x8).astype(_F32)
    return jnp.where(jnp.isfinite(r), jnp.clip(r, -E4M3_MAX, E4M3_MAX), jnp.nan).astype(E4M3)


def _quantize_qkv(q, k, v, signs, granularity: str, residual: bool = False):
    if signs is not None:
        q, k = _rotate_for_fp8(q, signs), _rotate_for_fp8(k, signs)
    q8, qd, q_scaled = _quantize_with_scaled(q, granularity)
    k8, kd, _ = _quantize_with_scaled(k, granularity)
    v8, vd, v_scaled = _quantize_with_scaled(v, "tensor" if granularity == "tensor" else "head")
    if residual:
        # Two e4m3 terms for q and v, one for k, at twice the head dim: [q8, q_lo] . [k8, k8] is
        # (q8 + q_lo) . k8 and P [v8, v_lo] holds P v8 and P v_lo side by side (_fp8_forward adds
        # the halves).
        q8 = jnp.concatenate([q8, _residual_e4m3(q8, q_scaled)], axis=-1)
        k8 = jnp.concatenate([k8, k8], axis=-1)
        v8 = jnp.concatenate([v8, _residual_e4m3(v8, v_scaled)], axis=-1)
    # quantize's scales are positive and well-shaped by construction: broadcast them to the
    # kernel's shapes without normalize_descales' checks (whose value check reads eager arrays
    # back to the host on every call).
    b, sq, hq, _ = q8.shape
    sk, hk = k8.shape[1], k8.shape[2]
    full = lambda d, h, n: jnp.broadcast_to(d if d.ndim == 3 else d.reshape(d.shape + (1,) * (3 - d.ndim)),
                                            (b, h, n))
    qd = full(qd, hq, _num_blocks(sq))
    kd = full(kd, hk, _num_blocks(sk))
    vd = jnp.broadcast_to(vd, (b, hk))
    return q8, k8, v8, qd, kd, vd


def _fp8_forward(q, k, v, signs, cfg_fp8, granularity, residual):
    out, lse = partitioned_forward(*_quantize_qkv(q, k, v, signs, granularity, residual), cfg_fp8)
    if residual:
        d = v.shape[-1]
        out = out[..., :d].astype(_F32) + out[..., d:].astype(_F32)
    return out.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _fp8_attention(q, k, v, signs, cfg_fp8, cfg, granularity, residual):
    return _fp8_forward(q, k, v, signs, cfg_fp8, granularity, residual)


def _fp8_attention_fwd(q, k, v, signs, cfg_fp8, cfg, granularity, residual):
    # The backward reads the LSE (P = exp(S - lse) at the unquantized inputs): always exact here.
    out, lse = _fp8_forward(q, k, v, signs, cfg_fp8.replace(exact_lse=True), granularity, residual)
    return (out, lse), (q, k, v, signs, out, lse)


def _fp8_attention_bwd(cfg_fp8, cfg, granularity, residual, residuals, cotangents):
    q, k, v, signs, out, lse = residuals
    dout, dlse = cotangents
    dq, dk, dv = _sharding.bwd(q, k, v, out, lse, dout, dlse, cfg)
    return dq, dk, dv, None if signs is None else jnp.zeros_like(signs)


_fp8_attention.defvjp(_fp8_attention_fwd, _fp8_attention_bwd)

_DEFAULT_SEED = 0x5EED
# attention(residual=None) turns the second q/v term on up to this head dim.
RESIDUAL_AUTO_MAX_HEAD_DIM = 64


def attention(
    q,
    k,
    v,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window=None,
    softcap: float | None = None,
    return_lse: bool = False,
    deterministic: bool = False,
    implementation: str = "auto",
    granularity: str = "block",
    hadamard: bool = True,
    hadamard_key=None,
    residual: bool | None = None,
):
    """Attention with an FP8 forward on bfloat16/float16/float32 inputs, quantized inside ``jit``.

    Same arguments, shapes and result as :func:`jax_flash3.flash_attention` (``out`` in q's dtype),
    plus:

    Args:
      granularity: scales of q and k: ``"block"`` (per 128 rows of each (batch, head), the
        default), ``"head"`` or ``"tensor"``; v is scaled per (batch, KV head) (per tensor with
        ``"tensor"``).
      hadamard: rotate q and k by a random-sign Hadamard matrix before quantizing (incoherent
        processing: ``q @ k.T`` is unchanged, outliers are spread).
      hadamard_key: PRNG key for the signs; default a fixed key, so results are reproducible.
      residual: also quantize the rounding residuals of q and v as a second e4m3 term each (at
        the same scales) and run the FP8 kernel at twice the head dim, on ``[q8, q_lo]`` and
        ``[k8, k8]`` (so QK^T sees ``q8 + q_lo``) and on ``[v8, v_lo]`` (the two output halves are
        added): twice the FLOPs, and most of q's and v's rounding error gone. ``None`` (default):
        on for head dims <= 64 with ``D == Dv``, where one term misses RMSE 1e-2 on outlier
        inputs (``benchmarks/fp8_accuracy.py``; RESULTS.md has the numbers), off otherwise.
        Needs ``D == Dv <= 128`` (the kernel's 256 at most).

    Differentiable: the gradient is ordinary attention's at the unquantized inputs, from the
    backward kernel of the inputs' precision (see the module docstring).

    Example::

      out = jax_flash3.fp8.attention(q, k, v, causal=True)              # q/k/v bfloat16
      out = jax_flash3.flash_attention(q, k, v, causal=True, precision="fp8")  # the same
    """
    from jax_flash3 import attention as _api  # the public API module (imports this one lazily)

    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if not isinstance(hadamard, (bool, jnp.bool_)):
        raise TypeError(f"hadamard must be a bool, got {type(hadamard).__name__}")
    if not isinstance(return_lse, (bool, jnp.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if residual is not None and not isinstance(residual, (bool, jnp.bool_)):
        raise TypeError(f"residual must be None or a bool, got {type(residual).__name__}")
    kwargs = dict(causal=causal, softmax_scale=softmax_scale, window=window, softcap=softcap,
                  deterministic=deterministic, implementation=implementation)
    # Without return_lse the primal (no gradient) needs no exact LSE; the VJP's forward asks for it.
    cfg_fp8 = _api.make_config(q, k, v, fp8=True, **kwargs).replace(exact_lse=bool(return_lse))
    if implementation == "cuda" and jnp.dtype(q.dtype) not in _ffi.CUDA_DTYPES:
        # float32 inputs: the FP8 forward runs the kernel; the backward can only be the reference.
        kwargs["implementation"] = "auto"
    cfg = _api.make_config(q, k, v, **kwargs)
    d = q.shape[-1]
    if residual is None:  # (the second term needs D == Dv: q's and v's halves share one kernel call)
        residual = d <= RESIDUAL_AUTO_MAX_HEAD_DIM and v.shape[-1] == d
    residual = bool(residual)
    if residual and (d > 128 or v.shape[-1] != d):
        raise ValueError(
            "residual=True runs the FP8 kernel at twice the head dim, so it needs q/k/v head dims "
            f"equal and <= 128; got {d} and {v.shape[-1]}"
        )
    signs = None
    if hadamard:
        key = jax.random.key(_DEFAULT_SEED) if hadamard_key is None else hadamard_key
        signs = random_signs(key, q.shape[-1])
    out, lse = _fp8_attention(q, k, v, signs, cfg_fp8, cfg, granularity, residual)
    return (out, lse) if return_lse else out

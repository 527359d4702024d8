"""jax_flash3's public attention API: validation, implementation choice and the custom VJP."""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jax_flash3 import _ffi, _sharding
from jax_flash3._config import IMPLEMENTATIONS, AttentionConfig

MAX_HEAD_DIM = 256
REFERENCE_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
FP8_DTYPE = jnp.dtype(jnp.float8_e4m3fn)
PRECISIONS = (None, "default", "fp8")


class UnsupportedError(ValueError, RuntimeError):
    """``implementation="cuda"`` was asked for but cannot run; the message says why.

    Subclasses both ValueError (an unsupported configuration) and RuntimeError (no library/GPU).
    """


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")


def _check_arrays(q, k, v, allow_fp8: bool = False) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not _is_array(x):
            raise TypeError(f"{name} must be an array, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(
                f"{name} must have rank 4 (batch, seq, heads, head_dim), got shape {tuple(x.shape)}"
            )
    dtypes = {n: jnp.dtype(x.dtype) for n, x in (("q", q), ("k", k), ("v", v))}
    if len(set(dtypes.values())) != 1:
        raise TypeError(
            "q, k and v must share one dtype, got "
            + ", ".join(f"{n}={d.name}" for n, d in dtypes.items())
        )
    if dtypes["q"] not in REFERENCE_DTYPES and not (allow_fp8 and dtypes["q"] == FP8_DTYPE):
        raise TypeError(
            f"q/k/v dtype must be bfloat16 or float16 (float32 on the reference path; "
            f"float8_e4m3fn with descales, forward only), got {dtypes['q'].name}"
        )
    b, sq, hq, d = q.shape
    bk, sk, hk, dk = k.shape
    bv, skv, hkv, dv = v.shape
    if not (b == bk == bv):
        raise ValueError(f"q, k and v must have equal batch sizes, got q {b}, k {bk}, v {bv}")
    if sk != skv:
        raise ValueError(f"k and v must have the same sequence length, got k {sk}, v {skv}")
    if hk != hkv:
        raise ValueError(f"k and v must have the same number of heads, got k {hk}, v {hkv}")
    if d != dk:
        raise ValueError(f"q and k must have the same head_dim, got q {d}, k {dk}")
    if min(sq, sk) < 1 or b < 1:
        raise ValueError(f"batch and sequence lengths must be >= 1, got q {q.shape}, k {k.shape}")
    if hk < 1 or hq % hk != 0:
        raise ValueError(
            f"number of query heads ({hq}) must be a multiple of the number of key/value heads "
            f"({hk}) (MQA/GQA)"
        )
    for name, dim in (("head_dim of q/k", d), ("head_dim of v", dv)):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name} must be in [1, {MAX_HEAD_DIM}], got {dim}")


def _static_number(name: str, x) -> float:
    if isinstance(x, jax.core.Tracer):
        raise TypeError(f"{name} must be a static Python number, not a traced value")
    if isinstance(x, (bool, jnp.bool_)) or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a real number or None, got {type(x).__name__}")
    if isinstance(x, numbers.Real):
        return float(x)
    # A concrete 0-d numeric array (numpy or jax) is accepted as its value.
    if getattr(x, "shape", None) == () and jnp.issubdtype(getattr(x, "dtype", None), jnp.number):
        if not jnp.issubdtype(x.dtype, jnp.complexfloating):
            return float(x)
    raise TypeError(f"{name} must be a real number or None, got {type(x).__name__}")


def _window_side(name: str, x) -> int:
    if x is None:
        return -1
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"window {name} must be an int >= 0, -1 or None, got {x!r}")
    if x < -1:
        raise ValueError(f"window {name} must be >= 0, or -1/None for unbounded, got {x}")
    return int(x)


_F32_MIN = float(np.finfo(np.float32).smallest_subnormal)
_F32_MAX = float(np.finfo(np.float32).max)


def _positive_float32(x: float) -> bool:
    """Whether x is finite and > 0 and stays so as a float32 (no overflow, no underflow to 0)."""
    return math.isfinite(x) and _F32_MIN <= x <= _F32_MAX


def _parse_window(window, causal: bool) -> tuple[int, int]:
    if window is None:
        left, right = -1, -1
    else:
        if isinstance(window, (str, bytes)) or not hasattr(window, "__len__") or len(window) != 2:
            raise ValueError(f"window must be None or a pair (left, right), got {window!r}")
        if not isinstance(window, (tuple, list, np.ndarray, jax.Array)):
            raise TypeError(
                f"window must be None or a pair (left, right) as a tuple or list, got "
                f"{type(window).__name__} {window!r}"
            )
        left, right = _window_side("left", window[0]), _window_side("right", window[1])
    if causal:
        right = 0
    return left, right


def _resolve_implementation(implementation: str, q, v, fp8: bool = False) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "reference":
        return "reference"
    why = _cuda_blocker(q, v, fp8=fp8)
    if why is None:
        return "cuda"
    if implementation == "cuda":
        raise UnsupportedError(f'implementation="cuda" cannot run: {why}')
    return "reference"


def _on_gpu(x) -> bool:
    """Whether x lives on a GPU; under tracing, whether JAX's default backend is a GPU.

    Under tracing this is only a first guess: an "auto" config also carries ``auto=True`` and the
    backend picks the kernel per lowering platform (``lax.platform_dependent``), so a jit placed
    on the CPU of a GPU machine still runs the reference path.
    """
    if not isinstance(x, jax.core.Tracer) and hasattr(x, "devices"):
        try:
            return all(d.platform == "gpu" for d in x.devices())
        except Exception:
            pass
    return jax.default_backend() == "gpu"


def _cuda_blocker(q, v, fp8: bool = False) -> str | None:
    """Why the CUDA path (the FP8 forward with ``fp8``) cannot run these inputs, or None."""
    d, dv = q.shape[-1], v.shape[-1]
    if fp8:
        if d % 8 or d != dv:
            return f"the FP8 kernel needs equal head dims of q/k and v, multiples of 8; got {d} and {dv}"
        why = _ffi.fp8_unavailable_reason()
    else:
        dtype = jnp.dtype(q.dtype)
        if dtype not in _ffi.CUDA_DTYPES:
            return f"the CUDA kernels take bfloat16 or float16, got {dtype.name}"
        if d % 8 or dv % 8:
            return f"the CUDA kernels need head dims that are multiples of 8, got {d} and {dv}"
        why = _ffi.unavailable_reason()
    if why is not None:
        return why
    if not _on_gpu(q):
        return "the inputs do not live on a GPU"
    return None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, cfg: AttentionConfig):
    return _sharding.fwd(q, k, v, cfg)


def _attention_fwd_rule(q, k, v, cfg: AttentionConfig):
    out, lse = _sharding.fwd(q, k, v, cfg)
    return (out, lse), (q, k, v, out, lse)


def _attention_bwd_rule(cfg: AttentionConfig, residuals, cotangents):
    q, k, v, out, lse = residuals
    dout, dlse = cotangents
    return _sharding.bwd(q, k, v, out, lse, dout, dlse, cfg)


_attention.defvjp(_attention_fwd_rule, _attention_bwd_rule)


def make_config(
    q,
    k,
    v,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window=None,
    softcap: float | None = None,
    deterministic: bool = False,
    implementation: str = "auto",
    fp8: bool = False,
) -> AttentionConfig:
    """Validate arguments exactly as ``flash_attention`` does and return the resolved config.

    ``fp8=True`` resolves the implementation for the FP8 forward kernel (``jax_flash3.fp8``).
    """
    _check_arrays(q, k, v, allow_fp8=fp8)
    for name, flag in (("causal", causal), ("deterministic", deterministic)):
        if not isinstance(flag, (bool, jnp.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    # Both run as float32 in every path: a value that float32 rounds to 0 or inf is refused too.
    if softmax_scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    else:
        scale = _static_number("softmax_scale", softmax_scale)
        if not _positive_float32(scale):
            raise ValueError(
                f"softmax_scale must be a finite number > 0 (in float32: {_F32_MIN:g} to "
                f"{_F32_MAX:g}), got {softmax_scale!r}"
            )
    if softcap is None:
        cap = 0.0
    else:
        cap = _static_number("softcap", softcap)
        if not _positive_float32(cap):
            raise ValueError(
                f"softcap must be None or a finite number > 0 (in float32: {_F32_MIN:g} to "
                f"{_F32_MAX:g}), got {softcap!r}"
            )
    left, right = _parse_window(window, bool(causal))
    # A side of Sq + Sk or more spans every key of every row: clamp it there (same mask), so that
    # no path's int32 index arithmetic (row + offset + window) overflows on e.g. 2**31 - 1.
    span = int(q.shape[1]) + int(k.shape[1])
    left, right = (w if w < 0 else min(w, span) for w in (left, right))
    impl = _resolve_implementation(implementation, q, v, fp8=bool(fp8))
    return AttentionConfig(
        auto=implementation == "auto",
        softmax_scale=scale,
        window_left=left,
        window_right=right,
        softcap=cap,
        deterministic=bool(deterministic),
        implementation=impl,
    )


def flash_attention(
    q,
    k,
    v,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
    deterministic: bool = False,
    implementation: str = "auto",
    precision: str | None = None,
    q_descale=None,
    k_descale=None,
    v_descale=None,
):
    """Scaled dot-product attention, FlashAttention-3 style, in jax.nn.dot_product_attention's layout.

    Args:
      q: queries ``(B, Sq, Hq, D)``.
      k: keys ``(B, Sk, Hk, D)``; ``Hq % Hk == 0`` (MQA/GQA: query head ``h`` uses KV head
        ``h // (Hq // Hk)``).
      v: values ``(B, Sk, Hk, Dv)``.
      causal: mask future keys. Aligned bottom-right when ``Sq != Sk`` (query ``i`` sees key ``j``
        iff ``j <= i + Sk - Sq``), as FlashAttention and chunked prefill/decoding expect; note that
        ``jax.nn.dot_product_attention(is_causal=True)`` aligns top-left instead. Same when Sq == Sk.
      softmax_scale: logit scale, default ``1 / sqrt(D)``.
      window: ``(left, right)`` local attention: key ``j`` is visible to query ``i`` iff
        ``i + Sk - Sq - left <= j <= i + Sk - Sq + right``; ``None`` or ``-1`` on a side means
        unbounded, and so does any side of ``Sq + Sk`` or more (e.g. ``2**31 - 1``). With
        ``causal=True`` the right side is 0.
      softcap: if set (> 0), logits become ``softcap * tanh(logits / softcap)`` after scaling and
        before masking.
      return_lse: also return the float32 log-sum-exp ``(B, Hq, Sq)`` (natural log). FP8 calls
        without it may take the softmax's row sums from the tensor cores (faster; see README.md,
        "FP8 forward").
      deterministic: make the CUDA backward bit-reproducible run to run (slower). The reference
        path is always deterministic.
      implementation: ``"auto"`` (the CUDA kernels when the inputs live on an sm_90 GPU and the
        config is supported, else the pure-JAX reference path), ``"cuda"`` (raise
        ``UnsupportedError`` saying why it cannot run) or ``"reference"``.
      precision: ``None``/``"default"`` computes in the inputs' dtype; ``"fp8"`` quantizes
        bfloat16/float16/float32 inputs to float8_e4m3fn inside the call (q and k per block of 128
        rows after a random-sign Hadamard rotation, v per head; at head dims <= 64 q and v also
        get a second e4m3 term for their rounding residual, which doubles the kernel's FLOPs)
        and runs the FP8 forward kernel; its gradient is ordinary attention's at the unquantized
        inputs, from the backward kernel of the inputs' precision. ``jax_flash3.fp8.attention``
        exposes the knobs.
      q_descale, k_descale, v_descale: for float8_e4m3fn q/k/v only: float32 factors that turn
        the stored values into real ones (``q = q8 * q_descale``). Shapes: ``()``, per (batch,
        head) ``(B, H)``, or for q and k per block of 128 rows ``(B, H, ceil(S/128))``; v per
        (batch, KV head) at most. See ``jax_flash3.fp8``; ``jax_flash3.fp8.quantize`` makes them.
        Each must be finite and > 0: a concrete one that is not raises ``ValueError``; a traced
        one (a ``jit`` argument) cannot be checked while tracing, so a bad value there turns the
        output rows and lse of the (batch, KV head) that reads it into NaN.

    Returns:
      ``out (B, Sq, Hq, Dv)`` in q's dtype, or ``(out, lse)`` if ``return_lse``. A query row that
      sees no key gets output 0 and lse ``-inf`` (and zero gradients); NaN in the inputs makes
      the rows it reaches NaN instead (a query's own row, every row that sees a NaN key).

    Supported dtypes: bfloat16 and float16 (both paths), float32 (reference path),
    float8_e4m3fn with descales (forward only; the output is bfloat16). Head dims up
    to 256 (multiples of 8 on the CUDA path). Differentiable in q, k, v (``jax.custom_vjp`` with
    residuals ``(q, k, v, out, lse)``); works under ``jit``, ``grad``, ``vmap`` and ``checkpoint``.

    Example::

      q = jax.random.normal(key, (2, 1024, 8, 128), jnp.bfloat16)
      k = v = jax.random.normal(key, (2, 1024, 2, 128), jnp.bfloat16)  # GQA 8:2
      out = jax_flash3.flash_attention(q, k, v, causal=True)
    """
    if not isinstance(return_lse, (bool, jnp.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if not isinstance(precision, (str, type(None))) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kwargs = dict(causal=causal, softmax_scale=softmax_scale, window=window, softcap=softcap,
                  deterministic=deterministic, implementation=implementation)
    descales = {"q_descale": q_descale, "k_descale": k_descale, "v_descale": v_descale}
    if all(_is_array(x) and jnp.dtype(x.dtype) == FP8_DTYPE for x in (q, k, v)):
        from jax_flash3 import fp8  # noqa: PLC0415 (fp8 imports this module)

        # (No gradient flows through float8 inputs: the LSE must be exact only when returned.)
        cfg = make_config(q, k, v, fp8=True, **kwargs).replace(exact_lse=bool(return_lse))
        out, lse = fp8.attention_quantized(q, k, v, q_descale, k_descale, v_descale, cfg)
        return (out, lse) if return_lse else out
    given = [name for name, x in descales.items() if x is not None]
    if given:
        _check_arrays(q, k, v, allow_fp8=True)  # mixed dtypes: say so, not "not float8"
        dtype = jnp.dtype(q.dtype).name if _is_array(q) else type(q).__name__
        raise ValueError(
            f"{', '.join(given)} apply only to float8_e4m3fn q/k/v, got {dtype} inputs "
            "(precision=\"fp8\" quantizes bfloat16/float16 inputs itself)"
        )
    if precision == "fp8":
        from jax_flash3 import fp8  # noqa: PLC0415

        return fp8.attention(q, k, v, return_lse=return_lse, **kwargs)
    cfg = make_config(q, k, v, **kwargs)
    out, lse = _attention(q, k, v, cfg)
    return (out, lse) if return_lse else out


def attention_with_config(q, k, v, cfg: AttentionConfig):
    """``(out, lse)`` for an already validated config (used by ring attention and the modules)."""
    return _attention(q, k, v, cfg)

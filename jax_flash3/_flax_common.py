"""What the linen and nnx integrations share: flax's attention-hook contract mapped onto
``flash_attention``, and the refusals for what that contract asks and we cannot honor.

No flax import here: ``jax_flash3.flax`` and ``jax_flash3.nnx`` import flax, this module does not.

Flax's attention functions take ``query (*batch, Sq, Hq, D)``, ``key (*batch, Sk, Hk, D)``,
``value (*batch, Sk, Hk, Dv)`` with any number of leading batch dims (zero included) and return
``(*batch, Sq, Hq, Dv)``; ``flash_attention`` takes exactly one batch dim, so we flatten.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

from jax_flash3.attention import flash_attention

MASK_HINT = (
    "jax_flash3 takes its mask as structure, not as an array: use causal=True (bottom-right "
    "aligned) and/or window=(left, right) on jax_flash3.flax.MultiHeadAttention / "
    "jax_flash3.nnx.MultiHeadAttention or make_attention_fn(...) instead of "
    "nn.make_causal_mask(...)/nn.make_attention_mask(...). Arbitrary (e.g. padding) masks are "
    "not supported; keep flax's own attention for those."
)

DROPOUT_HINT = (
    "jax_flash3 never materializes the attention weights, so attention-weight dropout cannot be "
    "applied. Use dropout_rate=0.0 (put dropout on the residual/MLP instead), or run with "
    "deterministic=True (evaluation), where dropout is a no-op."
)


def check_dropout(dropout_rate: float, deterministic: bool | None, where: str) -> None:
    """Refuse attention dropout in training. ``deterministic=None`` with a rate > 0 is ambiguous."""
    if not dropout_rate:
        return
    if deterministic is None:
        raise ValueError(
            f"{where}: dropout_rate={dropout_rate} needs deterministic=True or False (given neither "
            f"as a constructor field nor a call argument); and with deterministic=False it is "
            f"refused: {DROPOUT_HINT}"
        )
    if not deterministic:
        raise ValueError(
            f"{where}: dropout_rate={dropout_rate} with deterministic=False is not supported: "
            f"{DROPOUT_HINT}"
        )


def check_no_mask(mask, where: str) -> None:
    if mask is not None:
        raise ValueError(f"{where}: mask is not supported (got an array of shape "
                         f"{getattr(mask, 'shape', '?')}). {MASK_HINT}")


def _is_default(value, default) -> bool:
    if value is default:
        return True
    try:
        return bool(value == default)
    except Exception:  # (arrays, objects without a plain ==)
        return False


def check_flax_only_fields(given: dict, defaults: dict, where: str) -> None:
    """Fields flax's module has and this one does not implement (a custom ``attention_fn``,
    dot_generals, promote functions, parameter metadata): accepted at flax's default value,
    refused otherwise with a ``ValueError`` naming the field (never silently ignored)."""
    for name, value in given.items():
        if name in defaults and not _is_default(value, defaults[name]):
            hint = (" (this module computes attention itself: pass causal=, window=, softcap= "
                    "instead, or plug jax_flash3's attention_fn into flax's own module)"
                    if name == "attention_fn" else "")
            raise ValueError(f"{where}: {name}={value!r} is not supported{hint}")


def check_no_decode(decode, where: str) -> None:
    if decode:
        raise ValueError(
            f"{where}: decode=True (the autoregressive KV cache) is not supported. The parameter "
            f"tree is flax's own, so load the same params into flax's MultiHeadDotProductAttention "
            f"/ nnx.MultiHeadAttention for cached decoding."
        )


def check_no_sow(sow_weights: bool, where: str) -> None:
    if sow_weights:
        raise ValueError(
            f"{where}: sow_weights=True is not supported: jax_flash3 never materializes the "
            f"attention weights (that is the point of flash attention)."
        )


def check_no_input_positions(input_positions, where: str) -> None:
    if input_positions is not None:
        raise ValueError(
            f"{where}: input_positions is not supported (flax forwards it to attention functions "
            f"that apply rotary embeddings, e.g. dot_product_attention_with_rope); apply RoPE to "
            f"the queries and keys before attention instead."
        )


def _window_pair(window) -> tuple[int, int]:
    if window is None:
        return -1, -1
    left, right = window
    return (-1 if left is None else left), (-1 if right is None else right)


def _merge_right(a: int, b: int) -> int:
    """The tighter of two right bounds, -1 meaning unbounded."""
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)


def attend(
    query,
    key,
    value,
    *,
    causal: bool = False,
    window=None,
    softcap: float | None = None,
    softmax_scale: float | None = None,
    implementation: str = "auto",
    deterministic_backward: bool = False,
    fp8: bool = False,
    dtype: Any = None,
    is_causal_top_left: bool = False,
    where: str = "jax_flash3",
):
    """``flash_attention`` over flax's layout ``(*batch, S, H, D)``.

    ``dtype``: compute dtype (q, k and v are cast to it); ``None`` promotes q, k, v to a common
    dtype, as flax's ``dot_product_attention`` does. ``is_causal_top_left``: nnx's ``is_causal``
    (a ``tril`` mask, top-left aligned). It equals our bottom-right causal when Sq == Sk, is the
    window ``(-1, Sq - Sk)`` when Sq > Sk, and cannot be expressed when Sq < Sk (our windows are
    relative to the bottom-right diagonal and a right bound must be >= 0), so it is refused there.
    ``fp8``: ``flash_attention(precision="fp8")`` (FP8 forward, backward in the compute dtype).
    """
    if not isinstance(fp8, (bool, jnp.bool_)):
        raise TypeError(f"{where}: fp8 must be a bool, got {type(fp8).__name__}")
    if query.ndim < 3 or key.ndim != query.ndim or value.ndim != query.ndim:
        raise ValueError(
            f"{where}: query, key and value must have shape (*batch, length, heads, head_dim) with "
            f"the same rank, got query {query.shape}, key {key.shape}, value {value.shape}"
        )
    batch = query.shape[:-3]
    if key.shape[:-3] != batch or value.shape[:-3] != batch:
        raise ValueError(
            f"{where}: query, key and value must share their batch dims, got query {query.shape}, "
            f"key {key.shape}, value {value.shape}"
        )
    compute = jnp.dtype(dtype) if dtype is not None else jnp.result_type(query, key, value)
    flat = math.prod(batch)
    q = query.astype(compute).reshape(flat, *query.shape[-3:])
    k = key.astype(compute).reshape(flat, *key.shape[-3:])
    v = value.astype(compute).reshape(flat, *value.shape[-3:])

    if is_causal_top_left:
        sq, sk = q.shape[1], k.shape[1]
        if sq < sk:
            raise ValueError(
                f"{where}: is_causal=True with query length {sq} < key length {sk}: flax aligns "
                f"that mask top-left, which jax_flash3 cannot express. Use causal=True on the "
                f"module (or make_attention_fn(causal=True)) for the bottom-right aligned mask "
                f"that chunked prefill and decoding need."
            )
        if sq == sk:
            causal = True
        else:
            left, right = _window_pair(window)
            window = (left, _merge_right(0 if causal else right, sq - sk))
            causal = False

    out = flash_attention(
        q, k, v,
        causal=causal,
        window=window,
        softcap=softcap,
        softmax_scale=softmax_scale,
        deterministic=deterministic_backward,
        implementation=implementation,
        precision="fp8" if fp8 else None,
    )
    return out.reshape(*batch, *out.shape[1:])

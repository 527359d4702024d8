"""jax_flash3 inside Flax linen models.

- ``MultiHeadAttention``: a drop-in for ``flax.linen.MultiHeadDotProductAttention`` with the same
  submodules (``query``, ``key``, ``value``, ``out``; ``query_ln``/``key_ln`` with
  ``normalize_qk``), hence the same parameter tree: checkpoints load unchanged. Adds ``causal``,
  ``window``, ``softcap``, ``softmax_scale`` and ``num_kv_heads`` (GQA).
- ``attention_fn`` / ``make_attention_fn(...)``: adapters for linen's (and nnx's) ``attention_fn``
  hook, for models that already build ``nn.MultiHeadDotProductAttention``.

Import explicitly (flax is an optional dependency; ``import jax_flash3`` does not import it)::

    import jax_flash3.flax as jf3
    layer = jf3.MultiHeadAttention(num_heads=8, causal=True)

What cannot be honored is refused with a ``ValueError`` rather than silently ignored: array masks
and biases (use ``causal``/``window``), attention-weight dropout in training, ``decode=True`` and
``sow_weights=True``.
"""

from __future__ import annotations

# This file is jax_flash3/flax.py: absolute imports (the Python 3 default) still resolve ``flax``
# to the top-level Flax package, not to this module.
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jax_flash3 import _flax_common
from jax_flash3._flax_common import attend

__all__ = ["MultiHeadAttention", "attention_fn", "make_attention_fn"]

_default_kernel_init = nn.initializers.lecun_normal()  # = flax.linen.linear.default_kernel_init

# Keyword arguments flax may pass to an attention_fn that are fine to ignore at these values.
_IGNORABLE_DEFAULTS = (None, False, 0, 0.0)


def make_attention_fn(
    *,
    causal: bool = False,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    softmax_scale: float | None = None,
    implementation: str = "auto",
    deterministic_backward: bool = False,
    fp8: bool = False,
) -> Callable[..., Any]:
    """An ``attention_fn`` for ``nn.MultiHeadDotProductAttention`` (or ``nnx.MultiHeadAttention``)
    that runs ``jax_flash3.flash_attention`` with this configuration.

    Example::

        layer = nn.MultiHeadDotProductAttention(
            num_heads=8, attention_fn=jax_flash3.flax.make_attention_fn(causal=True))

    The returned function takes flax's ``dot_product_attention`` arguments: ``query
    (*batch, Sq, Hq, D)``, ``key (*batch, Sk, Hk, D)``, ``value (*batch, Sk, Hk, Dv)``, returns
    ``(*batch, Sq, Hq, Dv)``. It raises ``ValueError`` naming the argument for ``bias``, ``mask``,
    dropout with ``deterministic=False``, ``module`` (``sow_weights=True``), custom einsums and
    ``input_positions`` (nnx's RoPE hook).
    ``is_causal=True`` (nnx) is honored with flax's top-left alignment where that is expressible
    (Sq >= Sk). ``precision`` and ``force_fp32_for_softmax`` are accepted and need nothing: the
    softmax and accumulation are always float32.

    Args:
      causal: bottom-right aligned causal mask (same as top-left when Sq == Sk).
      window: ``(left, right)`` local attention, see ``jax_flash3.flash_attention``.
      softcap: logit soft-capping ``softcap * tanh(logits / softcap)``.
      softmax_scale: logit scale, default ``1 / sqrt(D)`` (flax's default too).
      implementation: ``"auto"``, ``"cuda"`` or ``"reference"``.
      deterministic_backward: bit-reproducible backward on the CUDA path (``flash_attention``'s
        ``deterministic``; flax's ``deterministic`` means "no dropout").
      fp8: FP8 forward (``flash_attention(precision="fp8")``: q/k/v quantized to e4m3 inside the
        call); the backward runs in the compute dtype.
    """

    def attention_fn(
        query,
        key,
        value,
        bias=None,
        mask=None,
        broadcast_dropout: bool = True,
        dropout_rng=None,
        dropout_rate: float = 0.0,
        deterministic: bool = False,
        dtype=None,
        precision=None,
        module=None,
        force_fp32_for_softmax: bool = False,
        einsum_dot_general=None,
        qk_attn_weights_einsum=None,
        attn_weights_value_einsum=None,
        promote_dtype=None,
        is_causal: bool = False,
        input_positions=None,
        **unknown,
    ):
        del broadcast_dropout, dropout_rng, precision, force_fp32_for_softmax, promote_dtype
        where = "jax_flash3.flax.attention_fn"
        if bias is not None:
            raise ValueError(
                f"{where}: bias is not supported (got an array of shape "
                f"{getattr(bias, 'shape', '?')}); use softcap/window/causal, or flax's own "
                f"dot_product_attention for additive biases."
            )
        _flax_common.check_no_mask(mask, where)
        _flax_common.check_dropout(dropout_rate, deterministic, where)
        if module is not None:
            _flax_common.check_no_sow(True, where)
        _flax_common.check_no_input_positions(input_positions, where)
        for name, fn in (
            ("einsum_dot_general", einsum_dot_general),
            ("qk_attn_weights_einsum", qk_attn_weights_einsum),
            ("attn_weights_value_einsum", attn_weights_value_einsum),
        ):
            if fn is not None:
                raise ValueError(
                    f"{where}: {name} is not supported: the attention matmuls run inside "
                    f"jax_flash3's fused kernel and cannot be replaced (e.g. by AQT einsums)."
                )
        for name, val in unknown.items():
            if not any(val is d or (type(val) is type(d) and val == d) for d in _IGNORABLE_DEFAULTS):
                raise ValueError(f"{where}: argument {name}={val!r} is not supported")
        return attend(
            query, key, value,
            causal=causal,
            window=window,
            softcap=softcap,
            softmax_scale=softmax_scale,
            implementation=implementation,
            deterministic_backward=deterministic_backward,
            fp8=fp8,
            dtype=dtype,
            is_causal_top_left=bool(is_causal),
            where=where,
        )

    return attention_fn


attention_fn = make_attention_fn()
attention_fn.__doc__ = (
    "Non-causal, unwindowed ``jax_flash3`` attention for linen's/nnx's ``attention_fn`` hook; "
    "see ``make_attention_fn`` for configured ones and for what is refused."
)


# flax.linen.MultiHeadDotProductAttention's fields that MultiHeadAttention accepts only at their
# defaults (None here: flax's default attention_fn is accepted too).
_LINEN_FLAX_ONLY = ("attention_fn", "qkv_dot_general", "out_dot_general", "qkv_dot_general_cls",
                    "out_dot_general_cls")


class MultiHeadAttention(nn.Module):
    """Multi-head attention on ``jax_flash3.flash_attention``; a drop-in for
    ``flax.linen.MultiHeadDotProductAttention``.

    Same fields (``num_heads``, ``dtype``, ``param_dtype``, ``qkv_features``, ``out_features``,
    ``broadcast_dropout``, ``dropout_rate``, ``deterministic``, ``precision``, ``kernel_init``,
    ``out_kernel_init``, ``bias_init``, ``out_bias_init``, ``use_bias``, ``decode``,
    ``normalize_qk``, ``force_fp32_for_softmax``), same call convention (``inputs_q``,
    ``inputs_k``, ``inputs_v``, ``inputs_kv``, ``mask``, ``deterministic``, ``dropout_rng``,
    ``sow_weights``) and the same parameter tree, so a flax checkpoint loads unchanged.

    jax_flash3 extensions:
      num_kv_heads: key/value heads (GQA/MQA); ``num_heads % num_kv_heads == 0``. With
        ``num_kv_heads < num_heads`` the ``key``/``value`` kernels are ``(features, num_kv_heads,
        head_dim)``, so the tree then (necessarily) differs from flax's linen module, which has no
        GQA; it matches ``flax.nnx.MultiHeadAttention(num_kv_heads=...)``'s shapes.
      causal: causal mask, bottom-right aligned when the query and key lengths differ.
      window: ``(left, right)`` sliding-window attention (``None``/-1 side = unbounded).
      softcap: logit soft-capping ``softcap * tanh(logits / softcap)``.
      softmax_scale: logit scale, default ``1 / sqrt(head_dim)`` like flax.
      implementation: ``"auto"`` (CUDA kernels on an sm_90 GPU with bf16/fp16, else the
        pure-JAX path), ``"cuda"`` or ``"reference"``.
      deterministic_backward: bit-reproducible backward on the CUDA path (flax's
        ``deterministic`` keeps its meaning: no dropout).
      fp8: FP8 forward (``flash_attention(precision="fp8")``); backward in the compute dtype.

    Refused with ``ValueError``: a ``mask`` array (use ``causal``/``window``), ``dropout_rate > 0``
    unless deterministic, ``decode=True``, ``sow_weights=True``. ``force_fp32_for_softmax`` and
    ``precision`` are accepted; the softmax and accumulators are always float32.

    Shapes: ``inputs_q (*batch, Sq, features)``, ``inputs_k``/``inputs_v (*batch, Sk, features)``
    → ``(*batch, Sq, out_features)``.
    """

    num_heads: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    qkv_features: int | None = None
    out_features: int | None = None
    broadcast_dropout: bool = True
    dropout_rate: float = 0.0
    deterministic: bool | None = None
    precision: Any = None
    kernel_init: Callable[..., Any] = _default_kernel_init
    out_kernel_init: Callable[..., Any] | None = None
    bias_init: Callable[..., Any] = nn.initializers.zeros_init()
    out_bias_init: Callable[..., Any] | None = None
    use_bias: bool = True
    decode: bool = False
    normalize_qk: bool = False
    force_fp32_for_softmax: bool = False
    # flax's fields this module does not implement: accepted at flax's defaults, else refused.
    attention_fn: Callable[..., Any] | None = None
    qkv_dot_general: Any = None
    out_dot_general: Any = None
    qkv_dot_general_cls: Any = None
    out_dot_general_cls: Any = None
    # jax_flash3 extensions.
    num_kv_heads: int | None = None
    causal: bool = False
    window: tuple[int | None, int | None] | None = None
    softcap: float | None = None
    softmax_scale: float | None = None
    implementation: str = "auto"
    deterministic_backward: bool = False
    fp8: bool = False

    @nn.compact
    def __call__(
        self,
        inputs_q,
        inputs_k=None,
        inputs_v=None,
        *,
        inputs_kv=None,
        mask=None,
        deterministic: bool | None = None,
        dropout_rng=None,
        sow_weights: bool = False,
    ):
        """``inputs_q (*batch, Sq, features)``; ``inputs_k`` defaults to ``inputs_q`` and
        ``inputs_v`` to ``inputs_k`` (``inputs_kv`` sets both, flax's deprecated form).
        Returns ``(*batch, Sq, out_features or features)``."""
        del dropout_rng  # never used: dropout in training is refused below
        where = "jax_flash3.flax.MultiHeadAttention"
        if inputs_kv is not None:
            if inputs_k is not None or inputs_v is not None:
                raise ValueError(
                    f"{where}: pass either inputs_kv or inputs_k/inputs_v, not both")
            inputs_k = inputs_v = inputs_kv
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError(
                    f"{where}: inputs_k cannot be None if inputs_v is not None (to use one array "
                    f"for both, pass it as inputs_k)")
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        _flax_common.check_no_mask(mask, where)
        _flax_common.check_no_decode(self.decode, where)
        _flax_common.check_no_sow(sow_weights, where)
        given = {name: getattr(self, name) for name in _LINEN_FLAX_ONLY}
        if given["attention_fn"] is nn.dot_product_attention:  # flax's default, spelled out
            given["attention_fn"] = None
        _flax_common.check_flax_only_fields(given, dict.fromkeys(_LINEN_FLAX_ONLY), where)
        if self.dropout_rate:
            _flax_common.check_dropout(
                self.dropout_rate, _merge(self.deterministic, deterministic), where)

        features = self.out_features or inputs_q.shape[-1]
        qkv_features = self.qkv_features or inputs_q.shape[-1]
        num_kv_heads = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
        if qkv_features % self.num_heads:
            raise ValueError(
                f"{where}: qkv_features ({qkv_features}) must be divisible by num_heads "
                f"({self.num_heads})")
        if num_kv_heads < 1 or self.num_heads % num_kv_heads:
            raise ValueError(
                f"{where}: num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({num_kv_heads})")
        head_dim = qkv_features // self.num_heads

        dense = functools.partial(
            nn.DenseGeneral,
            axis=-1,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            use_bias=self.use_bias,
            precision=self.precision,
        )
        # (*batch, length, heads, head_dim), the layout flash_attention takes.
        query = dense(features=(self.num_heads, head_dim), name="query")(inputs_q)
        key = dense(features=(num_kv_heads, head_dim), name="key")(inputs_k)
        value = dense(features=(num_kv_heads, head_dim), name="value")(inputs_v)
        if self.normalize_qk:
            # QK normalization (ViT-22B, arxiv.org/abs/2302.05442), as flax does it.
            layer_norm = functools.partial(
                nn.LayerNorm, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
            query = layer_norm(name="query_ln")(query)
            key = layer_norm(name="key_ln")(key)

        x = attend(
            query, key, value,
            causal=self.causal,
            window=self.window,
            softcap=self.softcap,
            softmax_scale=self.softmax_scale,
            implementation=self.implementation,
            deterministic_backward=self.deterministic_backward,
            fp8=self.fp8,
            dtype=self.dtype,
            where=where,
        )
        return nn.DenseGeneral(
            features=features,
            axis=(-2, -1),
            kernel_init=self.out_kernel_init or self.kernel_init,
            bias_init=self.out_bias_init or self.bias_init,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            name="out",
        )(x)


def _merge(field: bool | None, call: bool | None) -> bool | None:
    """flax's merge_param without its raise: the call argument wins, either may be None."""
    return field if call is None else call

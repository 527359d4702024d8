"""jax_flash3 inside Flax NNX models.

``MultiHeadAttention`` is a drop-in for ``flax.nnx.MultiHeadAttention``: same constructor
arguments, same submodules (``query``, ``key``, ``value``, ``out`` LinearGeneral; ``query_ln`` /
``key_ln`` with ``normalize_qk``), hence the same ``nnx.Param`` state, including GQA
(``num_kv_heads``). Adds ``causal``, ``window``, ``softcap``, ``softmax_scale``.

Import explicitly (flax is an optional dependency)::

    import jax_flash3.nnx as jf3nnx
    layer = jf3nnx.MultiHeadAttention(num_heads=8, in_features=512, causal=True, rngs=nnx.Rngs(0))

For the ``attention_fn`` hook of ``flax.nnx.MultiHeadAttention`` use
``jax_flash3.flax.make_attention_fn(...)``: the same adapter serves linen and nnx.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jax_flash3 import _flax_common
from jax_flash3._flax_common import attend

__all__ = ["MultiHeadAttention"]

_default_kernel_init = nnx.initializers.lecun_normal()  # = flax.nnx.nn.linear.default_kernel_init
_default_bias_init = nnx.initializers.zeros_init()


class MultiHeadAttention(nnx.Module):
    """Multi-head attention on ``jax_flash3.flash_attention``; a drop-in for
    ``flax.nnx.MultiHeadAttention`` with an identical ``nnx.Param`` state.

    Args (flax's, same meaning): ``num_heads``, ``in_features``, ``qkv_features``,
    ``out_features``, ``num_kv_heads`` (GQA/MQA), ``in_kv_features``, ``dtype``, ``param_dtype``,
    ``broadcast_dropout``, ``dropout_rate``, ``deterministic``, ``precision``, ``kernel_init``,
    ``out_kernel_init``, ``bias_init``, ``out_bias_init``, ``use_bias``, ``decode``,
    ``normalize_qk``, ``rngs``.

    jax_flash3 extensions:
      causal: causal mask, bottom-right aligned when the query and key lengths differ (nnx's
        call-time ``is_causal`` is top-left aligned; both agree when the lengths are equal).
      window: ``(left, right)`` sliding-window attention (``None``/-1 side = unbounded).
      softcap: logit soft-capping ``softcap * tanh(logits / softcap)``.
      softmax_scale: logit scale, default ``1 / sqrt(head_dim)`` like flax.
      implementation: ``"auto"``, ``"cuda"`` or ``"reference"``.
      deterministic_backward: bit-reproducible backward on the CUDA path (``deterministic``
        keeps flax's meaning: no dropout).
      fp8: FP8 forward (``flash_attention(precision="fp8")``); backward in the compute dtype.

    Refused with ``ValueError``: a ``mask`` array, dropout with ``deterministic=False``,
    ``decode=True``, ``sow_weights=True``, ``input_positions`` (flax's RoPE-in-attention hook).
    ``precision`` is accepted (softmax and accumulation are always float32).

    Shapes: ``inputs_q (*batch, Sq, in_features)``, ``inputs_k``/``inputs_v (*batch, Sk,
    in_kv_features)`` → ``(*batch, Sq, out_features)``.
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        num_kv_heads: int | None = None,
        in_kv_features: int | None = None,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        broadcast_dropout: bool = True,
        dropout_rate: float = 0.0,
        deterministic: bool | None = None,
        precision: Any = None,
        kernel_init: Callable[..., Any] = _default_kernel_init,
        out_kernel_init: Callable[..., Any] | None = None,
        bias_init: Callable[..., Any] = _default_bias_init,
        out_bias_init: Callable[..., Any] | None = None,
        use_bias: bool = True,
        decode: bool | None = None,
        normalize_qk: bool = False,
        causal: bool = False,
        window: tuple[int | None, int | None] | None = None,
        softcap: float | None = None,
        softmax_scale: float | None = None,
        implementation: str = "auto",
        deterministic_backward: bool = False,
        fp8: bool = False,
        rngs: nnx.Rngs,
        **flax_only,
    ):
        where = "jax_flash3.nnx.MultiHeadAttention"
        # nnx.MultiHeadAttention's other arguments (attention_fn, dot_generals, promote
        # functions, parameter metadata, keep_rngs): accepted at flax's defaults, else refused.
        flax_params = inspect.signature(nnx.MultiHeadAttention.__init__).parameters
        unknown = sorted(set(flax_only) - set(flax_params))
        if unknown:
            raise TypeError(f"{where}: unexpected keyword argument(s) {', '.join(unknown)}")
        flax_only.pop("keep_rngs", None)  # (any value: rngs are kept for nothing here)
        _flax_common.check_flax_only_fields(
            flax_only, {name: flax_params[name].default for name in flax_only}, where)
        self.num_heads = num_heads
        self.in_features = in_features
        self.qkv_features = in_features if qkv_features is None else qkv_features
        self.out_features = in_features if out_features is None else out_features
        self.in_kv_features = in_features if in_kv_features is None else in_kv_features
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if self.num_kv_heads < 1 or num_heads % self.num_kv_heads:
            raise ValueError(
                f"{where}: num_heads ({num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})")
        if self.qkv_features % num_heads:
            raise ValueError(
                f"{where}: qkv_features ({self.qkv_features}) must be divisible by num_heads "
                f"({num_heads})")
        _flax_common.check_no_decode(decode, where)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.broadcast_dropout = broadcast_dropout
        self.dropout_rate = dropout_rate
        self.deterministic = deterministic
        self.precision = precision
        self.use_bias = use_bias
        self.decode = decode
        self.normalize_qk = normalize_qk
        self.causal = causal
        self.window = None if window is None else tuple(window)
        self.softcap = softcap
        self.softmax_scale = softmax_scale
        self.implementation = implementation
        self.deterministic_backward = deterministic_backward
        self.fp8 = fp8
        self.head_dim = self.qkv_features // num_heads

        # Submodules in flax's creation order, so one nnx.Rngs seed gives both the same params.
        def linear(in_feats, out_feats, **kw):
            return nnx.LinearGeneral(
                in_feats, out_feats,
                dtype=dtype, param_dtype=param_dtype, use_bias=use_bias, precision=precision,
                rngs=rngs, **kw)

        self.query = linear(self.in_features, (num_heads, self.head_dim),
                            kernel_init=kernel_init, bias_init=bias_init)
        self.key = linear(self.in_kv_features, (self.num_kv_heads, self.head_dim),
                          kernel_init=kernel_init, bias_init=bias_init)
        self.value = linear(self.in_kv_features, (self.num_kv_heads, self.head_dim),
                            kernel_init=kernel_init, bias_init=bias_init)
        if normalize_qk:
            # QK normalization (ViT-22B, arxiv.org/abs/2302.05442), as flax does it.
            self.query_ln = nnx.LayerNorm(self.head_dim, use_bias=False, dtype=dtype,
                                          param_dtype=param_dtype, rngs=rngs)
            self.key_ln = nnx.LayerNorm(self.head_dim, use_bias=False, dtype=dtype,
                                        param_dtype=param_dtype, rngs=rngs)
        else:
            self.query_ln = None
            self.key_ln = None
        self.out = linear((num_heads, self.head_dim), self.out_features, axis=(-2, -1),
                          kernel_init=out_kernel_init or kernel_init,
                          bias_init=out_bias_init or bias_init)

    @classmethod
    def from_flax(cls, module: nnx.Module, **extensions) -> MultiHeadAttention:
        """Our module with ``module``'s (a ``flax.nnx.MultiHeadAttention``) configuration and a
        copy of its parameters; ``extensions`` sets ``causal``, ``window``, ``softcap``, ...

        Initializers are not carried over (the parameters are). Example::

            fast = jax_flash3.nnx.MultiHeadAttention.from_flax(slow, causal=True)

        A source module whose behavior this one cannot copy is refused (``ValueError`` naming the
        field), never converted silently into something else: a custom ``attention_fn`` (pass
        ``causal``/``window``/``softcap`` as extensions instead), ``decode=True`` (no cache here)
        or custom dot_generals.
        """
        defaults = inspect.signature(type(module).__init__).parameters
        fn_default = defaults["attention_fn"].default if "attention_fn" in defaults else None
        if fn_default is not None and getattr(module, "attention_fn", fn_default) is not fn_default:
            raise ValueError(
                "from_flax: the module has a custom attention_fn, which this module cannot carry "
                "over (it computes attention itself); pass causal=, window= or softcap= instead"
            )
        if getattr(module, "decode", None):
            raise ValueError("from_flax: decode=True (autoregressive cache) is not supported")
        for name in ("qkv_dot_general", "out_dot_general", "qkv_dot_general_cls",
                     "out_dot_general_cls"):
            if getattr(module, name, None) is not None:
                raise ValueError(f"from_flax: a custom {name} is not supported")
        config = {
            "qkv_features": module.qkv_features,
            "out_features": module.out_features,
            "num_kv_heads": getattr(module, "num_kv_heads", None),
            "in_kv_features": getattr(module, "in_kv_features", None),
            "dtype": module.dtype,
            "param_dtype": module.param_dtype,
            "broadcast_dropout": module.broadcast_dropout,
            "dropout_rate": module.dropout_rate,
            "deterministic": module.deterministic,
            "precision": module.precision,
            "use_bias": module.use_bias,
            "normalize_qk": module.normalize_qk,
        }
        config.update(extensions)
        ours = cls(module.num_heads, module.in_features, rngs=nnx.Rngs(0), **config)
        nnx.update(ours, nnx.state(module, nnx.Param))
        return ours

    def __call__(
        self,
        inputs_q,
        inputs_k=None,
        inputs_v=None,
        *,
        mask=None,
        deterministic: bool | None = None,
        rngs=None,
        sow_weights: bool = False,
        decode: bool | None = None,
        is_causal: bool = False,
        out_sharding=None,
        qkv_sharding=None,
        input_positions=None,
    ):
        """``inputs_q (*batch, Sq, in_features)``; ``inputs_k`` defaults to ``inputs_q`` and
        ``inputs_v`` to ``inputs_k``. ``is_causal`` is nnx's call-time (top-left aligned) causal
        flag; ``out_sharding`` / ``qkv_sharding`` go to the projections as in flax.
        Returns ``(*batch, Sq, out_features)``."""
        del rngs  # never used: dropout in training is refused below
        where = "jax_flash3.nnx.MultiHeadAttention"
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError(
                    f"{where}: inputs_k cannot be None if inputs_v is not None (to use one array "
                    f"for both, pass it as inputs_k)")
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        if inputs_q.shape[-1] != self.in_features:
            raise ValueError(
                f"{where}: inputs_q has {inputs_q.shape[-1]} features, the module expects "
                f"in_features={self.in_features}")
        _flax_common.check_no_mask(mask, where)
        _flax_common.check_no_sow(sow_weights, where)
        _flax_common.check_no_input_positions(input_positions, where)
        _flax_common.check_no_decode(self.decode if decode is None else decode, where)
        if self.dropout_rate:
            _flax_common.check_dropout(
                self.dropout_rate,
                self.deterministic if deterministic is None else deterministic,
                where,
            )

        # Older flax LinearGeneral has no out_sharding argument: pass it only when asked for.
        qkv_kw = {} if qkv_sharding is None else {"out_sharding": qkv_sharding}
        query = self.query(inputs_q, **qkv_kw)
        key = self.key(inputs_k, **qkv_kw)
        value = self.value(inputs_v, **qkv_kw)
        if self.normalize_qk:
            query = self.query_ln(query)
            key = self.key_ln(key)

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
            is_causal_top_left=bool(is_causal),
            where=where,
        )
        out_kw = {} if out_sharding is None else {"out_sharding": out_sharding}
        return self.out(x, **out_kw)

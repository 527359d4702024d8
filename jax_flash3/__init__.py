"""jax_flash3: FlashAttention-3-class attention for JAX on Hopper GPUs, with a pure-JAX fallback.

    import jax_flash3
    out = jax_flash3.flash_attention(q, k, v, causal=True)   # q (B, Sq, Hq, D), k/v (B, Sk, Hk, D)
"""

from jax_flash3._config import AttentionConfig
from jax_flash3.attention import UnsupportedError, flash_attention, make_config
from jax_flash3 import fp8, reference
from jax_flash3.ring import from_zigzag, ring_attention, ring_schedule, to_zigzag
from jax_flash3._ffi import available as cuda_available, unavailable_reason as cuda_unavailable_reason

__version__ = "0.1.0"

__all__ = [
    "AttentionConfig",
    "UnsupportedError",
    "cuda_available",
    "cuda_unavailable_reason",
    "flash_attention",
    "fp8",
    "from_zigzag",
    "make_config",
    "reference",
    "ring_attention",
    "ring_schedule",
    "to_zigzag",
]

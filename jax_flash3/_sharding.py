"""Partitioning of the attention forward/backward under ``jit`` (custom_partitioning + Shardy).

``fwd`` and ``bwd`` have the signatures of ``_backend.fwd`` / ``_backend.bwd``.
"""

from __future__ import annotations

from jax_flash3 import _backend

fwd = _backend.fwd
bwd = _backend.bwd

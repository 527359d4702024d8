"""Static attention configuration shared by the public API, the backends and the partitioner."""

from __future__ import annotations

import dataclasses

IMPLEMENTATIONS = ("auto", "cuda", "reference")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Everything about one attention call that is not an array. Hashable: a static argument.

    ``window_left`` / ``window_right`` < 0 mean unbounded; causal is already folded into
    ``window_right == 0``. ``softcap == 0.0`` means off. ``implementation`` is resolved:
    ``"cuda"`` or ``"reference"``.
    """

    softmax_scale: float
    window_left: int = -1
    window_right: int = -1
    softcap: float = 0.0
    deterministic: bool = False
    implementation: str = "reference"
    # SMs the CUDA forward's persistent grid leaves idle (ring attention sets it so that the K/V
    # transfer's communication kernel runs beside the forward instead of after it).
    sm_margin: int = 0
    # Chosen by implementation="auto": when lowering for a non-CUDA platform, use the reference
    # path instead of the CUDA kernels.
    auto: bool = False
    # FP8 forward only: whether the LSE must be exact, i.e. computed from float32 sums of the
    # exps (the call returns it, or a backward reads it). False lets the kernel take its row sums
    # from the tensor cores (faster; O normalized by sums of the same e4m3 P it multiplied, the
    # LSE off by e4m3's rounding of P, up to a few 1e-2 on short rows).
    exact_lse: bool = True

    def __post_init__(self):
        if self.implementation not in ("cuda", "reference"):
            raise ValueError(f"AttentionConfig.implementation must be resolved, got {self.implementation!r}")

    @property
    def causal(self) -> bool:
        return self.window_right == 0 and self.window_left < 0

    def replace(self, **changes) -> "AttentionConfig":
        return dataclasses.replace(self, **changes)

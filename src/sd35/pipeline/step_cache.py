"""Opt-in step caching: skip most of the MMDiT on steps where its first block barely changes.

First-block cache (the idea of ParaAttention's FBCache and TeaCache): on every model call the first joint
block runs; its residual r₁ = x₁ − x₀ is compared with r₁ of the last fully computed call of the same
stream (same batch shape and conditioning). If mean|r₁ − r₁'| / mean|r₁'| < threshold, the remaining blocks
are not run and their residual from that call is reused: x_out = x₁ + (x_out' − x₁'). Otherwise all blocks
run and the references are updated. Because the reference stays at the last full computation, the distance
grows with every reused step, which bounds drift. Threshold 0 never reuses, and the result is bit-identical
to the plain loop (same ops in the same order). The decision reads one scalar per call (a host sync on GPUs).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field

from torch import Tensor

from sd35.models.mmditx import RunBlocks

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    first_residual: Tensor | None = None  # r₁ at the last fully computed call
    rest_residual: Tensor | None = None  # x_out − x₁ at that call


@dataclass
class StepCache:
    """Per-sampling-run cache state (make a new one per image). `threshold` > 0 enables reuse."""

    threshold: float
    computed: int = 0
    reused: int = 0
    _streams: dict[Hashable, _Stream] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"step cache threshold must be >= 0, got {self.threshold}")

    def for_key(self, key: Hashable) -> _FirstBlockCache:
        """The `BlockCache` (models.mmditx protocol) of one stream of calls, e.g. the cond+uncond batch."""
        return _FirstBlockCache(self, self._streams.setdefault(key, _Stream()))

    def summary(self) -> str:
        total = self.computed + self.reused
        return f"step cache: {self.reused} of {total} model calls reused the cached blocks"


def relative_l1(current: Tensor, reference: Tensor) -> float:
    """mean|current − reference| / mean|reference| (fp32), the change measure of TeaCache/FBCache."""
    reference = reference.float()
    return float((current.float() - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12))


@dataclass
class _FirstBlockCache:
    owner: StepCache
    stream: _Stream

    def __call__(self, run: RunBlocks, ctx: Tensor, x: Tensor, c: Tensor, skip: frozenset[int], depth: int) -> Tensor:
        ctx1, x1 = run(ctx, x, c, skip, 0, 1)
        first = x1 - x
        state = self.stream
        if (
            self.owner.threshold > 0
            and state.first_residual is not None
            and state.rest_residual is not None
            and state.first_residual.shape == first.shape
            and relative_l1(first, state.first_residual) < self.owner.threshold
        ):
            self.owner.reused += 1
            return x1 + state.rest_residual
        _, out = run(ctx1, x1, c, skip, 1, depth)
        if self.owner.threshold > 0:  # threshold 0 keeps nothing: the plain loop, bit for bit
            state.first_residual, state.rest_residual = first, out - x1
        self.owner.computed += 1
        return out

"""Conditioning lists as ComfyUI's sampler sees them: entries with timestep ranges, averaged when several apply.

A ComfyUI CONDITIONING is a list of [tensor, {"pooled_output", "start_percent", "end_percent", ...}];
here it is a tuple of frozen `CondEntry`. The official SD3.5 Medium workflow builds its negative from two
entries (the empty prompt for percent 0–0.2, its zeroed copy for 0.2–1), so these rules decide the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from sd35.sampling.schedule import ModelSampling
from sd35.types import Conditioning


@dataclass(frozen=True)
class CondEntry:
    """One conditioning entry: context [1, L, C], pooled [1, P], active between two schedule percentages."""

    conditioning: Conditioning
    start_percent: float = 0.0
    end_percent: float = 1.0


CondList = tuple[CondEntry, ...]


def single(conditioning: Conditioning) -> CondList:
    return (CondEntry(conditioning),)


def zero_out(entries: Sequence[CondEntry]) -> CondList:
    """ConditioningZeroOut: context and pooled set to zero, ranges kept (ComfyUI `nodes.py`)."""
    return tuple(
        replace(
            e,
            conditioning=Conditioning(
                torch.zeros_like(e.conditioning.context), torch.zeros_like(e.conditioning.pooled)
            ),
        )
        for e in entries
    )


def set_range(entries: Sequence[CondEntry], start: float, end: float) -> CondList:
    """ConditioningSetTimestepRange: every entry gets [start, end] (percent of the schedule)."""
    return tuple(replace(e, start_percent=start, end_percent=end) for e in entries)


def active_entries(entries: Sequence[CondEntry], sigma: float, model_sampling: ModelSampling) -> CondList:
    """Entries whose range holds `sigma`: σ(end) ≤ σ ≤ σ(start) (ComfyUI `samplers.py` get_area_and_mult)."""
    return tuple(
        e
        for e in entries
        if model_sampling.percent_to_sigma(e.end_percent) <= sigma <= model_sampling.percent_to_sigma(e.start_percent)
    )


def negative_for_request(negative: Conditioning, zero_after: float | None) -> CondList:
    """The official workflow's negative: `negative` for percent [0, z], zeros for [z, 1]; or plain."""
    if zero_after is None:
        return single(negative)
    return set_range(zero_out(single(negative)), zero_after, 1.0) + set_range(single(negative), 0.0, zero_after)

"""Guidance as data plus pure predicates: classifier-free guidance, Skip Layer Guidance (SLG), and ComfyUI's
conditioning timestep ranges. All combinations act on denoised predictions (equivalently on velocities).

Two SLG window rules exist and both are offered:

- "steps", sd3.5 reference `sd3_impls.py` `SkipLayerCFGDenoiser`: active while start·N < k < end·N, k the
  denoiser-call count from 0 and N the full step count (also for img2img, where k restarts at 0). Medium
  defaults 0.01-0.20 at 50 steps → steps 1-9. Here k is the sampler step index (`DenoiseFn`'s step); for
  the single-evaluation samplers the reference has (euler, dpmpp_2m) the two coincide.
- "sigma", ComfyUI `comfy_extras/nodes_slg.py` `SkipLayerGuidanceDiT` (used by `SkipLayerGuidanceSD3`):
  active while σ_end < σ ≤ σ_start with σ_start/σ_end = percent_to_sigma(start/end), checked on every model
  call with its own σ. (Older ComfyUI versions used σ_end ≤ σ; the current node is strict.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from sd35.sampling.schedule import ModelSampling


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """uncond + (cond − uncond)·scale (ComfyUI `cfg_function`, sd3.5 `CFGDenoiser`), on denoised [B, C, H, W]."""
    return uncond + (cond - uncond) * scale


def cfg_needs_uncond(scale: float) -> bool:
    """ComfyUI skips the uncond pass when cfg == 1 (`math.isclose(cond_scale, 1.0)` in `sampling_function`)."""
    return not math.isclose(scale, 1.0)


def slg_combine(cfg_out: Tensor, cond: Tensor, cond_skip: Tensor, scale: float) -> Tensor:
    """cfg_out + (cond − cond_skip)·scale: cond_skip is the cond-only pass with the listed joint blocks skipped."""
    return cfg_out + (cond - cond_skip) * scale


def slg_active_by_step(step: int, num_steps: int, start: float, end: float) -> bool:
    """sd3.5 reference window: start·num_steps < step < end·num_steps (both strict)."""
    return start * num_steps < step < end * num_steps


def slg_active_by_sigma(sigma: float, sigma_start: float, sigma_end: float) -> bool:
    """ComfyUI `SkipLayerGuidanceDiT` window: sigma_end < σ ≤ sigma_start."""
    return sigma_end < sigma <= sigma_start


@dataclass(frozen=True)
class SkipLayerGuidance:
    """SLG settings. Defaults are SD3.5 Medium's in the sd3.5 reference (`sd3_infer.py` CONFIGS): layers
    7, 8, 9 (0-based joint blocks), scale 2.5, window 0.01-0.20 by steps. ComfyUI's `SkipLayerGuidanceSD3`
    node defaults are scale 3.0, 0.01-0.15 and rule "sigma"."""

    layers: tuple[int, ...] = (7, 8, 9)
    scale: float = 2.5
    start: float = 0.01
    end: float = 0.20
    rule: Literal["steps", "sigma"] = "steps"

    def sigma_window(self, model_sampling: ModelSampling) -> tuple[float, float]:
        """(σ_start, σ_end) = percent_to_sigma(start), percent_to_sigma(end)."""
        return model_sampling.percent_to_sigma(self.start), model_sampling.percent_to_sigma(self.end)

    def active(self, step: int, num_steps: int, sigma: float, model_sampling: ModelSampling) -> bool:
        """Whether the skip-layer pass runs for this model call (scale > 0 and layers given, as both sources)."""
        if self.scale <= 0 or not self.layers:
            return False
        if self.rule == "steps":
            return slg_active_by_step(step, num_steps, self.start, self.end)
        sigma_start, sigma_end = self.sigma_window(model_sampling)
        return slg_active_by_sigma(sigma, sigma_start, sigma_end)


def timestep_range_to_sigmas(
    start_percent: float, end_percent: float, model_sampling: ModelSampling
) -> tuple[float, float]:
    """ComfyUI `ConditioningSetTimestepRange` → (σ_start, σ_end) (`calculate_start_end_timesteps`)."""
    return model_sampling.percent_to_sigma(start_percent), model_sampling.percent_to_sigma(end_percent)


def cond_active(sigma: float, sigma_start: float | None, sigma_end: float | None) -> bool:
    """ComfyUI `get_area_and_mult` gate: a conditioning entry is used iff σ_end ≤ σ ≤ σ_start (inclusive
    both ends; a missing bound does not gate). ComfyUI checks the first batch element's σ."""
    if sigma_start is not None and sigma > sigma_start:
        return False
    return not (sigma_end is not None and sigma < sigma_end)

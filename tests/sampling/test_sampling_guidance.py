"""CFG / SLG combinations and the two SLG window rules, each against its source's rule."""

from __future__ import annotations

import torch

from sd35.sampling.guidance import (
    SkipLayerGuidance,
    cfg_combine,
    cfg_needs_uncond,
    cond_active,
    slg_active_by_sigma,
    slg_active_by_step,
    slg_combine,
    timestep_range_to_sigmas,
)
from sd35.sampling.schedule import ModelSampling, get_sigmas

MS = ModelSampling()


def test_cfg_and_slg_combine() -> None:
    cond, uncond, skip = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0]), torch.tensor([0.75, 2.5])
    cfg = cfg_combine(cond, uncond, 5.0)
    assert cfg.tolist() == [0.5 + 0.5 * 5, -1.0 + 3.0 * 5]
    assert slg_combine(cfg, cond, skip, 2.5).tolist() == [3.0 + 0.25 * 2.5, 14.0 - 0.5 * 2.5]
    assert torch.equal(cfg_combine(cond, uncond, 1.0), cond)
    assert not cfg_needs_uncond(1.0) and cfg_needs_uncond(1.01) and cfg_needs_uncond(5.0)


def test_reference_window_by_steps() -> None:
    """sd3.5 SkipLayerCFGDenoiser: start·steps < k < end·steps; Medium 0.01-0.20 at 50 steps → 1..9."""
    assert [k for k in range(50) if slg_active_by_step(k, 50, 0.01, 0.20)] == list(range(1, 10))
    assert [k for k in range(40) if slg_active_by_step(k, 40, 0.01, 0.20)] == list(range(1, 8))  # 0.4 < k < 8
    slg = SkipLayerGuidance()
    assert (slg.layers, slg.scale, slg.start, slg.end, slg.rule) == ((7, 8, 9), 2.5, 0.01, 0.20, "steps")
    assert [k for k in range(50) if slg.active(k, 50, sigma=0.5, model_sampling=MS)] == list(range(1, 10))
    # img2img: N stays the full step count while k restarts at 0 on the truncated schedule
    assert [k for k in range(41) if slg.active(k, 50, sigma=0.5, model_sampling=MS)] == list(range(1, 10))


def test_comfyui_window_by_sigma_at_40_steps_sgm_uniform() -> None:
    """SkipLayerGuidanceSD3 defaults (0.01-0.15) with shift 3, 40 steps, sgm_uniform: active on steps 1..6."""
    slg = SkipLayerGuidance(scale=3.0, start=0.01, end=0.15, rule="sigma")
    sigma_start, sigma_end = slg.sigma_window(MS)
    assert (round(sigma_start, 6), round(sigma_end, 6)) == (0.996644, 0.944444)
    sigmas = get_sigmas("sgm_uniform", 40, MS).tolist()
    active = [k for k in range(40) if slg.active(k, 40, sigmas[k], MS)]
    assert active == [1, 2, 3, 4, 5, 6]
    assert sigmas[0] > sigma_start and sigmas[6] > sigma_end > sigmas[7]  # why 0 and 7 are outside
    # ComfyUI checks each model call's own σ: a heun second evaluation at σ_7 is outside too
    assert not slg.active(6, 40, sigmas[7], MS)


def test_sigma_window_edges_follow_the_current_node() -> None:
    assert slg_active_by_sigma(0.9, sigma_start=0.9, sigma_end=0.5)  # σ ≤ σ_start is inclusive
    assert not slg_active_by_sigma(0.5, sigma_start=0.9, sigma_end=0.5)  # σ > σ_end is strict
    assert not slg_active_by_sigma(0.95, sigma_start=0.9, sigma_end=0.5)
    assert not SkipLayerGuidance(scale=0.0).active(3, 50, 0.5, MS)
    assert not SkipLayerGuidance(layers=()).active(3, 50, 0.5, MS)


def test_conditioning_timestep_range() -> None:
    """ConditioningSetTimestepRange: σ(end) ≤ σ ≤ σ(start), both inclusive (get_area_and_mult)."""
    start, end = timestep_range_to_sigmas(0.0, 0.5, MS)
    assert start == 1.0 and end == MS.percent_to_sigma(0.5) == 0.75
    assert cond_active(1.0, start, end) and cond_active(0.75, start, end)
    assert not cond_active(0.74, start, end)
    late_start, late_end = timestep_range_to_sigmas(0.5, 1.0, MS)
    assert late_end == 0.0 and not cond_active(0.8, late_start, late_end) and cond_active(0.75, late_start, late_end)
    assert cond_active(0.3, None, None)

"""Sampler registry with ComfyUI's names, and `sample`, the one entry point the pipeline calls.

Every sampler is the flow-model (CONST) variant ComfyUI runs for SD3: euler_ancestral, dpm_2_ancestral and
dpmpp_2s_ancestral are the `*_RF` versions; dpmpp_sde / dpmpp_2m_sde / dpmpp_3m_sde use the half-log-SNR of
flow models. `sample` expects x already noised to sigmas[0] (flow.noise_latent) and returns x at sigmas[-1];
apply flow.inverse_noise_scaling(result, sigmas[-1]) afterwards as ComfyUI's KSAMPLER does.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import Tensor

from sd35.errors import UserInputError
from sd35.sampling.base import DenoiseFn, OnStep, SamplerFn, StepInfo
from sd35.sampling.samplers_multistep import sample_dpmpp_2m, sample_ipndm, sample_ipndm_v, sample_lms
from sd35.sampling.samplers_sde import (
    sample_dpmpp_2m_sde,
    sample_dpmpp_2m_sde_heun,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from sd35.sampling.samplers_single import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2s_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lcm,
)
from sd35.sampling.schedule import ModelSampling
from sd35.sampling.uni_pc import sample_uni_pc, sample_uni_pc_bh2

__all__ = ["SAMPLERS", "DenoiseFn", "OnStep", "SamplerFn", "StepInfo", "sample"]

SAMPLERS: Mapping[str, SamplerFn] = MappingProxyType(
    {
        "euler": sample_euler,
        "euler_ancestral": sample_euler_ancestral,
        "heun": sample_heun,
        "dpm_2": sample_dpm_2,
        "dpm_2_ancestral": sample_dpm_2_ancestral,
        "lms": sample_lms,
        "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
        "dpmpp_sde": sample_dpmpp_sde,
        # ComfyUI's *_gpu variants only move the Brownian tree to the GPU; our Brownian path is device-free.
        "dpmpp_sde_gpu": sample_dpmpp_sde,
        "dpmpp_2m": sample_dpmpp_2m,
        "dpmpp_2m_sde": sample_dpmpp_2m_sde,
        "dpmpp_2m_sde_gpu": sample_dpmpp_2m_sde,
        "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
        "dpmpp_2m_sde_heun_gpu": sample_dpmpp_2m_sde_heun,
        "dpmpp_3m_sde": sample_dpmpp_3m_sde,
        "dpmpp_3m_sde_gpu": sample_dpmpp_3m_sde,
        "lcm": sample_lcm,
        "ipndm": sample_ipndm,
        "ipndm_v": sample_ipndm_v,
        "ddim": sample_euler,  # ComfyUI: ksampler("euler") with random inpaint noise, same without a mask
        "uni_pc": sample_uni_pc,
        "uni_pc_bh2": sample_uni_pc_bh2,
    }
)

_DEFAULT_MODEL_SAMPLING = ModelSampling()


def sample(
    name: str,
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _DEFAULT_MODEL_SAMPLING,
) -> Tensor:
    """Run sampler `name` from x [B, C, H, W] at sigmas[0] down the schedule sigmas [N+1]; returns x at sigmas[-1].

    `seed` seeds the ancestral/SDE noise as ComfyUI does (the noise seed of the KSampler); `on_step` is called
    once per step and may raise sd35.errors.Cancelled. `model_sampling` supplies the shift where a sampler
    needs it (dpmpp_*_sde's first-σ offset). Fewer than two sigmas: x is returned unchanged.
    """
    sampler = SAMPLERS.get(name)
    if sampler is None:
        raise UserInputError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
    if len(sigmas) < 2:
        return x
    with torch.no_grad():
        return sampler(denoise, x, sigmas, seed=seed, on_step=on_step, model_sampling=model_sampling)

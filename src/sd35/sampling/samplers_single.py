"""One-step samplers (each step uses only the current state): euler, heun, dpm_2, lcm and the flow (RF)
ancestral samplers, matching ComfyUI `comfy/k_diffusion/sampling.py` for CONST (flow) models.

ComfyUI's defaults are fixed here: s_churn = 0 (so σ_hat = σ), eta = 1, s_noise = 1. Ancestral noise comes
from `noise.ancestral_noise_sampler` (ComfyUI `default_noise_sampler` seeded with the sampling seed).
"""

from __future__ import annotations

import math

from torch import Tensor

from sd35.sampling.base import DenoiseFn, OnStep, evaluate, first_eval, rf_ancestral_step, sigma_list
from sd35.sampling.flow import noise_latent
from sd35.sampling.noise import ancestral_noise_sampler
from sd35.sampling.schedule import ModelSampling

_MS = ModelSampling()


def sample_euler(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`euler` (and `ddim`, which ComfyUI maps to euler): d = (x − D)/σ; x ← x + d·(σ_next − σ)."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        x = x + (x - denoised) / s[i] * (s[i + 1] - s[i])
    return x


def sample_euler_ancestral(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`euler_ancestral` for flow models = ComfyUI `sample_euler_ancestral_RF` (eta 1, s_noise 1).

    Interpolate to σ_down between x and D, rescale by (1−σ_next)/(1−σ_down), add renoise·noise; the step to
    σ = 0 returns D.
    """
    s = sigma_list(sigmas)
    noise = ancestral_noise_sampler(x, seed)
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        if s[i + 1] == 0:
            x = denoised
            continue
        sigma_down, renoise, rescale = rf_ancestral_step(s[i], s[i + 1])
        ratio = sigma_down / s[i]
        x = ratio * x + (1 - ratio) * denoised
        x = rescale * x + noise(s[i], s[i + 1]) * renoise
    return x


def sample_heun(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`heun` (Karras et al. 2022, Alg. 2 without churn): Euler predictor, trapezoidal corrector with a second
    evaluation at σ_next; the last step (σ_next = 0) is plain Euler."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        d = (x - denoised) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = (x_2 - evaluate(denoise, x_2, s[i + 1], i)) / s[i + 1]
        x = x + (d + d_2) / 2 * dt
    return x


def _dpm2_to(denoise: DenoiseFn, x: Tensor, d: Tensor, sigma: float, target: float, step: int) -> Tensor:
    """DPM-Solver-2 step from σ to `target` > 0 with the derivative taken at σ_mid = sqrt(σ·target)."""
    sigma_mid = math.exp(0.5 * (math.log(sigma) + math.log(target)))
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = (x_2 - evaluate(denoise, x_2, sigma_mid, step)) / sigma_mid
    return x + d_2 * (target - sigma)


def sample_dpm_2(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`dpm_2`: midpoint in log σ (DPM-Solver-2 flavoured, k-diffusion `sample_dpm_2`); Euler to σ = 0.

    ComfyUI's KSampler gives it steps+1 sigmas with the penultimate one dropped (schedule.ksampler_sigmas).
    """
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        d = (x - denoised) / s[i]
        if s[i + 1] == 0:
            x = x + d * (s[i + 1] - s[i])
        else:
            x = _dpm2_to(denoise, x, d, s[i], s[i + 1], i)
    return x


def sample_dpm_2_ancestral(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`dpm_2_ancestral` for flow models = ComfyUI `sample_dpm_2_ancestral_RF`: DPM-2 step to σ_down, then the
    RF rescale + renoise of `euler_ancestral`."""
    s = sigma_list(sigmas)
    noise = ancestral_noise_sampler(x, seed)
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        sigma_down, renoise, rescale = rf_ancestral_step(s[i], s[i + 1])
        d = (x - denoised) / s[i]
        if sigma_down == 0:
            x = x + d * (sigma_down - s[i])
        else:
            x = _dpm2_to(denoise, x, d, s[i], sigma_down, i)
            x = rescale * x + noise(s[i], s[i + 1]) * renoise
    return x


def sample_dpmpp_2s_ancestral(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`dpmpp_2s_ancestral` for flow models = ComfyUI `sample_dpmpp_2s_ancestral_RF`.

    Midpoint σ_s halfway between σ and σ_down in λ = log((1−σ)/σ) (0.9999 when σ = 1, where λ is infinite),
    D at the flow interpolation between x and D(σ), then the flow interpolation to σ_down with that D and
    the RF rescale + renoise.
    """
    s = sigma_list(sigmas)
    noise = ancestral_noise_sampler(x, seed)
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        sigma_down, renoise, rescale = rf_ancestral_step(s[i], s[i + 1])
        if s[i + 1] == 0:
            x = x + (x - denoised) / s[i] * (sigma_down - s[i])
            continue
        if s[i] == 1.0:
            sigma_s = 0.9999
        else:
            lam, lam_down = math.log((1 - s[i]) / s[i]), math.log((1 - sigma_down) / sigma_down)
            sigma_s = 1 / (math.exp(lam + 0.5 * (lam_down - lam)) + 1)
        ratio_s = sigma_s / s[i]
        denoised_s = evaluate(denoise, ratio_s * x + (1 - ratio_s) * denoised, sigma_s, i)
        ratio_down = sigma_down / s[i]
        x = ratio_down * x + (1 - ratio_down) * denoised_s
        x = rescale * x + noise(s[i], s[i + 1]) * renoise
    return x


def sample_lcm(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`lcm`: jump to D, then re-noise to σ_next with fresh noise (flow noise scaling σ·n + (1−σ)·D)."""
    s = sigma_list(sigmas)
    noise = ancestral_noise_sampler(x, seed)
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        x = denoised
        if s[i + 1] > 0:
            x = noise_latent(x, noise(s[i], s[i + 1]), s[i + 1])
    return x

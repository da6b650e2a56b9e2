"""SDE samplers with Brownian noise: dpmpp_sde, dpmpp_2m_sde(_heun), dpmpp_3m_sde.

ComfyUI `comfy/k_diffusion/sampling.py` versions for CONST (flow) models: they work in the half-log-SNR
λ = log((1 − σ)/σ) (`sigma_to_half_log_snr`), with α = 1 − σ, and replace a first σ ≥ 1 (λ = −∞) by
percent_to_sigma(1e-4) = 0.99997 at shift 3 (`offset_first_sigma_for_snr`), for the model call too.
eta = 1, s_noise = 1, r = 1/2 (ComfyUI defaults). Noise: `noise.BrownianPath` (see its deviation note).
"""

from __future__ import annotations

import math

from torch import Tensor

from sd35.sampling.base import DenoiseFn, OnStep, ancestral_step, evaluate, first_eval, sigma_list
from sd35.sampling.noise import BrownianPath
from sd35.sampling.schedule import ModelSampling

_MS = ModelSampling()


def half_log_snr(sigma: float) -> float:
    """λ = log(α/σ) = log((1 − σ)/σ) for flow models."""
    return math.log((1 - sigma) / sigma)


def sigma_from_half_log_snr(lam: float) -> float:
    """σ = 1/(1 + e^λ), the inverse of `half_log_snr`."""
    return 1 / (1 + math.exp(lam))


def offset_first_sigma(s: list[float], model_sampling: ModelSampling) -> list[float]:
    """ComfyUI `offset_first_sigma_for_snr` for CONST models: σ_0 ≥ 1 → percent_to_sigma(1e-4)."""
    if len(s) > 1 and s[0] >= 1:
        return [model_sampling.percent_to_sigma(1e-4), *s[1:]]
    return s


def sample_dpmpp_sde(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`dpmpp_sde` (DPM-Solver++ stochastic, r = 1/2): an ancestral DPM++ half-step to σ_s (midpoint in λ) with
    a model call there, then the full step with D' = (1 − 1/(2r))·D + 1/(2r)·D_s; both steps add α·noise·σ_up.
    The step to σ = 0 returns D."""
    if len(sigmas) <= 1:
        return x
    s = offset_first_sigma(sigma_list(sigmas), model_sampling)
    noise = BrownianPath(x, seed)
    r, eta = 0.5, 1.0
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        if s[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(s[i]), half_log_snr(s[i + 1])
        lam_mid = lam_s + r * (lam_t - lam_s)
        sigma_mid = sigma_from_half_log_snr(lam_mid)
        alpha_s, alpha_mid, alpha_t = 1 - s[i], 1 - sigma_mid, 1 - s[i + 1]

        down, up = ancestral_step(math.exp(-lam_s), math.exp(-lam_mid), eta)
        h = -math.log(down) - lam_s
        x_2 = (alpha_mid / alpha_s) * math.exp(-h) * x - alpha_mid * math.expm1(-h) * denoised
        x_2 = x_2 + alpha_mid * up * noise(s[i], sigma_mid)
        denoised_2 = evaluate(denoise, x_2, sigma_mid, i)

        down, up = ancestral_step(math.exp(-lam_s), math.exp(-lam_t), eta)
        h = -math.log(down) - lam_s
        fac = 1 / (2 * r)
        mixed = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * math.exp(-h) * x - alpha_t * math.expm1(-h) * mixed
        x = x + alpha_t * up * noise(s[i], s[i + 1])
    return x


def _dpmpp_multistep_sde(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    seed: int | None,
    on_step: OnStep | None,
    model_sampling: ModelSampling,
    order: int,
    solver_type: str = "midpoint",
) -> Tensor:
    """DPM-Solver++(2M/3M) SDE with eta = 1: data-prediction multistep in λ plus σ_next·sqrt(1 − e^{−2h})·noise."""
    if len(sigmas) <= 1:
        return x
    s = offset_first_sigma(sigma_list(sigmas), model_sampling)
    noise = BrownianPath(x, seed)
    eta = 1.0
    d_1: Tensor | None = None
    d_2: Tensor | None = None
    h: float | None = None
    h_1: float | None = None
    h_2: float | None = None
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        if s[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = half_log_snr(s[i]), half_log_snr(s[i + 1])
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = 1 - s[i + 1]
            x = s[i + 1] / s[i] * math.exp(-h * eta) * x - alpha_t * math.expm1(-h_eta) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if order == 3 and h_2 is not None and d_1 is not None and d_2 is not None and h_1 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                first = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                second = (d1_0 - d1_1) / (r0 + r1)
                x = x + (alpha_t * phi_2) * first - (alpha_t * (phi_2 / h_eta - 0.5)) * second
            elif d_1 is not None and h_1 is not None:
                r = h_1 / h
                if order == 3 or solver_type == "heun":
                    x = x + alpha_t * phi_2 * (1 / r) * (denoised - d_1)
                else:  # midpoint
                    x = x - 0.5 * alpha_t * math.expm1(-h_eta) * (1 / r) * (denoised - d_1)
            x = x + noise(s[i], s[i + 1]) * s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta))
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
    return x


def sample_dpmpp_2m_sde(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`dpmpp_2m_sde` (midpoint correction)."""
    return _dpmpp_multistep_sde(denoise, x, sigmas, seed, on_step, model_sampling, order=2)


def sample_dpmpp_2m_sde_heun(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`dpmpp_2m_sde_heun` (Heun-type correction)."""
    return _dpmpp_multistep_sde(denoise, x, sigmas, seed, on_step, model_sampling, order=2, solver_type="heun")


def sample_dpmpp_3m_sde(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`dpmpp_3m_sde` (third order once two previous outputs exist)."""
    return _dpmpp_multistep_sde(denoise, x, sigmas, seed, on_step, model_sampling, order=3)

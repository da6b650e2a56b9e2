"""Types shared by every sampler: the denoiser callable, the per-step progress record, the sampler signature.

A sampler integrates the flow ODE dx/dσ = (x − D(x, σ))/σ from sigmas[0] down to sigmas[-1], calling the
denoiser D once or more per step (k-diffusion's convention, which ComfyUI uses for flow models too: for CONST
models (x − D)/σ is exactly the velocity v).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from sd35.sampling.schedule import ModelSampling


class DenoiseFn(Protocol):
    """denoised [B, C, H, W] = D(x [B, C, H, W], sigma ([B] fp32 on the CPU, or a 0-d tensor), step).

    `step` is the sampler step index (0-based) the call belongs to; samplers that evaluate the model more
    than once per step (heun, dpm_2, dpmpp_sde, ...) pass the same step for each evaluation, and sigma is
    the σ of that evaluation. Guidance windows use one or the other (see guidance.py).
    """

    def __call__(self, x: Tensor, sigma: Tensor, step: int) -> Tensor: ...


@dataclass(frozen=True)
class StepInfo:
    """Reported once per step, after the step's first model evaluation (as ComfyUI's sampler callback).

    x is the sampler state at σ = sigma (the input of the step), denoised the model's D(x, sigma).
    """

    step: int
    total: int
    sigma: float
    sigma_next: float
    x: Tensor
    denoised: Tensor


OnStep = Callable[[StepInfo], None]
"""Progress hook; it may raise sd35.errors.Cancelled to stop sampling (the exception propagates)."""


class SamplerFn(Protocol):
    """x at sigmas[-1] = sampler(denoise, x at sigmas[0], sigmas [N+1], ...)."""

    def __call__(
        self,
        denoise: DenoiseFn,
        x: Tensor,
        sigmas: Tensor,
        *,
        seed: int | None,
        on_step: OnStep | None,
        model_sampling: ModelSampling,
    ) -> Tensor: ...


def sigma_list(sigmas: Tensor) -> list[float]:
    """The schedule as Python floats (scalar step coefficients are computed in float64)."""
    return [float(s) for s in sigmas.detach().cpu()]


def evaluate(denoise: DenoiseFn, x: Tensor, sigma: float, step: int) -> Tensor:
    """D(x, σ) with σ as a [B] fp32 tensor on the CPU, whatever x's device.

    The schedule lives on the host (`sigma_list`), so a sampling loop never reads a device value back: the
    denoiser reads σ for its guidance windows without a device sync and puts it on the device itself.
    """
    return denoise(x, torch.full((x.shape[0],), sigma, dtype=torch.float32), step)


def report(on_step: OnStep | None, step: int, sigmas: list[float], x: Tensor, denoised: Tensor) -> None:
    if on_step is not None:
        on_step(StepInfo(step, len(sigmas) - 1, sigmas[step], sigmas[step + 1], x, denoised))


def first_eval(denoise: DenoiseFn, x: Tensor, sigmas: list[float], step: int, on_step: OnStep | None) -> Tensor:
    """The prologue of a sampler step: denoised [B, C, H, W] = D(x, sigmas[step]), reported to `on_step`.

    ComfyUI calls its sampler callback right after a step's first model evaluation; `on_step` may raise
    Cancelled there, before the rest of the step runs.
    """
    denoised = evaluate(denoise, x, sigmas[step], step)
    report(on_step, step, sigmas, x, denoised)
    return denoised


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion `get_ancestral_step` (VE sense): (σ_down, σ_up) with σ_down² + σ_up² = σ_to²."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def rf_ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float, float]:
    """The rectified-flow ancestral step of ComfyUI's `*_RF` samplers: (σ_down, renoise, (1−σ_next)/(1−σ_down)).

    σ_down = σ_next·(1 + (σ_next/σ − 1)·η); after stepping to σ_down the state is rescaled by
    (1−σ_next)/(1−σ_down) and noise·renoise is added, renoise = sqrt(σ_next² − σ_down²(1−σ_next)²/(1−σ_down)²),
    which lands exactly on the flow marginal at σ_next.
    """
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = max(sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2, 0.0) ** 0.5
    return sigma_down, renoise, alpha_next / alpha_down

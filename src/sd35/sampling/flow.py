"""The CONST (rectified-flow) parameterization: velocity ↔ denoised, and noising a latent.

x_σ = σ·noise + (1 − σ)·x₀, the model predicts v ≈ noise − x₀, denoised = x − σ·v
(sd3.5 `ModelSamplingDiscreteFlow.calculate_denoised` / `noise_scaling`; ComfyUI `comfy/model_sampling.py` CONST).
σ may be a float, a 0-d tensor or a [B] tensor; it is broadcast over the trailing dims of x.
"""

from __future__ import annotations

from torch import Tensor


def _per_sample(sigma: float | Tensor, like: Tensor) -> float | Tensor:
    """A float stays a float; a 0-d or [B] tensor becomes [B, 1, ..., 1] to broadcast against `like`."""
    if not isinstance(sigma, Tensor):
        return sigma
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1))


def denoised_from_velocity(x: Tensor, v: Tensor, sigma: float | Tensor) -> Tensor:
    """denoised [B, C, H, W] = x − σ·v."""
    return x - v * _per_sample(sigma, v)


def velocity_from_denoised(x: Tensor, denoised: Tensor, sigma: float | Tensor) -> Tensor:
    """v = (x − denoised)/σ: the flow-ODE derivative dx/dσ (k-diffusion `to_d`); σ must be > 0."""
    return (x - denoised) / _per_sample(sigma, x)


def noise_latent(latent: Tensor, noise: Tensor, sigma: float | Tensor) -> Tensor:
    """x_σ = σ·noise + (1 − σ)·latent: the sampler's start for txt2img (σ = 1) and img2img (σ = sigmas[0])."""
    s = _per_sample(sigma, noise)
    return s * noise + (1.0 - s) * latent


def inverse_noise_scaling(x: Tensor, sigma: float | Tensor) -> Tensor:
    """ComfyUI `CONST.inverse_noise_scaling`, applied to the sampler output with σ = sigmas[-1]:
    x/(1 − σ). Identity when the schedule ends at 0; with leftover noise (KSamplerAdvanced) it rescales, so
    that noise_latent(result, 0, σ) gives x back."""
    return x / (1.0 - _per_sample(sigma, x))


def latent_from_noised(x: Tensor, noise: Tensor, sigma: float | Tensor) -> Tensor:
    """Inverse of `noise_latent` for a known noise: latent = (x − σ·noise)/(1 − σ), σ < 1."""
    s = _per_sample(sigma, x)
    return (x - s * noise) / (1.0 - s)

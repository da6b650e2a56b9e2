"""Every sampler on an analytic flow: Gaussian data, whose exact denoiser and ODE solution are closed forms.

Data x₀ ~ N(μ, s²) per element, x_σ = σ·z + (1 − σ)·x₀ ~ N((1 − σ)μ, v²) with v² = (1 − σ)²s² + σ².
Exact denoiser: D(x, σ) = μ + (1 − σ)s²/v²·(x − (1 − σ)μ). The probability-flow ODE keeps the z-score, so
from x = z at σ = 1 it reaches x(σ) = (1 − σ)μ + v(σ)·z: μ + s·z at σ = 0. Stochastic samplers must
instead produce samples whose law is N(μ, s²).
"""

from __future__ import annotations

import math

import pytest
import torch

from sd35.sampling.samplers import sample
from sd35.sampling.schedule import ModelSampling, get_sigmas, ksampler_sigmas

MS = ModelSampling()
SPREAD = 0.5  # s


class GaussianData:
    def __init__(self, mu: torch.Tensor | float) -> None:
        self.mu = mu

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(torch.float64)
        var = (1 - s) ** 2 * SPREAD**2 + s**2
        return (self.mu + (1 - s) * SPREAD**2 / var * (x.double() - (1 - s) * self.mu)).to(x.dtype)

    def exact(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        return (1 - sigma) * self.mu + math.sqrt((1 - sigma) ** 2 * SPREAD**2 + sigma**2) * z


def _problem() -> tuple[GaussianData, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) * 0.8
    return GaussianData(mu), torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)


# name → (order of the 8 → 32 steps error reduction it must reach, error bound at 64 steps), karras schedule
DETERMINISTIC = {
    "euler": (3.5, 0.05),  # first order: ×2 per doubling
    "ddim": (3.5, 0.05),
    "heun": (12, 2e-3),  # second order: ×4 per doubling
    "dpm_2": (12, 1e-3),
    "dpmpp_2m": (12, 2e-3),
    "lms": (12, 2e-3),
    "ipndm": (12, 1e-3),
    "ipndm_v": (12, 1e-3),
    "uni_pc": (12, 1e-4),
    "uni_pc_bh2": (12, 1e-4),
}


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_ode_samplers_converge_to_the_exact_solution(name: str) -> None:
    data, z = _problem()
    reduction, bound = DETERMINISTIC[name]
    end = 0.001 if name.startswith("uni_pc") else 0.0  # uni_pc stops at σ = 0.001 (as ComfyUI)
    errors = []
    for steps in (8, 16, 32, 64):
        sigmas = ksampler_sigmas("karras", steps, MS, sampler=name)
        out = sample(name, data, z.clone(), sigmas)
        errors.append((out - data.exact(z, end)).abs().max().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] / errors[2] > reduction, errors
    assert errors[-1] < bound, errors


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_reference_setup_converges_on_the_normal_schedule(name: str) -> None:
    """The sd3.5 reference's own schedule (normal, shift 3) with its samplers: error falls with steps."""
    data, z = _problem()
    errors = []
    for steps in (16, 32, 64):
        out = sample(name, data, z.clone(), get_sigmas("normal", steps, MS))
        errors.append((out - data.exact(z, 0.0)).abs().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.07, errors


# name → bound on |std − s| at 32 steps (karras schedule); at 4 steps the error must exceed 0.1
STOCHASTIC = {
    "euler_ancestral": 0.07,
    "dpm_2_ancestral": 0.01,
    "dpmpp_2s_ancestral": 0.02,
    "dpmpp_sde": 0.01,
    "dpmpp_2m_sde": 0.01,
    "dpmpp_2m_sde_heun": 0.01,
    "dpmpp_3m_sde": 0.01,
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_samplers_sample_the_data_law(name: str) -> None:
    data = GaussianData(0.7)
    z = torch.randn(2, 16, 32, 32, generator=torch.Generator().manual_seed(1))  # 32768 samples
    errors = []
    for steps in (4, 32):
        out = sample(name, data, z.clone(), ksampler_sigmas("karras", steps, MS, sampler=name), seed=5)
        assert abs(out.mean().item() - 0.7) < 0.01  # 3.6 standard errors of the mean
        errors.append(abs(out.std().item() - SPREAD))
    assert errors[0] > 0.1 and errors[1] < STOCHASTIC[name], errors
    sigmas = ksampler_sigmas("karras", 4, MS, sampler=name)
    first = sample(name, data, z[:1].clone(), sigmas, seed=5)
    assert torch.equal(first, sample(name, data, z[:1].clone(), sigmas, seed=5))  # seeded: reproducible
    assert not torch.equal(first, sample(name, data, z[:1].clone(), sigmas, seed=6))


@pytest.mark.parametrize(
    "name", ["euler", "heun", "dpm_2", "lms", "dpmpp_2m", "ipndm", "ipndm_v", "uni_pc", "uni_pc_bh2"]
)
def test_samplers_hand_sigma_to_the_denoiser_on_the_host(name: str) -> None:
    """The loop never reads a device value: σ reaches the denoiser as a CPU tensor whatever x's device
    (x on the meta device here stands for an accelerator; a CUDA σ would cost a sync per step)."""
    seen: list[torch.device] = []

    def denoise(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        seen.append(sigma.device)
        assert sigma.shape == (x.shape[0],) and sigma.dtype == torch.float32
        return x * 0.5

    x = torch.empty(2, 4, 8, 8, device="meta")
    out = sample(name, denoise, x, get_sigmas("simple", 6, MS), seed=0, model_sampling=MS)
    assert out.device.type == "meta" and len(seen) >= 6
    assert all(d.type == "cpu" for d in seen)

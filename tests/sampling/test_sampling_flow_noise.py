"""The flow parameterization helpers and the seeded noise (initial, ancestral, Brownian)."""

from __future__ import annotations

import math

import pytest
import torch

from sd35.sampling.flow import (
    denoised_from_velocity,
    inverse_noise_scaling,
    latent_from_noised,
    noise_latent,
    velocity_from_denoised,
)
from sd35.sampling.noise import BrownianPath, ancestral_noise_sampler, seeded_noise


def test_flow_identities_with_scalar_and_batched_sigma() -> None:
    g = torch.Generator().manual_seed(0)
    latent, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    sigma = torch.tensor([0.25, 0.8])
    x = noise_latent(latent, noise, sigma)
    torch.testing.assert_close(x[1], 0.8 * noise[1] + 0.2 * latent[1])
    v = noise - latent  # the exact flow velocity
    torch.testing.assert_close(denoised_from_velocity(x, v, sigma), latent)
    torch.testing.assert_close(velocity_from_denoised(x, latent, sigma), v)
    torch.testing.assert_close(latent_from_noised(x, noise, sigma), latent)
    torch.testing.assert_close(noise_latent(latent, noise, 0.5), 0.5 * (noise + latent))
    assert torch.equal(noise_latent(latent, noise, 1.0), noise)  # txt2img: the latent is multiplied by 0
    assert torch.equal(inverse_noise_scaling(x, 0.0), x)
    # KSamplerAdvanced leftover noise: x/(1−σ), and re-noising it with zero noise gives x back
    torch.testing.assert_close(noise_latent(inverse_noise_scaling(x, 0.3), torch.zeros_like(x), 0.3), x)


def test_seeded_noise_is_comfyui_prepare_noise() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(42)  # what ComfyUI prepare_noise and sd3.5 get_noise do
        expected = torch.randn(2, 16, 8, 12, dtype=torch.float32, device="cpu")
    noise = seeded_noise((2, 16, 8, 12), 42)
    assert noise.dtype == torch.float32 and noise.device.type == "cpu"
    assert torch.equal(noise, expected)
    assert torch.equal(seeded_noise((1, 16, 8, 12), 42)[0], noise[0])  # image 0 of a batch = batch-1 run
    assert not torch.equal(seeded_noise((1, 16, 8, 12), 43)[0], noise[1])
    # batch_index [3, 1]: single-image draws 0..3 in sequence, picked by index
    g = torch.Generator().manual_seed(7)
    draws = [torch.randn(1, 16, 8, 12, generator=g) for _ in range(4)]
    picked = seeded_noise((2, 16, 8, 12), 7, batch_index=[3, 1])
    assert torch.equal(picked, torch.cat([draws[3], draws[1]]))
    assert seeded_noise((1, 4), 2**64 - 1).shape == (1, 4)  # ComfyUI's seed range is [0, 2^64 − 1]


def test_ancestral_noise_is_seed_plus_one_on_cpu() -> None:
    x = torch.zeros(1, 4, 3, 3)
    draw = ancestral_noise_sampler(x, 5)
    g = torch.Generator().manual_seed(6)  # ComfyUI default_noise_sampler: seed + 1 on the CPU
    first, second = torch.randn(1, 4, 3, 3, generator=g), torch.randn(1, 4, 3, 3, generator=g)
    assert torch.equal(draw(1.0, 0.5), first) and torch.equal(draw(0.5, 0.2), second)
    assert not torch.equal(ancestral_noise_sampler(x, 5)(1.0, 0.5), seeded_noise((1, 4, 3, 3), 5))
    unseeded = ancestral_noise_sampler(x, None)(1.0, 0.5)
    assert unseeded.shape == x.shape


def test_brownian_path_increments() -> None:
    x = torch.zeros(200_000)
    path = BrownianPath(x, seed=3)
    a = path(1.0, 0.6)  # [0.6, 1.0]
    b = path(1.0, 0.2)  # [0.2, 1.0] overlaps [0.6, 1.0]
    c = path(0.6, 0.2)  # the rest of it
    for n in (a, b, c):
        assert abs(n.mean().item()) < 0.01 and abs(n.std().item() - 1) < 0.01
    # W(0.2) − W(1) = (W(0.6) − W(1)) + (W(0.2) − W(0.6)): correlation sqrt(0.4/0.8)
    torch.testing.assert_close(b * math.sqrt(0.8), a * math.sqrt(0.4) + c * math.sqrt(0.4))
    assert torch.corrcoef(torch.stack([a, b]))[0, 1].item() == pytest.approx(math.sqrt(0.5), abs=0.01)
    # a time between sampled ones comes from the Brownian bridge: consistent increments on both sides
    d, e = path(0.6, 0.4), path(0.4, 0.2)
    torch.testing.assert_close(d * math.sqrt(0.2) + e * math.sqrt(0.2), c * math.sqrt(0.4))
    assert abs(d.std().item() - 1) < 0.01 and abs(torch.corrcoef(torch.stack([d, e]))[0, 1].item()) < 0.01
    # deterministic for a seed, device and order of first queries aside
    again = BrownianPath(x, seed=3)
    assert torch.equal(again(1.0, 0.6), a) and torch.equal(again(1.0, 0.2), b)
    assert not torch.equal(BrownianPath(x, seed=4)(1.0, 0.6), a)

"""Seeded noise: the initial latent noise and the per-step noise of ancestral and SDE samplers.

Initial noise is what ComfyUI `comfy/sample.py` `prepare_noise` and sd3.5 `sd3_infer.py` `get_noise` draw:
`torch.manual_seed(seed)` then one `torch.randn` of the whole batch in fp32 on the CPU. A fresh CPU generator
seeded with the seed yields the same numbers without touching torch's global RNG.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

_U64 = 1 << 64


def seeded_noise(shape: Sequence[int], seed: int, batch_index: Sequence[int] | None = None) -> Tensor:
    """fp32 CPU noise of `shape` ([B, 16, H/8, W/8] for SD3) from one generator seeded with `seed`.

    One randn call for the whole batch, so image i of a batch differs from a batch-1 run with the same seed
    (except i = 0), exactly as in ComfyUI. With `batch_index` (ComfyUI's latent "batch_index"), [1, ...]
    tensors are drawn in sequence for indices 0..max(batch_index) and picked by index.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed % _U64)
    if batch_index is None:
        return torch.randn(tuple(shape), dtype=torch.float32, generator=generator, device="cpu")
    single = (1, *tuple(shape)[1:])
    wanted = sorted(set(batch_index))
    drawn: dict[int, Tensor] = {}
    for i in range(wanted[-1] + 1):
        noise = torch.randn(single, dtype=torch.float32, generator=generator, device="cpu")
        if i in wanted:
            drawn[i] = noise
    return torch.cat([drawn[i] for i in batch_index], dim=0)


NoiseSampler = Callable[[float, float], Tensor]
"""noise(σ, σ_next) -> a standard-normal tensor shaped like the latent (k-diffusion's noise_sampler)."""


def ancestral_noise_sampler(x: Tensor, seed: int | None) -> NoiseSampler:
    """ComfyUI `default_noise_sampler`: a new generator on x's device seeded with the sampling seed (seed + 1
    on the CPU, so the first draw is not the initial noise again), one randn like x per call.

    Without a seed the generator is seeded non-deterministically (ComfyUI would use the global RNG).
    """
    generator = torch.Generator(device=x.device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed((seed + 1 if x.device.type == "cpu" else seed) % _U64)

    def draw(sigma: float, sigma_next: float) -> Tensor:
        return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)

    return draw


class BrownianPath:
    """A Brownian motion W(t) sampled lazily at the query times: the noise of SDE samplers.

    noise(σ, σ_next) = (W(σ_next) − W(σ)) / sqrt(|σ_next − σ|), so increments over overlapping intervals are
    correlated as in ComfyUI's `BrownianTreeNoiseSampler` (dpmpp_sde queries [σ_i, σ_mid] and [σ_i, σ_next]).
    A new time beyond the sampled ones extends the path by an independent increment, one between two sampled
    times is drawn from the Brownian bridge. All draws come from one CPU fp32 generator seeded with `seed`,
    moved to x's device, so results do not depend on the device.

    Deviation: ComfyUI uses torchsde's BrownianTree, whose random numbers (and query-order independence) we
    do not reproduce; the law of the noise is the same, the values for a given seed are not.
    """

    def __init__(self, x: Tensor, seed: int | None) -> None:
        self._shape, self._device, self._dtype = tuple(x.shape), x.device, x.dtype
        self._generator = torch.Generator(device="cpu")
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed % _U64)
        self._times: list[float] = []
        self._values: list[Tensor] = []

    def _normal(self) -> Tensor:
        return torch.randn(self._shape, dtype=torch.float32, generator=self._generator, device="cpu")

    def value(self, t: float) -> Tensor:
        """W(t) (fp32, CPU); the first time queried is the origin W = 0."""
        i = bisect.bisect_left(self._times, t)
        if i < len(self._times) and self._times[i] == t:
            return self._values[i]
        if not self._times:
            w = torch.zeros(self._shape, dtype=torch.float32)
        elif i == len(self._times) or i == 0:
            near = len(self._times) - 1 if i else 0
            w = self._values[near] + math.sqrt(abs(t - self._times[near])) * self._normal()
        else:
            (t0, w0), (t1, w1) = (self._times[i - 1], self._values[i - 1]), (self._times[i], self._values[i])
            frac = (t - t0) / (t1 - t0)
            w = w0 + frac * (w1 - w0) + math.sqrt((t - t0) * (t1 - t) / (t1 - t0)) * self._normal()
        self._times.insert(i, t)
        self._values.insert(i, w)
        return w

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        start = self.value(sigma)
        dw = self.value(sigma_next) - start
        return (dw / math.sqrt(abs(sigma_next - sigma))).to(device=self._device, dtype=self._dtype)

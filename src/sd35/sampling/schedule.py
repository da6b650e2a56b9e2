"""Flow-matching model sampling (σ ↔ timestep, shift) and ComfyUI's sigma schedulers.

σ ∈ [0, 1] is the noise level of x_σ = σ·noise + (1 − σ)·x₀; the model sees timestep = 1000·σ.
Every schedule is an fp32 CPU tensor of decreasing sigmas that ends with 0 (ComfyUI `comfy/samplers.py`
`calculate_sigmas`; sd3.5 `sd3_infer.py` `get_sigmas` is the `normal` scheduler).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from sd35.errors import UserInputError
from sd35.sampling._special import beta_ppf

T = TypeVar("T", float, Tensor)

NUM_TRAIN_TIMESTEPS = 1000  # the σ table has σ(i/1000) for i = 1..1000 (sd3.5 and ComfyUI)


def shift_sigma(t: T, shift: float) -> T:
    """σ(t) = s·t / (1 + (s − 1)·t) for t ∈ [0, 1] (ComfyUI `time_snr_shift`, sd3.5
    `ModelSamplingDiscreteFlow.sigma`). Works on floats and tensors (elementwise, same dtype)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


@dataclass(frozen=True)
class ModelSampling:
    """Discrete-flow model sampling with a shift (SD3.x: 3.0), as ComfyUI `ModelSamplingDiscreteFlow` + `CONST`.

    `sigma_table()` is σ(i/1000·multiplier) for i = 1..1000 in fp32; sigma_min = σ(1) = 0.0029940 at shift 3,
    sigma_max = 1.0.
    """

    shift: float = 3.0
    multiplier: float = 1000.0

    def sigma_table(self) -> Tensor:
        """[1000] fp32, increasing: the table ComfyUI builds in `set_parameters`."""
        ts = torch.arange(1, NUM_TRAIN_TIMESTEPS + 1, 1) / NUM_TRAIN_TIMESTEPS * self.multiplier
        return self.sigma(ts)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma_table()[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigma_table()[-1])

    def timestep(self, sigma: T) -> T:
        """Model timestep for σ: multiplier·σ (1000·σ)."""
        return sigma * self.multiplier

    def sigma(self, timestep: T) -> T:
        """σ for a model timestep: shift_sigma(timestep / multiplier)."""
        return shift_sigma(timestep / self.multiplier, self.shift)

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI `percent_to_sigma` for flow models: 1.0 for p ≤ 0, 0.0 for p ≥ 1, else σ(1 − p)."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return shift_sigma(1.0 - percent, self.shift)


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def simple_schedule(ms: ModelSampling, steps: int) -> Tensor:
    """`simple`: σ_k = table[−(1 + int(k·1000/steps))] for k < steps, then 0."""
    table = ms.sigma_table()
    stride = len(table) / steps
    return torch.tensor([float(table[-(1 + int(k * stride))]) for k in range(steps)] + [0.0])


def _uniform_timesteps(ms: ModelSampling, steps: int, *, sgm: bool) -> Tensor:
    """`normal` / `sgm_uniform` (ComfyUI `normal_scheduler`): σ at timesteps linear in [t(σ_max), t(σ_min)]."""
    table = ms.sigma_table()
    start, end = ms.timestep(table[-1]), ms.timestep(table[0])
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
        return _append_zero(ms.sigma(timesteps))
    if math.isclose(float(ms.sigma(end)), 0.0, abs_tol=1e-5):  # never at shift > 0; kept for parity
        return ms.sigma(torch.linspace(start, end, steps + 1))
    return _append_zero(ms.sigma(torch.linspace(start, end, steps)))


def normal_schedule(ms: ModelSampling, steps: int) -> Tensor:
    """`normal` = the sd3.5 reference schedule. The already-shifted σ_min is shifted again, so the last
    non-zero σ is σ(σ_min) = 0.0089286 at shift 3."""
    return _uniform_timesteps(ms, steps, sgm=False)


def sgm_uniform_schedule(ms: ModelSampling, steps: int) -> Tensor:
    """`sgm_uniform`: like `normal` with steps+1 linspace points, the last one dropped."""
    return _uniform_timesteps(ms, steps, sgm=True)


def karras_schedule(ms: ModelSampling, steps: int, rho: float = 7.0) -> Tensor:
    """`karras` (k-diffusion `get_sigmas_karras`): (σmax^(1/ρ) + r·(σmin^(1/ρ) − σmax^(1/ρ)))^ρ, r ∈ [0, 1]."""
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = ms.sigma_min ** (1 / rho), ms.sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_schedule(ms: ModelSampling, steps: int) -> Tensor:
    """`exponential` (k-diffusion `get_sigmas_exponential`): log σ linear from σ_max to σ_min."""
    return _append_zero(torch.linspace(math.log(ms.sigma_max), math.log(ms.sigma_min), steps).exp())


def ddim_uniform_schedule(ms: ModelSampling, steps: int) -> Tensor:
    """`ddim_uniform` (ComfyUI `ddim_scheduler`): every ⌊1000/steps⌋-th table entry from index 1, reversed,
    then 0. The length is not always steps+1 (e.g. 32 values for 30 steps)."""
    table = ms.sigma_table()
    sigs = [0.0]
    stride = max(len(table) // steps, 1)
    sigs += [float(table[i]) for i in range(1, len(table), stride)]
    return torch.tensor(sigs[::-1])


def beta_schedule(ms: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """`beta` (ComfyUI `beta_scheduler`, arXiv 2407.12173): table[rint(ppf_{Beta(α,β)}(1 − k/steps)·999)],
    consecutive duplicate indices dropped, then 0 (so it can be shorter than steps+1)."""
    table = ms.sigma_table()
    total = len(table) - 1
    sigs: list[float] = []
    last = -1
    for k in range(steps):
        index = round(beta_ppf(1.0 - k * (1.0 / steps), alpha, beta) * total)  # numpy.rint: half to even
        if index != last:
            sigs.append(float(table[index]))
        last = index
    return torch.tensor(sigs + [0.0])


def linear_quadratic_schedule(
    ms: ModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> Tensor:
    """`linear_quadratic` (ComfyUI, from Mochi): σ = 1 − s_k with s linear up to `threshold_noise` over the
    first steps//2 steps, then quadratic up to 1; multiplied by σ_max."""
    if steps == 1:
        return torch.tensor([1.0, 0.0]) * ms.sigma_max
    if linear_steps is None:
        linear_steps = steps // 2
    linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    step_diff = linear_steps - threshold_noise * steps
    quadratic_steps = steps - linear_steps
    quad_coef = step_diff / (linear_steps * quadratic_steps**2)
    lin_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
    const = quad_coef * (linear_steps**2)
    quadratic = [quad_coef * (i**2) + lin_coef * i + const for i in range(linear_steps, steps)]
    schedule = [1.0 - s for s in linear + quadratic + [1.0]]
    return torch.tensor(schedule) * ms.sigma_max


def kl_optimal_schedule(ms: ModelSampling, steps: int) -> Tensor:
    """`kl_optimal` (ComfyUI, from AUTOMATIC1111 #15608): tan of atan(σ) linear from σ_max to σ_min, then 0.

    Deviation: ComfyUI divides by steps−1 and returns NaN for one step; here one step gives [σ_max, 0].
    """
    adj = torch.arange(steps, dtype=torch.float32).div_(max(steps - 1, 1))
    sigmas = adj.new_zeros(steps + 1)
    sigmas[:-1] = (adj * math.atan(ms.sigma_min) + (1 - adj) * math.atan(ms.sigma_max)).tan_()
    return sigmas


_SCHEDULERS: dict[str, Callable[[ModelSampling, int], Tensor]] = {
    "simple": simple_schedule,
    "sgm_uniform": sgm_uniform_schedule,
    "karras": karras_schedule,
    "exponential": exponential_schedule,
    "ddim_uniform": ddim_uniform_schedule,
    "beta": beta_schedule,
    "normal": normal_schedule,
    "linear_quadratic": linear_quadratic_schedule,
    "kl_optimal": kl_optimal_schedule,
}
SCHEDULERS: tuple[str, ...] = tuple(_SCHEDULERS)  # ComfyUI's SCHEDULER_NAMES order

# ComfyUI `KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS`: steps+1 sigmas, the second-to-last dropped.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def get_sigmas(scheduler: str, steps: int, model_sampling: ModelSampling) -> Tensor:
    """Sigmas [steps+1] fp32 ending with 0 for a ComfyUI scheduler name (`calculate_sigmas`).

    `beta` and `ddim_uniform` can return another length (see their docstrings). Unknown names raise
    UserInputError (ComfyUI's KSampler silently falls back to `simple`).
    """
    if scheduler not in _SCHEDULERS:
        raise UserInputError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if steps < 1:
        raise UserInputError(f"steps must be at least 1, got {steps}")
    return _SCHEDULERS[scheduler](model_sampling, steps).to(torch.float32)


def ksampler_sigmas(scheduler: str, steps: int, model_sampling: ModelSampling, *, sampler: str | None = None) -> Tensor:
    """ComfyUI `KSampler.calculate_sigmas`: dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2 get steps+1
    sigmas with the penultimate one dropped; every other sampler gets `get_sigmas`."""
    if sampler in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = get_sigmas(scheduler, steps + 1, model_sampling)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return get_sigmas(scheduler, steps, model_sampling)


def sigmas_for_denoise(
    scheduler: str,
    steps: int,
    denoise: float | None,
    model_sampling: ModelSampling,
    *,
    sampler: str | None = None,
) -> Tensor:
    """ComfyUI `KSampler.set_steps`: for denoise < 1, sigmas for int(steps/denoise) steps, last steps+1 kept.

    denoise None or > 0.9999 → the full schedule; denoise ≤ 0 → an empty tensor (nothing to sample; ComfyUI
    then returns the latent unchanged). img2img then starts from noise_latent(latent, noise, sigmas[0]).
    """
    if denoise is None or denoise > 0.9999:
        return ksampler_sigmas(scheduler, steps, model_sampling, sampler=sampler)
    if denoise <= 0.0:
        return torch.zeros(0)
    sigmas = ksampler_sigmas(scheduler, int(steps / denoise), model_sampling, sampler=sampler)
    return sigmas[-(steps + 1) :]


def slice_sigmas(
    sigmas: Tensor,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> Tensor:
    """ComfyUI `KSampler.sample` slicing (KSamplerAdvanced start_at_step / end_at_step).

    Keeps sigmas[:last_step+1] when last_step < len−1 (its last value set to 0 if `force_full_denoise`,
    i.e. return_with_leftover_noise disabled), then sigmas[start_step:]. An empty result means "nothing to
    sample, return the latent unchanged" (ComfyUI returns latent_image when start_step ≥ len−1).
    """
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return sigmas.new_zeros(0)
        sigmas = sigmas[start_step:]
    return sigmas


def truncate_sigmas_reference(sigmas: Tensor, denoise: float) -> Tensor:
    """img2img as the sd3.5 reference does it (`sd3_infer.py`): sigmas[int(steps·(1 − denoise)):]."""
    steps = len(sigmas) - 1
    return sigmas[int(steps * (1 - denoise)) :]

"""Multistep samplers (reuse earlier model outputs): dpmpp_2m, lms, ipndm, ipndm_v.

Matches ComfyUI `comfy/k_diffusion/sampling.py`; as there, these use the k-diffusion form of the ODE
(t = −log σ for dpmpp_2m) for flow models too.
"""

from __future__ import annotations

import math

from torch import Tensor

from sd35.sampling._special import lagrange_integral
from sd35.sampling.base import DenoiseFn, OnStep, first_eval, sigma_list
from sd35.sampling.schedule import ModelSampling

_MS = ModelSampling()


def sample_dpmpp_2m(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`dpmpp_2m` (DPM-Solver++(2M); sd3.5 reference `sample_dpmpp_2m`), t = −log σ, h = t_next − t.

    First step: x ← (σ_next/σ)·x − expm1(−h)·D. Later: D' = (1 + 1/(2r))·D − (1/(2r))·D_prev with
    r = h_prev/h. The step to σ = 0 returns D.
    """
    s = sigma_list(sigmas)
    old_denoised: Tensor | None = None
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i] / s[i + 1])
            mixed = denoised
            if old_denoised is not None:
                r = math.log(s[i - 1] / s[i]) / h
                mixed = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * mixed
        old_denoised = denoised
    return x


def sample_lms(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
    order: int = 4,
) -> Tensor:
    """`lms`: linear multistep (Adams-Bashforth in σ) up to order 4, coefficients = exact integrals of the
    Lagrange basis over [σ_i, σ_{i+1}]; the step to σ = 0 returns D."""
    s = sigma_list(sigmas)
    derivatives: list[Tensor] = []
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        derivatives = [*derivatives, (x - denoised) / s[i]][-order:]
        if s[i + 1] == 0:
            x = denoised
            continue
        current = min(i + 1, order)
        for j in range(current):
            x = x + lagrange_integral(current, s, i, j) * derivatives[-1 - j]
    return x


def _ipndm_fixed(d: Tensor, history: list[Tensor]) -> Tensor:
    """The classical Adams-Bashforth combination of orders 1-4 (equal-step coefficients)."""
    if len(history) == 0:
        return d
    if len(history) == 1:
        return (3 * d - history[-1]) / 2
    if len(history) == 2:
        return (23 * d - 16 * history[-1] + 5 * history[-2]) / 12
    return (55 * d - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24


def _ipndm_variable(d: Tensor, history: list[Tensor], s: list[float], i: int) -> Tensor:
    """Variable-step Adams-Bashforth combination of orders 1-4 (zju-pi diff-solvers `ipndm_v`)."""
    order = len(history) + 1
    if order == 1:
        return d
    h0, h1 = s[i + 1] - s[i], s[i] - s[i - 1]
    if order == 2:
        return (2 + h0 / h1) / 2 * d - (h0 / h1) / 2 * history[-1]
    h2 = s[i - 1] - s[i - 2]
    t1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        c1 = (2 + h0 / h1) / 2 + t1
        c2 = -(h0 / h1) / 2 - (1 + h1 / h2) * t1
        return c1 * d + c2 * history[-1] + t1 * h1 / h2 * history[-2]
    h3 = s[i - 2] - s[i - 3]
    t2 = (
        ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
        * (h0 * (h0 + h1) * (h0 + h1 + h2))
        / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    c1 = (2 + h0 / h1) / 2 + t1 + t2
    c2 = -(h0 / h1) / 2 - (1 + h1 / h2) * t1 - (1 + h1 / h2 + q) * t2
    c3 = t1 * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * t2
    c4 = -t2 * q * h1 / h2
    return c1 * d + c2 * history[-1] + c3 * history[-2] + c4 * history[-3]


def _ipndm(
    denoise: DenoiseFn, x: Tensor, sigmas: Tensor, on_step: OnStep | None, variable: bool, max_order: int = 4
) -> Tensor:
    s = sigma_list(sigmas)
    history: list[Tensor] = []  # the last max_order−1 derivatives, oldest first
    for i in range(len(s) - 1):
        denoised = first_eval(denoise, x, s, i, on_step)
        d = (x - denoised) / s[i]
        if s[i + 1] == 0:
            x_next = denoised
        else:
            combo = _ipndm_variable(d, history, s, i) if variable else _ipndm_fixed(d, history)
            x_next = x + (s[i + 1] - s[i]) * combo
        history = [*history, d][-(max_order - 1) :]
        x = x_next
    return x


def sample_ipndm(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`ipndm`: improved PNDM (zju-pi diff-solvers), Adams-Bashforth on d = (x − D)/σ with equal-step
    coefficients up to order 4; the step to σ = 0 returns D."""
    return _ipndm(denoise, x, sigmas, on_step, variable=False)


def sample_ipndm_v(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`ipndm_v`: like `ipndm` with coefficients for the actual (variable) step sizes.

    These are ComfyUI's (zju-pi's) weights, reproduced as they are: exact variable-step Adams-Bashforth up to
    order 2; order 3 matches AB3 on even steps only, and order 4 is not AB4 even on even steps
    ((57, −65, 43, −11)/24 instead of (55, −59, 37, −9)/24). Still consistent (weights sum to 1).
    """
    return _ipndm(denoise, x, sigmas, on_step, variable=True)

"""UniPC (Zhao et al. 2023) multistep predictor-corrector, B(h) variants bh1 (`uni_pc`) and bh2 (`uni_pc_bh2`).

Matches ComfyUI `comfy/extra_samplers/uni_pc.py` `sample_unipc` for any model: ComfyUI runs UniPC on
VP-rescaled states x/sqrt(1+σ²) with α = 1/sqrt(1+σ²) and λ = log(α/σ_vp) = −log σ, data prediction D.
Dividing every update by α shows it is the same update on x itself, which is what this module does:

    x_t = (σ_t/σ_0)·x − expm1(−h)·D_0 − B(h)·Σ ρ_k·D1_k,   h = log(σ_0/σ_t),

order min(3, steps − 1) with lower orders for warm-up and the final steps, the corrector at every step but
the last (whose model output is never needed), and a final σ of 0 replaced by 0.001 (λ(0) is infinite);
the output is the state at σ = 0.001, as in ComfyUI. KSampler gives uni_pc steps+1 sigmas with the
penultimate one dropped (schedule.ksampler_sigmas). With one step (order 0) ComfyUI calls the model once
and returns its input unchanged; so does this.

Deviation: ComfyUI computes λ in fp32 through the VP marginals, log(1 − exp(2·log α)), which loses
precision for small σ (at σ = 0.001 its λ is 6.9315 instead of −log 0.001 = 6.9078). Its updates stay
self-consistent (the x coefficient is e^{−h} from the same λ), so its last step effectively lands at
σ ≈ 0.000977 instead of 0.001: outputs differ by about 2.3e-5·|v| (≈ 1e-4 on SD3 latents). Here
λ = −log σ exactly and scalar coefficients are float64 (ComfyUI: partly fp32).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sd35.sampling.base import DenoiseFn, OnStep, evaluate, first_eval, report, sigma_list
from sd35.sampling.schedule import ModelSampling

_MS = ModelSampling()
_FINAL_SIGMA = 0.001  # ComfyUI replaces a final σ = 0 by this


def _coefficients(rks: list[float], hh: float, order: int, variant: str, predictor: bool) -> tuple[float, list[float]]:
    """B(h) and the ρ weights (predictor: for the order−1 history differences; corrector: plus D1_t)."""
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k = math.expm1(hh) / hh - 1
    factorial = 1
    rows, rhs = [], []
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    if predictor:
        if order <= 1:
            return b_h, []
        if order == 2:
            return b_h, [0.5]
        a = torch.tensor(rows, dtype=torch.float64)[:-1, :-1]
        return b_h, torch.linalg.solve(a, torch.tensor(rhs[:-1], dtype=torch.float64)).tolist()
    if order == 1:
        return b_h, [0.5]
    a = torch.tensor(rows, dtype=torch.float64)
    return b_h, torch.linalg.solve(a, torch.tensor(rhs, dtype=torch.float64)).tolist()


def _update(
    denoise: DenoiseFn,
    x: Tensor,
    models: list[Tensor],
    times: list[float],
    sigma_t: float,
    order: int,
    variant: str,
    corrector_step: int | None,
) -> tuple[Tensor, Tensor | None]:
    """One multistep UniPC update from times[-1] to sigma_t (ComfyUI `multistep_uni_pc_bh_update`).

    With `corrector_step` set, the model is evaluated at the predicted state (that step index) and the
    corrected state is returned with that model output; otherwise (None) the prediction and None.
    """
    sigma_0, model_0 = times[-1], models[-1]
    h = math.log(sigma_0 / sigma_t)
    rks: list[float] = []
    diffs: list[Tensor] = []
    for i in range(1, order):
        rk = math.log(sigma_0 / times[-(i + 1)]) / h
        rks.append(rk)
        diffs.append((models[-(i + 1)] - model_0) / rk)
    rks.append(1.0)
    hh = -h
    base = (sigma_t / sigma_0) * x - math.expm1(hh) * model_0
    b_h, rhos_p = _coefficients(rks, hh, order, variant, predictor=True)
    x_t = base
    for rho, diff in zip(rhos_p, diffs):
        x_t = x_t - b_h * rho * diff
    if corrector_step is None:
        return x_t, None
    model_t = evaluate(denoise, x_t, sigma_t, corrector_step)
    _, rhos_c = _coefficients(rks, hh, order, variant, predictor=False)
    x_t = base - b_h * rhos_c[-1] * (model_t - model_0)
    for rho, diff in zip(rhos_c[:-1], diffs):
        x_t = x_t - b_h * rho * diff
    return x_t, model_t


def _unipc(denoise: DenoiseFn, x: Tensor, sigmas: Tensor, on_step: OnStep | None, variant: str) -> Tensor:
    s = sigma_list(sigmas)
    if s[-1] == 0:
        s[-1] = _FINAL_SIGMA
    steps = len(s) - 1
    order = min(3, steps - 1)
    model_0 = first_eval(denoise, x, s, 0, on_step)
    models, times = [model_0], [s[0]]
    for i in range(1, steps):
        if i < order:  # warm-up: growing order, corrector on
            x, model_x = _update(denoise, x, models, times, s[i], i, variant, corrector_step=i)
            assert model_x is not None
            models, times = [*models, model_x], [*times, s[i]]
        else:
            x, model_x = _update(denoise, x, models, times, s[i], min(order, steps + 1 - i), variant, i)
            assert model_x is not None
            models, times = [*models[1:], model_x], [*times[1:], s[i]]
        report(on_step, i, s, x, models[-1])
    if steps >= 2:  # the final step to σ_N: lower order, no corrector, no model call
        x, _ = _update(denoise, x, models, times, s[steps], min(order, 1), variant, corrector_step=None)
    return x


def sample_uni_pc(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`uni_pc`: UniPC with B(h) = h (bh1)."""
    return _unipc(denoise, x, sigmas, on_step, "bh1")


def sample_uni_pc_bh2(
    denoise: DenoiseFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int | None = None,
    on_step: OnStep | None = None,
    model_sampling: ModelSampling = _MS,
) -> Tensor:
    """`uni_pc_bh2`: UniPC with B(h) = expm1(h)."""
    return _unipc(denoise, x, sigmas, on_step, "bh2")

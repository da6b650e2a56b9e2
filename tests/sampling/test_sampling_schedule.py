"""Schedules vs their closed forms, the sd3.5 reference numbers and ComfyUI's measured values (shift 3)."""

from __future__ import annotations

import math

import pytest
import torch

from sd35.errors import UserInputError
from sd35.sampling._special import beta_cdf, beta_ppf, lagrange_integral
from sd35.sampling.schedule import (
    SCHEDULERS,
    ModelSampling,
    get_sigmas,
    ksampler_sigmas,
    shift_sigma,
    sigmas_for_denoise,
    slice_sigmas,
    truncate_sigmas_reference,
)

MS = ModelSampling()  # shift 3, multiplier 1000


def _sigma(t: float) -> float:
    """σ(t) = 3t / (1 + 2t), written out by hand."""
    return 3 * t / (1 + 2 * t)


def _close(actual: torch.Tensor, expected: list[float], atol: float = 1e-6) -> None:
    assert actual.dtype == torch.float32
    assert len(actual) == len(expected)
    diff = (actual.double() - torch.tensor(expected, dtype=torch.float64)).abs().max().item()
    assert diff <= atol, diff


def test_shift_and_model_sampling() -> None:
    assert shift_sigma(0.5, 3.0) == pytest.approx(0.75)
    assert shift_sigma(0.3, 1.0) == 0.3
    assert MS.sigma_min == pytest.approx(_sigma(0.001), abs=1e-9)  # 0.0029940
    assert MS.sigma_min == pytest.approx(0.0029940, abs=1e-7)
    assert MS.sigma_max == 1.0
    assert MS.timestep(0.5) == 500.0
    assert MS.sigma(torch.tensor(250.0)).item() == pytest.approx(0.5)
    table = MS.sigma_table()
    assert table.shape == (1000,) and table.dtype == torch.float32
    assert bool((table[1:] > table[:-1]).all())
    # ComfyUI percent_to_sigma at shift 3 (measured in ComfyUI: 0.996644, 0.944444, 0.923077)
    assert MS.percent_to_sigma(0.0) == 1.0 and MS.percent_to_sigma(1.0) == 0.0
    assert MS.percent_to_sigma(0.01) == pytest.approx(0.996644, abs=1e-6)
    assert MS.percent_to_sigma(0.15) == pytest.approx(0.944444, abs=1e-6)
    assert MS.percent_to_sigma(0.2) == pytest.approx(0.923077, abs=1e-6)


def test_normal_is_the_sd35_reference_schedule() -> None:
    sigmas = get_sigmas("normal", 50, MS)
    # linspace of timesteps from 1000·σ_max to 1000·σ_min, σ of each, then 0 (sd3_infer.get_sigmas)
    t_end = 1000 * _sigma(0.001)
    expected = [_sigma((1000 + k * (t_end - 1000) / 49) / 1000) for k in range(50)] + [0.0]
    _close(sigmas, expected, atol=2e-6)
    assert sigmas[:3].tolist() == pytest.approx([1.0, 0.99312, 0.98606], abs=1e-5)
    assert sigmas[-4:].tolist() == pytest.approx([0.12053, 0.06690, 0.0089286, 0.0], abs=1e-5)
    assert sigmas[-2].item() == pytest.approx(_sigma(_sigma(0.001)), abs=1e-8)  # σ_min shifted twice


def test_simple_closed_form() -> None:
    for steps in (1, 7, 40):
        expected = [_sigma((1000 - int(k * 1000 / steps)) / 1000) for k in range(steps)] + [0.0]
        _close(get_sigmas("simple", steps, MS), expected)


def test_sgm_uniform_closed_form() -> None:
    t_end = 1000 * _sigma(0.001)
    for steps in (1, 9, 40):
        expected = [_sigma((1000 + k * (t_end - 1000) / steps) / 1000) for k in range(steps)] + [0.0]
        _close(get_sigmas("sgm_uniform", steps, MS), expected, atol=2e-6)


def test_karras_and_exponential_closed_forms() -> None:
    lo, hi, n = _sigma(0.001), 1.0, 12
    karras = [(hi ** (1 / 7) + k / (n - 1) * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7 for k in range(n)]
    _close(get_sigmas("karras", n, MS), karras + [0.0])
    exponential = [math.exp(math.log(hi) + k / (n - 1) * (math.log(lo) - math.log(hi))) for k in range(n)]
    _close(get_sigmas("exponential", n, MS), exponential + [0.0])


def test_linear_quadratic_closed_form() -> None:
    # Mochi schedule: 1 − s, s linear to 0.025 over steps//2, then the quadratic through (n/2, 0.025), (n, 1)
    steps, half, thr = 10, 5, 0.025
    s = [i * thr / half for i in range(half)]
    a = (half - thr * steps) / (half * (steps - half) ** 2)
    b = thr / half - 2 * (half - thr * steps) / (steps - half) ** 2
    s += [a * i * i + b * i + a * half * half for i in range(half, steps)]
    _close(get_sigmas("linear_quadratic", steps, MS), [1 - v for v in s] + [0.0])
    assert a * steps**2 + b * steps + a * half**2 == pytest.approx(1.0)  # the quadratic reaches s = 1 at n
    _close(get_sigmas("linear_quadratic", 1, MS), [1.0, 0.0])


def test_beta_schedule_from_beta_quantiles() -> None:
    steps = 12
    table = [_sigma(i / 1000) for i in range(1, 1001)]
    indices = [round(beta_ppf(1 - k / steps, 0.6, 0.6) * 999) for k in range(steps)]
    expected = [table[i] for n, i in enumerate(indices) if n == 0 or i != indices[n - 1]] + [0.0]
    _close(get_sigmas("beta", steps, MS), expected)


def test_ddim_uniform_and_kl_optimal() -> None:
    table = [_sigma(i / 1000) for i in range(1, 1001)]
    _close(get_sigmas("ddim_uniform", 40, MS), [table[i] for i in range(976, 0, -25)] + [0.0])
    assert len(get_sigmas("ddim_uniform", 30, MS)) == 32  # stride 33 from index 1: 31 values + 0
    lo, n = _sigma(0.001), 8
    kl = [math.tan(k / (n - 1) * math.atan(lo) + (1 - k / (n - 1)) * math.atan(1.0)) for k in range(n)]
    _close(get_sigmas("kl_optimal", n, MS), kl + [0.0])


def test_comfyui_measured_values_at_40_steps() -> None:
    """First three and last four sigmas ComfyUI produces at shift 3, 40 steps (docs/comfyui.md §3)."""
    measured = {
        "simple": ([1.0, 0.991525, 0.982759], [0.195652, 0.136364, 0.071429, 0]),
        "sgm_uniform": ([1.0, 0.991551, 0.982812], [0.201904, 0.143379, 0.079328, 0]),
        "normal": ([1.0, 0.991331, 0.982356], [0.146509, 0.081046, 0.008929, 0]),
        "karras": ([1.0, 0.903053, 0.814277], [0.004694, 0.003762, 0.002994, 0]),
        "beta": ([1.0, 0.998663, 0.995629], [0.074144, 0.040856, 0.014851, 0]),
    }
    for name, (head, tail) in measured.items():
        sigmas = get_sigmas(name, 40, MS)
        assert len(sigmas) == 41, name
        assert sigmas[:3].tolist() == pytest.approx(head, abs=1e-6), name
        assert sigmas[-4:].tolist() == pytest.approx(tail, abs=1e-6), name


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_schedule_decreases_to_zero(name: str) -> None:
    for steps in (1, 2, 5, 33):
        sigmas = get_sigmas(name, steps, MS)
        assert sigmas.dtype == torch.float32 and sigmas[-1].item() == 0.0
        assert bool((sigmas[1:] < sigmas[:-1]).all()), (name, steps)
        assert sigmas[0].item() <= 1.0


def test_unknown_names_and_bad_steps() -> None:
    with pytest.raises(UserInputError, match="unknown scheduler"):
        get_sigmas("nope", 10, MS)
    with pytest.raises(UserInputError, match="steps"):
        get_sigmas("normal", 0, MS)


def test_ksampler_drops_the_penultimate_sigma_for_dpm2_and_unipc() -> None:
    full = get_sigmas("normal", 11, MS)
    for sampler in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
        sigmas = ksampler_sigmas("normal", 10, MS, sampler=sampler)
        assert torch.equal(sigmas, torch.cat([full[:-2], full[-1:]]))
    assert torch.equal(ksampler_sigmas("normal", 10, MS, sampler="euler"), get_sigmas("normal", 10, MS))


def test_denoise_uses_steps_over_denoise_and_keeps_the_tail() -> None:
    # ComfyUI KSampler.set_steps: 20 steps at denoise 0.75 → schedule of int(20/0.75) = 26 steps, last 21
    sigmas = sigmas_for_denoise("sgm_uniform", 20, 0.75, MS)
    assert torch.equal(sigmas, get_sigmas("sgm_uniform", 26, MS)[-21:])
    assert len(sigmas) == 21 and sigmas[-1].item() == 0.0
    assert torch.equal(sigmas_for_denoise("normal", 8, 1.0, MS), get_sigmas("normal", 8, MS))
    assert torch.equal(sigmas_for_denoise("normal", 8, None, MS), get_sigmas("normal", 8, MS))
    assert sigmas_for_denoise("normal", 8, 0.0, MS).numel() == 0
    with_unipc = sigmas_for_denoise("normal", 10, 0.5, MS, sampler="uni_pc")
    assert torch.equal(with_unipc, ksampler_sigmas("normal", 20, MS, sampler="uni_pc")[-11:])


def test_advanced_slicing_and_reference_img2img() -> None:
    sigmas = get_sigmas("normal", 10, MS)
    part = slice_sigmas(sigmas, start_step=3, last_step=7, force_full_denoise=False)
    assert torch.equal(part, sigmas[3:8])
    done = slice_sigmas(sigmas, start_step=3, last_step=7, force_full_denoise=True)
    assert torch.equal(done[:-1], sigmas[3:7]) and done[-1].item() == 0.0
    assert sigmas[7].item() > 0  # the input is not modified in place
    assert slice_sigmas(sigmas, start_step=10).numel() == 0
    assert torch.equal(slice_sigmas(sigmas, 0, 10000, True), sigmas)
    # sd3.5 reference: sigmas[int(steps·(1 − denoise)):]; in floats 50·(1 − 0.8) = 9.999…, so the reference's
    # default img2img (50 steps, denoise 0.8) starts at index 9, i.e. runs 41 steps, not 40
    full = get_sigmas("normal", 50, MS)
    assert torch.equal(truncate_sigmas_reference(full, 0.8), full[9:])
    assert torch.equal(truncate_sigmas_reference(full, 0.5), full[25:])


def test_beta_quantile_and_cdf() -> None:
    for x in (0.1, 0.37, 0.9):
        assert beta_cdf(x, 1.0, 1.0) == pytest.approx(x, abs=1e-13)
        assert beta_cdf(x, 2.0, 1.0) == pytest.approx(x * x, abs=1e-13)
        assert beta_cdf(x, 1.0, 3.0) == pytest.approx(1 - (1 - x) ** 3, abs=1e-13)
        assert beta_ppf(beta_cdf(x, 0.6, 0.6), 0.6, 0.6) == pytest.approx(x, abs=1e-12)
    assert beta_cdf(0.5, 0.6, 0.6) == pytest.approx(0.5, abs=1e-14)
    assert beta_ppf(0.25, 0.6, 0.6) == pytest.approx(1 - beta_ppf(0.75, 0.6, 0.6), abs=1e-12)
    # Beta(0.6, 0.6) CDF by quadrature of its density after u = x^0.6 (removes the endpoint singularity)
    grid = torch.linspace(0, 0.3**0.6, 200001, dtype=torch.float64)
    density = (1 - grid ** (1 / 0.6)) ** (-0.4) / 0.6
    integral = torch.trapezoid(density, grid).item() / math.exp(2 * math.lgamma(0.6) - math.lgamma(1.2))
    assert beta_cdf(0.3, 0.6, 0.6) == pytest.approx(integral, abs=1e-8)


def test_lagrange_integral_matches_hand_integrals() -> None:
    t = [1.0, 0.7, 0.45, 0.3, 0.1]
    assert lagrange_integral(1, t, 2, 0) == pytest.approx(t[3] - t[2])
    # order 2 at i = 2: ∫ (τ − t1)/(t2 − t1) and ∫ (τ − t2)/(t1 − t2) over [t2, t3]
    a, b, c = t[1], t[2], t[3]
    c0 = ((c - a) ** 2 - (b - a) ** 2) / 2 / (b - a)
    c1 = ((c - b) ** 2) / 2 / (a - b)
    assert lagrange_integral(2, t, 2, 0) == pytest.approx(c0, abs=1e-15)
    assert lagrange_integral(2, t, 2, 1) == pytest.approx(c1, abs=1e-15)
    # the basis sums to one, so the coefficients sum to the interval length
    assert sum(lagrange_integral(4, t, 3, j) for j in range(4)) == pytest.approx(t[4] - t[3], abs=1e-15)
    with pytest.raises(ValueError):
        lagrange_integral(3, t, 1, 0)

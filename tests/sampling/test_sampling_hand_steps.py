"""Each sampler's first steps computed by hand from ComfyUI's formulas, on a nonlinear toy denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from sd35.errors import Cancelled, UserInputError
from sd35.sampling._special import lagrange_integral
from sd35.sampling.noise import BrownianPath
from sd35.sampling.samplers import SAMPLERS, StepInfo, sample
from sd35.sampling.samplers_multistep import _ipndm_fixed, _ipndm_variable
from sd35.sampling.schedule import ModelSampling

MS = ModelSampling()


class Recorder:
    """D(x, σ) = tanh(x)·(1 − σ) + 0.3·σ·cos(x), and a log of (σ, step) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],) and sigma.dtype == torch.float32
        self.calls.append((round(sigma[0].item(), 6), step))
        return f(x, sigma[0].item())


def f(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.tanh(x) * (1 - sigma) + 0.3 * sigma * torch.cos(x)


def x0() -> torch.Tensor:
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)


def run(name: str, sigmas: list[float], seed: int | None = None) -> tuple[torch.Tensor, list[tuple[float, int]]]:
    denoise = Recorder()
    out = sample(name, denoise, x0(), torch.tensor(sigmas), seed=seed)
    return out, denoise.calls


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


S3 = [1.0, 0.6, 0.25, 0.0]


def test_euler() -> None:
    out, calls = run("euler", S3)
    x = x0()
    x = x + (x - f(x, 1.0)) / 1.0 * (0.6 - 1.0)
    x = x + (x - f(x, 0.6)) / 0.6 * (0.25 - 0.6)
    close(out, f(x, 0.25))  # the step to 0 lands on D
    assert calls == [(1.0, 0), (0.6, 1), (0.25, 2)]
    close(run("ddim", S3)[0], out)


def test_dpmpp_2m() -> None:
    out, calls = run("dpmpp_2m", S3)
    x = x0()
    d0 = f(x, 1.0)
    x1 = 0.6 * x + 0.4 * d0  # (σ1/σ0)·x − expm1(−h)·D = the exact flow DDIM step
    d1 = f(x1, 0.6)
    h0, h1 = math.log(1 / 0.6), math.log(0.6 / 0.25)
    r = h0 / h1
    mixed = (1 + 1 / (2 * r)) * d1 - 1 / (2 * r) * d0
    x2 = (0.25 / 0.6) * x1 - math.expm1(-h1) * mixed
    close(out, f(x2, 0.25))
    assert calls == [(1.0, 0), (0.6, 1), (0.25, 2)]


def test_heun_and_dpm_2() -> None:
    out, calls = run("heun", [1.0, 0.5, 0.0])
    x = x0()
    d = x - f(x, 1.0)
    x_2 = x - 0.5 * d
    d_2 = (x_2 - f(x_2, 0.5)) / 0.5
    x1 = x - 0.5 * (d + d_2) / 2
    close(out, f(x1, 0.5))
    assert calls == [(1.0, 0), (0.5, 0), (0.5, 1)]  # the corrector call carries its step's index

    out, calls = run("dpm_2", [1.0, 0.5, 0.0])
    mid = math.sqrt(0.5)  # exp of the mean of log σ and log σ_next
    x_2 = x + d * (mid - 1.0)
    x1 = x + (x_2 - f(x_2, mid)) / mid * (0.5 - 1.0)
    close(out, f(x1, 0.5))
    assert calls == [(1.0, 0), (round(mid, 6), 0), (0.5, 1)]


def test_lms_and_ipndm() -> None:
    out, _ = run("lms", S3)
    x = x0()
    d0 = x - f(x, 1.0)
    x1 = x + (0.6 - 1.0) * d0
    d1 = (x1 - f(x1, 0.6)) / 0.6

    def integral(c: float) -> float:  # ∫_{0.6}^{0.25} (τ − c) dτ
        return ((0.25 - c) ** 2 - (0.6 - c) ** 2) / 2

    x2 = x1 + integral(1.0) / (0.6 - 1.0) * d1 + integral(0.6) / (1.0 - 0.6) * d0
    close(out, f(x2, 0.25))

    sig = [1.0, 0.7, 0.45, 0.2, 0.0]
    out, _ = run("ipndm", sig)
    d = [x - f(x, 1.0)]
    xs = [x, x + (0.7 - 1.0) * d[0]]
    d.append((xs[1] - f(xs[1], 0.7)) / 0.7)
    xs.append(xs[1] + (0.45 - 0.7) * (3 * d[1] - d[0]) / 2)
    d.append((xs[2] - f(xs[2], 0.45)) / 0.45)
    xs.append(xs[2] + (0.2 - 0.45) * (23 * d[2] - 16 * d[1] + 5 * d[0]) / 12)
    close(out, f(xs[3], 0.2))

    out_v, _ = run("ipndm_v", sig)
    h0, h1 = 0.45 - 0.7, 0.7 - 1.0
    second = xs[1] + h0 * ((2 + h0 / h1) / 2 * d[1] - (h0 / h1) / 2 * d[0])
    assert not torch.allclose(second, xs[2])  # variable-step coefficients differ on this schedule
    out_2, _ = run("ipndm_v", sig[:3] + [0.0])
    close(out_2, f(second, 0.45))


def test_euler_ancestral_rf() -> None:
    out, _ = run("euler_ancestral", [1.0, 0.5, 0.0], seed=9)
    x = x0()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(10), dtype=x.dtype)  # seed + 1 (CPU)
    sigma_down = 0.5 * (1 + (0.5 / 1.0 - 1))  # 0.25
    renoise = math.sqrt(0.5**2 - sigma_down**2 * 0.5**2 / 0.75**2)
    x1 = (0.5 / 0.75) * (sigma_down * x + (1 - sigma_down) * f(x, 1.0)) + renoise * noise
    close(out, f(x1, 0.5))
    # the RF step lands on the flow marginal: the total noise variance is σ_next² (x0 weight (1−σ_next))
    assert ((0.5 / 0.75) * sigma_down) ** 2 + renoise**2 == pytest.approx(0.25)
    assert not torch.allclose(run("euler_ancestral", [1.0, 0.5, 0.0], seed=8)[0], out)


def test_dpm_2_ancestral_rf() -> None:
    out, calls = run("dpm_2_ancestral", [1.0, 0.5, 0.0], seed=9)
    x = x0()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(10), dtype=x.dtype)
    sigma_down, mid = 0.25, 0.5  # σ_mid = sqrt(σ·σ_down)
    d = x - f(x, 1.0)
    x_2 = x + d * (mid - 1.0)
    x1 = x + (x_2 - f(x_2, mid)) / mid * (sigma_down - 1.0)
    renoise = math.sqrt(0.5**2 - sigma_down**2 * 0.5**2 / 0.75**2)
    x1 = (0.5 / 0.75) * x1 + renoise * noise
    close(out, f(x1, 0.5))
    assert calls == [(1.0, 0), (0.5, 0), (0.5, 1)]


def test_dpmpp_2s_ancestral_rf() -> None:
    out, calls = run("dpmpp_2s_ancestral", [0.8, 0.5, 0.0], seed=4)
    x = x0()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    sigma_down = 0.5 * (1 + (0.5 / 0.8 - 1))
    lam, lam_down = math.log(0.2 / 0.8), math.log((1 - sigma_down) / sigma_down)
    sigma_s = 1 / (math.exp((lam + lam_down) / 2) + 1)
    u = (sigma_s / 0.8) * x + (1 - sigma_s / 0.8) * f(x, 0.8)
    x1 = (sigma_down / 0.8) * x + (1 - sigma_down / 0.8) * f(u, sigma_s)
    renoise = math.sqrt(0.25 - sigma_down**2 * 0.25 / (1 - sigma_down) ** 2)
    x1 = 0.5 / (1 - sigma_down) * x1 + renoise * noise
    close(out, f(x1, 0.5))
    assert calls == [(0.8, 0), (round(sigma_s, 6), 0), (0.5, 1)]
    _, calls = run("dpmpp_2s_ancestral", [1.0, 0.5, 0.0], seed=4)
    assert calls[1] == (0.9999, 0)  # σ = 1 (λ = −∞): ComfyUI uses 0.9999 as the midpoint


def test_dpmpp_sde_flow() -> None:
    out, calls = run("dpmpp_sde", [1.0, 0.5, 0.0], seed=21)
    x = x0()
    s0 = 3 * 0.9999 / (1 + 2 * 0.9999)  # σ_0 = 1 is replaced by percent_to_sigma(1e-4)
    lam_s, lam_t = math.log((1 - s0) / s0), math.log(0.5 / 0.5)
    lam_mid = (lam_s + lam_t) / 2
    s_mid = 1 / (1 + math.exp(lam_mid))
    brownian = BrownianPath(x, seed=21)

    def ancestral(frm: float, to: float) -> tuple[float, float]:
        up = min(to, math.sqrt(to**2 * (frm**2 - to**2) / frm**2))
        return math.sqrt(to**2 - up**2), up

    down, up = ancestral(math.exp(-lam_s), math.exp(-lam_mid))
    h = -math.log(down) - lam_s
    x2 = (1 - s_mid) / (1 - s0) * math.exp(-h) * x - (1 - s_mid) * math.expm1(-h) * f(x, s0)
    x2 = x2 + (1 - s_mid) * up * brownian(s0, s_mid)
    down, up = ancestral(math.exp(-lam_s), math.exp(-lam_t))
    h = -math.log(down) - lam_s
    x1 = 0.5 / (1 - s0) * math.exp(-h) * x - 0.5 * math.expm1(-h) * f(x2, s_mid)  # r = 1/2: D' = D(σ_mid)
    x1 = x1 + 0.5 * up * brownian(s0, 0.5)
    close(out, f(x1, 0.5))
    assert calls == [(round(s0, 6), 0), (round(s_mid, 6), 0), (0.5, 1)]


def test_dpmpp_multistep_sdes_flow() -> None:
    """dpmpp_2m_sde (midpoint, heun) and dpmpp_3m_sde, eta 1, in λ = log((1 − σ)/σ), on 4 steps."""
    sig = [1.0, 0.7, 0.45, 0.2, 0.0]
    s = [3 * 0.9999 / (1 + 2 * 0.9999), *sig[1:]]  # offset first σ
    lam = [math.log((1 - v) / v) for v in s[:-1]]
    for name in ("dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"):
        out, calls = run(name, sig, seed=13)
        brownian = BrownianPath(x0(), seed=13)
        x, ds, hs = x0(), [], []
        for i in range(3):
            ds.append(f(x, s[i]))
            h = lam[i + 1] - lam[i]
            phi_2 = math.expm1(-2 * h) / (2 * h) + 1
            alpha_t = 1 - s[i + 1]
            x = s[i + 1] / s[i] * math.exp(-h) * x - alpha_t * math.expm1(-2 * h) * ds[-1]
            if i >= 1:
                r = hs[-1] / h
                if name == "dpmpp_2m_sde":
                    x = x - 0.5 * alpha_t * math.expm1(-2 * h) / r * (ds[-1] - ds[-2])
                elif name == "dpmpp_2m_sde_heun" or i == 1:
                    x = x + alpha_t * phi_2 / r * (ds[-1] - ds[-2])
                else:  # third order
                    r0, r1 = hs[-1] / h, hs[-2] / h
                    d1_0, d1_1 = (ds[-1] - ds[-2]) / r0, (ds[-2] - ds[-3]) / r1
                    first = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                    second = (d1_0 - d1_1) / (r0 + r1)
                    x = x + alpha_t * phi_2 * first - alpha_t * (phi_2 / (2 * h) - 0.5) * second
            x = x + brownian(s[i], s[i + 1]) * s[i + 1] * math.sqrt(-math.expm1(-2 * h))
            hs.append(h)
        close(out, f(x, s[3]))
        assert [c for c, _ in calls] == [round(v, 6) for v in s[:4]]


def test_uni_pc_bh1_and_bh2() -> None:
    for name in ("uni_pc", "uni_pc_bh2"):
        out, calls = run(name, S3)
        x = x0()
        d0 = f(x, 1.0)
        # step 1 (warm-up, order 1): predictor = flow DDIM step, corrector with ρ = 1/2
        h = math.log(1 / 0.6)
        b_h = -h if name == "uni_pc" else math.expm1(-h)
        base = 0.6 * x - math.expm1(-h) * d0
        m1 = f(base, 0.6)
        x1 = base - b_h * 0.5 * (m1 - d0)
        # step 2 (order 2): predictor ρ_p = 1/2 on D1 = (D0 − m1)/r, corrector ρ_c = R⁻¹ b
        h = math.log(0.6 / 0.25)
        hh, b_h = -h, (-h if name == "uni_pc" else math.expm1(-h))
        r = math.log(0.6 / 1.0) / h
        diff = (d0 - m1) / r
        base = (0.25 / 0.6) * x1 - math.expm1(hh) * m1
        m2 = f(base - b_h * 0.5 * diff, 0.25)
        phi = math.expm1(hh) / hh - 1
        b = torch.tensor([phi / b_h, (phi / hh - 0.5) * 2 / b_h], dtype=torch.float64)
        rho = torch.linalg.solve(torch.tensor([[1.0, 1.0], [r, 1.0]], dtype=torch.float64), b).tolist()
        x2 = base - b_h * (rho[0] * diff + rho[1] * (m2 - m1))
        # last step: 0 → 0.001, first order, no model call
        x3 = (0.001 / 0.25) * x2 - math.expm1(-math.log(0.25 / 0.001)) * m2
        close(out, x3)
        assert calls == [(1.0, 0), (0.6, 1), (0.25, 2)]


def test_lcm() -> None:
    out, _ = run("lcm", [1.0, 0.5, 0.0], seed=2)
    x = x0()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    close(out, f(0.5 * noise + 0.5 * f(x, 1.0), 0.5))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_point_mass_data_is_exact(name: str) -> None:
    """With D ≡ c (all data at c) the flow path is σ·z + (1 − σ)·c: every sampler ends on c (uni_pc at σ=0.001)."""
    c = torch.full((1, 2, 3, 3), 0.7, dtype=torch.float64)
    z = x0()[:1, :2, :3, :3]
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.2, 0.05, 0.0])
    out = sample(name, lambda x, sigma, step: c.expand_as(x), z.clone(), sigmas, seed=0)
    expected = 0.001 * z + 0.999 * c if name.startswith("uni_pc") else c
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_on_step_reports_every_step_and_can_cancel(name: str) -> None:
    sigmas = [1.0, 0.8, 0.5, 0.3, 0.1, 0.0]
    seen: list[StepInfo] = []
    run_out = sample(name, Recorder(), x0(), torch.tensor(sigmas), seed=1, on_step=seen.append)
    assert run_out.shape == x0().shape and torch.isfinite(run_out).all()
    assert [i.step for i in seen] == list(range(5)) and all(i.total == 5 for i in seen)
    reported = [value for i in seen[1:4] for value in (i.sigma, i.sigma_next)]
    assert reported == pytest.approx([v for pair in zip(sigmas[1:4], sigmas[2:5]) for v in pair], abs=1e-7)
    assert all(i.x.shape == i.denoised.shape == x0().shape for i in seen)

    denoise = Recorder()

    def cancel_at_two(info: StepInfo) -> None:
        if info.step == 2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        sample(name, denoise, x0(), torch.tensor(sigmas), seed=1, on_step=cancel_at_two)
    assert max(step for _, step in denoise.calls) == 2  # nothing of step 3 ran


def test_sample_entry_point() -> None:
    with pytest.raises(UserInputError, match="unknown sampler"):
        sample("nope", Recorder(), x0(), torch.tensor([1.0, 0.0]))
    x = x0()
    assert sample("euler", Recorder(), x, torch.tensor([0.5])) is x
    assert sample("euler", Recorder(), x, torch.zeros(0)) is x
    required = {"euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2s_ancestral", "dpmpp_sde", "lms"}
    assert required | {"ipndm", "uni_pc"} <= set(SAMPLERS)
    with pytest.raises(TypeError):
        SAMPLERS["mine"] = SAMPLERS["euler"]  # type: ignore[index]


def test_adams_bashforth_combinations_integrate_polynomials_exactly() -> None:
    """An order-k Adams-Bashforth combination integrates polynomials of degree k−1 exactly: lms (Lagrange
    integrals) on uneven steps for k ≤ 4, ipndm on even steps for k ≤ 4, ipndm_v on uneven steps for k ≤ 2 and
    on even steps for k = 3. ComfyUI's ipndm_v order-4 weights are not AB4's even on even steps (57, −65, 43,
    −11)/24 instead of (55, −59, 37, −9)/24: reproduced as they are."""
    uneven = [1.0, 0.83, 0.6, 0.41, 0.3, 0.12]
    even = [1.0, 0.85, 0.7, 0.55, 0.4, 0.25]
    coeffs = [0.3, -1.2, 2.5, 0.8]
    i = 4

    def check(order: int, s: list[float], variable: bool) -> float:
        used = coeffs[:order]
        d = torch.tensor(sum(c * s[i] ** k for k, c in enumerate(used)), dtype=torch.float64)
        history = [
            torch.tensor(sum(c * s[i - j] ** k for k, c in enumerate(used)), dtype=torch.float64)
            for j in range(order - 1, 0, -1)
        ]
        combo = _ipndm_variable(d, history, s, i) if variable else _ipndm_fixed(d, history)
        exact = sum(c * (s[i + 1] ** (k + 1) - s[i] ** (k + 1)) / (k + 1) for k, c in enumerate(used))
        return (s[i + 1] - s[i]) * combo.item() - exact

    for order in (1, 2, 3, 4):
        assert check(order, even, variable=False) == pytest.approx(0, abs=1e-12)
        used = coeffs[:order]
        lms = sum(
            lagrange_integral(order, uneven, i, j) * sum(c * uneven[i - j] ** k for k, c in enumerate(used))
            for j in range(order)
        )
        exact = sum(c * (uneven[i + 1] ** (k + 1) - uneven[i] ** (k + 1)) / (k + 1) for k, c in enumerate(used))
        assert lms == pytest.approx(exact, abs=1e-12)
    for order in (1, 2):
        assert check(order, uneven, variable=True) == pytest.approx(0, abs=1e-12)
    assert check(3, even, variable=True) == pytest.approx(0, abs=1e-12)
    assert abs(check(4, even, variable=True)) > 1e-4
    one = torch.ones((), dtype=torch.float64)
    weights = [_ipndm_variable(*basis, even, i).item() for basis in _unit_histories(one)]
    assert weights == pytest.approx([57 / 24, -65 / 24, 43 / 24, -11 / 24], abs=1e-12)


def _unit_histories(one: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """(d, history) pairs selecting one weight of the order-4 combination at a time (history oldest first)."""
    zero = torch.zeros_like(one)
    return [
        (one, [zero, zero, zero]),
        (zero, [zero, zero, one]),
        (zero, [zero, one, zero]),
        (zero, [one, zero, zero]),
    ]

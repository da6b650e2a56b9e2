"""Small special functions the schedulers and samplers need, in pure Python (no scipy).

- `beta_ppf`: inverse of the regularized incomplete beta function, for ComfyUI's `beta` scheduler
  (ComfyUI calls `scipy.stats.beta.ppf`).
- `lagrange_integral`: the exact integral of one Lagrange basis polynomial, for the `lms` sampler
  (ComfyUI calls `scipy.integrate.quad` on the same cubic or lower-order polynomial).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b), evaluated with the modified Lentz method (converges for
    x < (a + 1) / (a + b + 2))."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return result


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta function I_x(a, b) = CDF of Beta(a, b) at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile of Beta(a, b): the x with I_x(a, b) = q, found by bisection to full double precision."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# 3-point Gauss-Legendre rule: exact for polynomials up to degree 5 (lms uses degree <= 3).
_GL_NODES = (-math.sqrt(3.0 / 5.0), 0.0, math.sqrt(3.0 / 5.0))
_GL_WEIGHTS = (5.0 / 9.0, 8.0 / 9.0, 5.0 / 9.0)


def lagrange_integral(order: int, t: Sequence[float], i: int, j: int) -> float:
    """∫_{t[i]}^{t[i+1]} Π_{k<order, k≠j} (τ − t[i−k]) / (t[i−j] − t[i−k]) dτ.

    The coefficient of the j-th previous derivative in a linear multistep (Adams-Bashforth) step, as
    k-diffusion's `linear_multistep_coeff` computes it with `scipy.integrate.quad`; the integrand is a
    polynomial of degree order−1 ≤ 3, so Gauss-Legendre with 3 nodes gives it exactly.
    """
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    lo, hi = t[i], t[i + 1]
    half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
    return half * sum(w * basis(mid + half * node) for node, w in zip(_GL_NODES, _GL_WEIGHTS))

"""Normalisation layers and adaLN modulation: RMSNorm, parameter-free LayerNorm, modulate()."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rms_norm(x: Tensor, weight: Tensor, eps: float, *, out: Tensor | None = None) -> Tensor:
    """x / sqrt(mean(x²) + eps) · weight over the last dim: [..., D] -> [..., D] (`out` may be `x` itself).

    On CUDA and other accelerators this is torch's fused `F.rms_norm`. On the CPU, torch 2.x runs
    `F.rms_norm` as a composite of six passes with full-size temporaries (pow, mean, add, rsqrt, mul,
    mul); here one fused reduction (`vector_norm`, accumulated in fp32) gives the per-row scale and two
    multiplies apply it, in place when `out` is given. The two agree to float rounding (≤ 2 ulp of x).
    Under torch.compile the functional form is traced (then copied into `out` when given).
    """
    if x.device.type != "cpu" or torch.compiler.is_compiling():  # fused kernel / inductor fuses it anyway
        result = F.rms_norm(x, (x.shape[-1],), weight.to(x.dtype), eps)
        return result if out is None else out.copy_(result)
    inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    inv = inv.square_().div_(x.shape[-1]).add_(eps).rsqrt_().to(x.dtype)
    scaled = torch.mul(x, inv) if out is None else torch.mul(x, inv, out=out)
    return scaled.mul_(weight.to(x.dtype))


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim with a learnable scale: [..., D] -> [..., D].

    y = x / sqrt(mean(x²) + eps) · weight (matches sd3.5 `mmditx.py RMSNorm` with elementwise_affine=True).
    `forward(x, out=x)` normalises in place (used on the q/k views of a fused qkv projection).
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        return rms_norm(x, self.weight, self.eps, out=out)


def layer_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the last dim without affine parameters: [..., D] -> [..., D]."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def modulate(x: Tensor, shift: Tensor, scale: Tensor, *, inplace: bool = False) -> Tensor:
    """adaLN modulation x·(1 + scale) + shift: x [B, L, D], shift/scale [B, D] -> [B, L, D].

    One fused pass (addcmul); `inplace=True` writes the result into x (which the caller must own).
    """
    return torch.addcmul(shift.unsqueeze(1), x, scale.unsqueeze(1) + 1, out=x if inplace else None)

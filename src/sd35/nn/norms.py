"""Normalisation layers and adaLN modulation: RMSNorm, parameter-free LayerNorm, modulate()."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim with a learnable scale: [..., D] -> [..., D].

    y = x / sqrt(mean(x²) + eps) · weight (matches sd3.5 `mmditx.py RMSNorm` with elementwise_affine=True).
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


def layer_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the last dim without affine parameters: [..., D] -> [..., D]."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation x·(1 + scale) + shift: x [B, L, D], shift/scale [B, D] -> [B, L, D]."""
    return torch.addcmul(shift.unsqueeze(1), x, scale.unsqueeze(1) + 1)

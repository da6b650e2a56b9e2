"""Tensor side of the key maps and of stored dtypes: split/stack q·k·v, swap modulation halves, reshape
1x1 convolutions, and dequantize ComfyUI scaled-fp8 weights (weight = fp8 · scale_weight, comfy/ops.py
`scaled_fp8_ops.convert_weight`)."""

from __future__ import annotations

import torch

from sd35.loading.keymaps import CONV1X1, QKV, SWAP


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """[2n, ...]: (a, b) -> (b, a) along dim 0; its own inverse (diffusers `swap_scale_shift`)."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_official(op: str, parts: list[torch.Tensor]) -> torch.Tensor:
    """Diffusers tensor(s) -> the official tensor."""
    if op == QKV:
        return torch.cat(parts, dim=0)  # q, k, v stacked along the output dim
    (t,) = parts
    if op == SWAP:
        return swap_halves(t)
    if op == CONV1X1:
        return t.reshape(*t.shape, 1, 1)  # Linear [C_out, C_in] -> 1x1 conv [C_out, C_in, 1, 1]
    return t


def to_diffusers(op: str, t: torch.Tensor) -> list[torch.Tensor]:
    """The official tensor -> diffusers tensor(s) (contiguous, ready to save)."""
    if op == QKV:
        return [p.contiguous() for p in t.chunk(3, dim=0)]
    if op == SWAP:
        return [swap_halves(t)]
    if op == CONV1X1:
        return [t.reshape(t.shape[0], t.shape[1]).contiguous()]
    return [t]


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp8 weight [out, ...] times its scale (a scalar, or one value per output row), in fp32, then
    cast to `dtype`. An fp32 `weight` is scaled in place."""
    scale = scale.to(torch.float32)
    if scale.numel() > 1:
        scale = scale.reshape(-1, *([1] * (weight.ndim - 1)))
    weight = weight.to(torch.float32)
    weight.mul_(scale)
    return weight.to(dtype)

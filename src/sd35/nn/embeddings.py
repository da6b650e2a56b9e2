"""Input embeddings: sinusoidal timestep features, MLP embedders, patch embedding, position-table crop."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd35.errors import UserInputError


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of a (fractional) timestep, cos first, in fp32: [B] -> [B, dim].

    freqs_k = exp(−ln(max_period)·k/(dim/2)); features = [cos(t·f), sin(t·f)] (sd3.5 `TimestepEmbedder`).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedder(nn.Module):
    """t -> vector: sinusoidal features (fp32, then cast) -> Linear -> SiLU -> Linear: [B] -> [B, D]."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256, *, device=None, dtype=None) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size, device=device, dtype=dtype),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, device=device, dtype=dtype),
        )

    def forward(self, t: Tensor) -> Tensor:
        features = timestep_embedding(t, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class VectorEmbedder(nn.Module):
    """Vector -> vector MLP: Linear -> SiLU -> Linear; [B, C] -> [B, D] (sd3.5 `VectorEmbedder`)."""

    def __init__(self, in_dim: int, hidden_size: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_size, device=device, dtype=dtype),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, device=device, dtype=dtype),
        )

    def forward(self, y: Tensor) -> Tensor:
        return self.mlp(y)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches -> tokens in row-major (h, w) order: [B, C, H, W] -> [B, h·w, D].

    H and W must be multiples of p (see `pad_to_patch_size`). The tokens come back contiguous: the
    transposed conv output would otherwise make every later LayerNorm copy its input.
    """

    def __init__(self, patch_size: int, in_channels: int, dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size, device=device, dtype=dtype, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


def pad_to_patch_size(x: Tensor, patch_size: int) -> Tensor:
    """Circularly pad H and W on the bottom/right up to multiples of p: [B, C, H, W] -> [B, C, H', W'].

    Matches ComfyUI `comfy/ldm/common_dit.py pad_to_patch_size` (padding_mode "circular").
    """
    pad_h = -x.shape[-2] % patch_size
    pad_w = -x.shape[-1] % patch_size
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="circular")


def crop_pos_embed(table: Tensor, h: int, w: int) -> Tensor:
    """Centre crop of a square position table: [1, S·S, D] -> [1, h·w, D] (sd3.5 `cropped_pos_embed`).

    Raises UserInputError naming the sizes when h or w exceeds the table side S.
    """
    side = math.isqrt(table.shape[1])
    if side * side != table.shape[1]:
        raise ValueError(f"position table has {table.shape[1]} entries, which is not a square")
    if h > side or w > side:
        raise UserInputError(
            f"latent of {h}x{w} patches is larger than this model's position table of {side}x{side} "
            f"patches; use a smaller image"
        )
    top = (side - h) // 2
    left = (side - w) // 2
    grid = table.view(1, side, side, table.shape[-1])
    return grid[:, top : top + h, left : left + w, :].reshape(1, h * w, table.shape[-1])

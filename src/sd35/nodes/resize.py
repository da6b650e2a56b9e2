"""Tensor resizing and tiling as ComfyUI does them (`comfy/utils.py`): common_upscale with its methods
(torch interpolate modes, "bislerp", "lanczos") and centre crop, and tiled_scale (feathered tiles).

Written from the behaviour of ComfyUI's functions; shapes are [B, C, H, W].
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Row-wise slerp of [N, C] vectors by ratios t [N, 1], with norms interpolated linearly; nearly parallel
    rows take `a`, nearly opposite rows a linear blend (ComfyUI bislerp's slerp)."""
    channels = a.shape[-1]
    a_norm = torch.norm(a, dim=-1, keepdim=True)
    b_norm = torch.norm(b, dim=-1, keepdim=True)
    a_unit = a / a_norm
    b_unit = b / b_norm
    a_unit[a_norm.expand(-1, channels) == 0.0] = 0.0
    b_unit[b_norm.expand(-1, channels) == 0.0] = 0.0
    dot = (a_unit * b_unit).sum(1)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    r = t.squeeze(1)
    out = (torch.sin((1.0 - r) * omega) / sin_omega).unsqueeze(1) * a_unit
    out = out + (torch.sin(r * omega) / sin_omega).unsqueeze(1) * b_unit
    out = out * (a_norm * (1.0 - t) + b_norm * t).expand(-1, channels)
    same = dot > 1 - 1e-5
    opposite = dot < 1e-5 - 1
    out[same] = a[same]
    out[opposite] = (a * (1.0 - t) + b * t)[opposite]
    return out


def _bilinear_pairs(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ratio, left index, right index) [new] of bilinear resampling old → new (align_corners=False)."""
    coords = torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1)
    pos = F.interpolate(coords, size=(1, new), mode="bilinear").reshape(-1)
    ratio = pos - pos.floor()
    right = coords.clone() + 1
    right[..., -1] -= 1
    right = F.interpolate(right, size=(1, new), mode="bilinear").reshape(-1)
    return ratio, pos.to(torch.int64), right.to(torch.int64)


def _bislerp_last_axis(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resample the last axis of [B, C, H, W] to `size` with slerp between the two bilinear neighbours."""
    n, c, h, w = x.shape
    ratio, left, right = _bilinear_pairs(w, size)
    a = x[..., left].movedim(1, -1).reshape(-1, c)
    b = x[..., right].movedim(1, -1).reshape(-1, c)
    t = ratio.reshape(1, 1, 1, -1).expand(n, 1, h, -1).movedim(1, -1).reshape(-1, 1)
    return _slerp(a, b, t).reshape(n, h, size, c).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI "bislerp": slerp along width, then along height (channels are the vector)."""
    dtype = samples.dtype
    x = _bislerp_last_axis(samples.float(), width)
    x = _bislerp_last_axis(x.transpose(-1, -2), height).transpose(-1, -2)
    return x.to(dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI "lanczos": each image through PIL as uint8 (truncated), resized, back to [0, 1]."""
    out = []
    for image in samples:
        pixels = np.clip(255.0 * image.movedim(0, -1).cpu().float().numpy(), 0, 255).astype(np.uint8)
        resized = Image.fromarray(pixels).resize((width, height), resample=Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(resized).astype(np.float32) / 255.0).movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


def center_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop [.., H, W] to the aspect ratio width:height around the centre (ComfyUI crop="center")."""
    old_h, old_w = samples.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """[B, C, H, W] → [B, C, height, width] (ComfyUI `common_upscale`)."""
    s = center_crop(samples, width, height) if crop == "center" else samples
    if method == "bislerp":
        return bislerp(s, width, height)
    if method == "lanczos":
        return lanczos(s, width, height)
    return F.interpolate(s, size=(height, width), mode=method)


def _feather(tile: torch.Tensor, feather: int) -> torch.Tensor:
    """Weight mask shaped like `tile` [1, C, H, W] rising linearly over `feather` px at every edge."""
    mask = torch.ones_like(tile)
    for dim in (2, 3):
        if feather >= mask.shape[dim]:
            continue
        for t in range(feather):
            a = (t + 1) / feather
            mask.narrow(dim, t, 1).mul_(a)
            mask.narrow(dim, mask.shape[dim] - 1 - t, 1).mul_(a)
    return mask


@torch.no_grad()
def tiled_scale(
    samples: torch.Tensor,
    function: Callable[[torch.Tensor], torch.Tensor],
    tile_x: int,
    tile_y: int,
    overlap: int,
    upscale: int,
    out_channels: int,
) -> torch.Tensor:
    """Apply `function` (×`upscale` in H and W) on overlapping tiles of each image and blend them with
    feathered masks (ComfyUI `tiled_scale`). samples [B, C, h, w] → [B, out_channels, h·up, w·up] (CPU)."""
    b, _, h, w = samples.shape
    output = torch.empty(b, out_channels, h * upscale, w * upscale)
    tile = (tile_y, tile_x)
    for i in range(b):
        s = samples[i : i + 1]
        if h <= tile_y and w <= tile_x:
            output[i : i + 1] = function(s).float().cpu()
            continue
        out = torch.zeros(1, out_channels, h * upscale, w * upscale)
        weight = torch.zeros_like(out)
        positions = [
            range(0, size - overlap, tile[d] - overlap) if size > tile[d] else [0] for d, size in enumerate((h, w))
        ]
        for y0, x0 in itertools.product(*positions):
            y = max(0, min(h - overlap, y0))
            x = max(0, min(w - overlap, x0))
            part = s[..., y : y + min(tile_y, h - y), x : x + min(tile_x, w - x)]
            decoded = function(part).float().cpu()
            mask = _feather(decoded, round(overlap * upscale))
            rows = slice(y * upscale, y * upscale + decoded.shape[2])
            region = (..., rows, slice(x * upscale, x * upscale + decoded.shape[3]))
            out[region] += decoded * mask
            weight[region] += mask
        output[i : i + 1] = out / weight
    return output

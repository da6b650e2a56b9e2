"""Tiled VAE decode/encode for images too large to run in one pass, with linearly feathered overlaps.

Tiles are laid out per axis with `tile_starts`: every tile is full-size when the axis is at least one tile
long, neighbours overlap by at least `overlap`, and the spare length is spread evenly over the gaps. Each
tile's output is weighted by a ramp that rises linearly across the exact overlap it shares with the
neighbour on that side (and is flat on image borders), so two overlapping weights sum to one and a seam
becomes a crossfade. The result is not bit-identical to an untiled pass: GroupNorm statistics and the
mid-block attention (sd3.5 `AttnBlock`) see one tile instead of the whole image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from ..errors import UserInputError
from .autoencoder import AutoencoderKL

logger = logging.getLogger(__name__)

DECODE_TILE = 64  # latent px (512 image px), as ComfyUI's tiled decode default tile_x/tile_y
DECODE_OVERLAP = 16  # latent px (128 image px)
ENCODE_TILE = 512  # image px
ENCODE_OVERLAP = 128  # image px

# Auto rule: tile when batch·H·W (image pixels) exceeds this. The SD3 decoder's peak is its full-resolution
# stage (the 256-channel upsample conv and the 128/256-channel blocks after it): about 640 live values per
# image pixel, i.e. ~1.3 kB/px in fp16 (ComfyUI budgets 2178·dtype_size B/px, `sd.py VAE.memory_used_decode`).
# 2048² px (4.2 MP) is therefore ~5–18 GB in fp16, well above SD3.5 Medium's native sizes (≤ 1440², 2 MP), so
# ordinary generations never tile; callers with a memory figure can pass their own `max_pixels`.
DEFAULT_MAX_PIXELS = 2048 * 2048


def needs_tiling(height: int, width: int, *, batch: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """True when an image batch of `batch`×`height`×`width` pixels (image px, not latent) should be tiled."""
    return batch * height * width > max_pixels


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of `tile`-long windows covering [0, length) with pairwise overlap ≥ `overlap`.

    One window [0, length) when length ≤ tile; otherwise the last window ends exactly at `length`.
    """
    if length <= tile:
        return [0]
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp(starts: list[int], index: int, tile: int, length: int, scale: int) -> torch.Tensor:
    """1-D blend weight [min(tile, length)·scale] of window `index`: linear over each shared overlap."""
    size = min(tile, length) * scale
    weight = torch.ones(size, dtype=torch.float32)
    pos = torch.arange(size, dtype=torch.float32) + 0.5
    if index > 0:  # rises over the overlap with the previous window
        shared = (starts[index - 1] + tile - starts[index]) * scale
        weight = torch.minimum(weight, pos / shared)
    if index < len(starts) - 1:  # falls over the overlap with the next window
        shared = (starts[index] + tile - starts[index + 1]) * scale
        weight = torch.minimum(weight, (size - pos) / shared)
    return weight


def _check(tile: int, overlap: int, what: str) -> None:
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise UserInputError(f"{what}: need tile_size > overlap >= 0, got tile_size={tile}, overlap={overlap}")


def _run_tiles(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    grid: tuple[int, int],
    tile: int,
    overlap: int,
    factors: tuple[int, int],
) -> torch.Tensor:
    """Blend `fn` over tiles of `x` [B,C,H,W]; `grid` is (rows, cols) in tile units (latent px).

    `factors` = (input px, output px) per grid unit: (1, 8) to decode, (8, 1) to encode. The last tile on an
    axis also takes any input remainder beyond grid·factor (images whose side is not a multiple of 8).
    """
    f_in, f_out = factors
    rows, cols = (tile_starts(n, tile, overlap) for n in grid)
    out: torch.Tensor | None = None
    total = torch.zeros(grid[0] * f_out, grid[1] * f_out, dtype=torch.float32, device=x.device)
    for i, r in enumerate(rows):
        r_end = min(r + tile, grid[0])
        r_in_end = x.shape[2] if r_end == grid[0] else r_end * f_in
        w_row = _ramp(rows, i, tile, grid[0], f_out).to(x.device)
        for j, c in enumerate(cols):
            c_end = min(c + tile, grid[1])
            c_in_end = x.shape[3] if c_end == grid[1] else c_end * f_in
            y = fn(x[:, :, r * f_in : r_in_end, c * f_in : c_in_end])
            if out is None:
                out = torch.zeros(*y.shape[:2], *total.shape, dtype=torch.float32, device=x.device)
            weight = w_row[:, None] * _ramp(cols, j, tile, grid[1], f_out).to(x.device)[None, :]
            region = (slice(r * f_out, r_end * f_out), slice(c * f_out, c_end * f_out))
            out[:, :, region[0], region[1]] += y.float() * weight
            total[region] += weight
    assert out is not None
    logger.debug("tiled %d×%d windows over grid %s", len(rows), len(cols), grid)
    return out / total


@torch.no_grad()
def tiled_decode(
    vae: AutoencoderKL, z: torch.Tensor, *, tile_size: int = DECODE_TILE, overlap: int = DECODE_OVERLAP
) -> torch.Tensor:
    """z [B,16,h,w] (VAE space) -> images [B,3,8h,8w], decoding `tile_size`² latent tiles with `overlap`.

    Same contract as `AutoencoderKL.decode` (module dtype out); tile_size and overlap are in latent px.
    """
    _check(tile_size, overlap, "tiled_decode")
    factor = vae.downsample_factor
    weight = vae.decoder.conv_in.weight
    out = _run_tiles(vae.decode, z.to(weight.device), z.shape[-2:], tile_size, overlap, (1, factor))
    return out.to(weight.dtype)


@torch.no_grad()
def tiled_encode(
    vae: AutoencoderKL, images: torch.Tensor, *, tile_size: int = ENCODE_TILE, overlap: int = ENCODE_OVERLAP
) -> torch.Tensor:
    """images [B,3,H,W] in [-1,1] -> mean [B,16,H//8,W//8], encoding `tile_size`² image tiles.

    Same contract as `AutoencoderKL.encode`; tile_size and overlap are in image px and must be multiples
    of 8 so that tile borders fall on latent pixels.
    """
    factor = vae.downsample_factor
    if tile_size % factor or overlap % factor:
        raise UserInputError(f"tiled_encode: tile_size and overlap must be multiples of {factor}")
    _check(tile_size, overlap, "tiled_encode")
    grid = (images.shape[-2] // factor, images.shape[-1] // factor)
    if min(grid) < 1:
        raise UserInputError(f"tiled_encode: image {tuple(images.shape[-2:])} is smaller than {factor} px")
    weight = vae.encoder.conv_in.weight
    tile, lap = tile_size // factor, overlap // factor
    out = _run_tiles(vae.encode, images.to(weight.device), grid, tile, lap, (factor, 1))
    return out.to(weight.dtype)


def decode_auto(vae: AutoencoderKL, z: torch.Tensor, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """`vae.decode(z)`, or `tiled_decode` with default tiles when `needs_tiling` says the image is too big."""
    factor = vae.downsample_factor
    b, _, h, w = z.shape
    if needs_tiling(h * factor, w * factor, batch=b, max_pixels=max_pixels):
        return tiled_decode(vae, z)
    return vae.decode(z)


def encode_auto(vae: AutoencoderKL, images: torch.Tensor, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """`vae.encode(images)`, or `tiled_encode` with default tiles when `needs_tiling` says so."""
    b, _, h, w = images.shape
    if needs_tiling(h, w, batch=b, max_pixels=max_pixels):
        return tiled_encode(vae, images)
    return vae.encode(images)

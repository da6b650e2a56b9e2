"""Latent nodes: EmptySD3LatentImage, EmptyLatentImage, LatentUpscale, LatentUpscaleBy, VAEDecode,
VAEDecodeTiled, VAEEncode (ComfyUI `nodes.py`, `comfy_extras/nodes_sd3.py`, `comfy/sd.py` VAE)."""

from __future__ import annotations

import functools
from typing import Any

import torch

from sd35.nodes.resize import common_upscale, tiled_scale
from sd35.nodes.services import Services
from sd35.nodes.values import SD3_LATENT_CHANNELS, Latent, require, sd3_latent
from sd35.pipeline.components import VAE
from sd35.pipeline.generate import decode_latents, encode_images
from sd35.runtime.devices import on_device
from sd35.workflow import InputSpec, NodeSpec, OutputSpec

MAX_RESOLUTION = 16384
LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
CROP_METHODS = ("disabled", "center")
VAE_SOURCE = "VAE model"


def empty_sd3_latent(width: int, height: int, batch_size: int, **_: Any) -> tuple[Latent]:
    """zeros [B, 16, H/8, W/8] on the CPU (ComfyUI EmptySD3LatentImage)."""
    return (Latent(torch.zeros(batch_size, SD3_LATENT_CHANNELS, height // 8, width // 8)),)


def empty_latent(width: int, height: int, batch_size: int, **_: Any) -> tuple[Latent]:
    """zeros [B, 4, H/8, W/8] (ComfyUI EmptyLatentImage; samplers widen it to 16 channels)."""
    return (Latent(torch.zeros(batch_size, 4, height // 8, width // 8)),)


def latent_upscale(samples: Latent, upscale_method: str, width: int, height: int, crop: str, **_: Any) -> tuple:
    """Resize to width×height px (÷8 in latent px); a 0 side keeps the aspect ratio; sides are at least 64."""
    if width == 0 and height == 0:
        return (samples,)
    x = samples.samples
    if width == 0:
        height = max(64, height)
        width = max(64, round(x.shape[-1] * height / x.shape[-2]))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(x.shape[-2] * width / x.shape[-1]))
    else:
        width, height = max(64, width), max(64, height)
    return (Latent(common_upscale(x, width // 8, height // 8, upscale_method, crop)),)


def latent_upscale_by(samples: Latent, upscale_method: str, scale_by: float, **_: Any) -> tuple:
    x = samples.samples
    width, height = round(x.shape[-1] * scale_by), round(x.shape[-2] * scale_by)
    return (Latent(common_upscale(x, width, height, upscale_method, "disabled")),)


def vae_decode(services: Services, samples: Latent, vae: VAE | None, **_: Any) -> tuple[torch.Tensor]:
    """IMAGE [B, H, W, 3] in [0, 1] = clamp((decode(z) + 1) / 2)."""
    require(vae, "vae", VAE_SOURCE)
    return (decode_latents(vae, sd3_latent(samples, "VAEDecode"), services.policy),)


def vae_decode_tiled(
    services: Services, samples: Latent, vae: VAE | None, tile_size: int, overlap: int, **_: Any
) -> tuple[torch.Tensor]:
    """ComfyUI VAE.decode_tiled: three tiled passes (tile/2×2·tile, 2·tile×tile/2, tile×tile, latent px)
    with feathered overlaps, averaged. temporal_* inputs only matter for video VAEs."""
    require(vae, "vae", VAE_SOURCE)
    z = sd3_latent(samples, "VAEDecodeTiled")
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    auto = vae.autoencoder
    factor = 8
    tile, lap = tile_size // factor, overlap // factor
    policy = services.policy

    def decode(part: torch.Tensor) -> torch.Tensor:
        return auto.decode(part.to(policy.device, policy.vae_dtype)).float()

    with on_device(auto, policy), torch.no_grad():
        passes = [
            tiled_scale(z, decode, tx, ty, lap, factor, 3)
            for tx, ty in ((tile // 2, tile * 2), (tile * 2, tile // 2), (tile, tile))
        ]
    images = ((passes[0] + passes[1] + passes[2]) / 3.0 + 1.0) / 2.0
    return (images.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous(),)


def vae_encode(services: Services, pixels: torch.Tensor, vae: VAE | None, **_: Any) -> tuple[Latent]:
    """Latent = posterior mean of the first 3 channels, H and W centre-cropped to multiples of 8."""
    require(vae, "vae", VAE_SOURCE)
    return (Latent(encode_images(vae, pixels, services.policy)),)


def _size(name: str, default: int, minimum: int, step: int, tooltip: str | None = None) -> InputSpec:
    return InputSpec(name, "INT", default=default, min=minimum, max=MAX_RESOLUTION, step=step, tooltip=tooltip)


def latent_specs(services: Services) -> list[NodeSpec]:
    latent = OutputSpec("LATENT")
    batch = InputSpec("batch_size", "INT", default=1, min=1, max=4096)
    method = InputSpec("upscale_method", "COMBO", choices=LATENT_UPSCALE_METHODS)
    return [
        NodeSpec(
            "EmptySD3LatentImage",
            inputs=(_size("width", 1024, 16, 16), _size("height", 1024, 16, 16), batch),
            outputs=(latent,),
            function=empty_sd3_latent,
            category="latent/sd3",
            python_module="comfy_extras.nodes_sd3",
        ),
        NodeSpec(
            "EmptyLatentImage",
            inputs=(
                _size("width", 512, 16, 8, "The width of the latent images in pixels."),
                _size("height", 512, 16, 8, "The height of the latent images in pixels."),
                InputSpec(
                    "batch_size", "INT", default=1, min=1, max=4096, tooltip="The number of latent images in the batch."
                ),
            ),
            outputs=(OutputSpec("LATENT", tooltip="The empty latent image batch."),),
            function=empty_latent,
            category="latent",
            display_name="Empty Latent Image",
            description="Create a new batch of empty latent images to be denoised via sampling.",
        ),
        NodeSpec(
            "LatentUpscale",
            inputs=(
                InputSpec("samples", "LATENT"),
                method,
                _size("width", 512, 0, 8),
                _size("height", 512, 0, 8),
                InputSpec("crop", "COMBO", choices=CROP_METHODS),
            ),
            outputs=(latent,),
            function=latent_upscale,
            category="latent",
            display_name="Upscale Latent",
        ),
        NodeSpec(
            "LatentUpscaleBy",
            inputs=(
                InputSpec("samples", "LATENT"),
                method,
                InputSpec("scale_by", "FLOAT", default=1.5, min=0.01, max=8.0, step=0.01),
            ),
            outputs=(latent,),
            function=latent_upscale_by,
            category="latent",
            display_name="Upscale Latent By",
        ),
        *_vae_specs(services),
    ]


def _vae_specs(services: Services) -> list[NodeSpec]:
    image = OutputSpec("IMAGE")
    return [
        NodeSpec(
            "VAEDecode",
            inputs=(
                InputSpec("samples", "LATENT", tooltip="The latent to be decoded."),
                InputSpec("vae", "VAE", tooltip="The VAE model used for decoding the latent."),
            ),
            outputs=(OutputSpec("IMAGE", tooltip="The decoded image."),),
            function=functools.partial(vae_decode, services),
            category="latent",
            display_name="VAE Decode",
            description="Decodes latent images back into pixel space images.",
        ),
        NodeSpec(
            "VAEDecodeTiled",
            inputs=(
                InputSpec("samples", "LATENT"),
                InputSpec("vae", "VAE"),
                InputSpec("tile_size", "INT", default=512, min=64, max=4096, step=32),
                InputSpec("overlap", "INT", default=64, min=0, max=4096, step=32),
                InputSpec(
                    "temporal_size",
                    "INT",
                    default=64,
                    min=8,
                    max=4096,
                    step=4,
                    tooltip="Only used for video VAEs: Amount of frames to decode at a time.",
                ),
                InputSpec(
                    "temporal_overlap",
                    "INT",
                    default=8,
                    min=4,
                    max=4096,
                    step=4,
                    tooltip="Only used for video VAEs: Amount of frames to overlap.",
                ),
            ),
            outputs=(image,),
            function=functools.partial(vae_decode_tiled, services),
            category="_for_testing",
            display_name="VAE Decode (Tiled)",
        ),
        NodeSpec(
            "VAEEncode",
            inputs=(InputSpec("pixels", "IMAGE"), InputSpec("vae", "VAE")),
            outputs=(OutputSpec("LATENT"),),
            function=functools.partial(vae_encode, services),
            category="latent",
            display_name="VAE Encode",
        ),
    ]

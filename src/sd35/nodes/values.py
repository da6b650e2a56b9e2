"""The values that travel along node sockets, as immutable objects (ComfyUI's MODEL/CLIP/VAE/LATENT/IMAGE).

- MODEL: `pipeline.components.DiffusionModel` (ModelSamplingSD3 / SkipLayerGuidanceSD3 return new ones).
- CLIP: `Clip` (the text encoders with their tokenizers, and the device policy they run under).
- VAE: `pipeline.components.VAE`.
- CONDITIONING: `pipeline.conditioning.CondList`, a tuple of CondEntry (tensors + timestep range).
- LATENT: `Latent` (samples [B, C, h, w] in VAE space, as ComfyUI's {"samples": ...}).
- IMAGE: a float32 tensor [B, H, W, 3] in [0, 1]; MASK: a float32 tensor [B, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sd35.errors import UserInputError
from sd35.pipeline.components import TextStack
from sd35.runtime.devices import DevicePolicy

SD3_LATENT_CHANNELS = 16


@dataclass(frozen=True)
class Clip:
    """ComfyUI's CLIP for SD3: whichever of CLIP-L, CLIP-G and T5 are loaded, plus the policy they run under
    (CLIPLoader's device "cpu" keeps them on the CPU)."""

    stack: TextStack
    policy: DevicePolicy


@dataclass(frozen=True)
class Latent:
    """ComfyUI's LATENT: samples [B, C, h, w] (C = 16 for SD3; EmptyLatentImage gives 4 zero channels,
    which the samplers widen to 16 as ComfyUI's fix_empty_latent_channels does)."""

    samples: torch.Tensor


def require(value: object, what: str, source: str) -> None:
    """ComfyUI's message for a None model input (a checkpoint without that part)."""
    if value is None:
        raise UserInputError(
            f"ERROR: {what} input is invalid: None\n\nIf the {what} is from a checkpoint loader node your "
            f"checkpoint does not contain a valid {source}."
        )


def sd3_latent(latent: Latent, what: str) -> torch.Tensor:
    """The samples of a latent that must already be SD3's 16 channels (for the VAE)."""
    samples = latent.samples
    if samples.ndim != 4 or samples.shape[1] != SD3_LATENT_CHANNELS:
        raise UserInputError(
            f"{what}: latent has shape {tuple(samples.shape)}, but the SD3 VAE needs [B, 16, h, w] "
            "(use EmptySD3LatentImage, or sample an EmptyLatentImage first)"
        )
    return samples

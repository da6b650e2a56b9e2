"""Frozen handles for the loaded networks, passed between stages (and across workflow node sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sd35.models.autoencoder import AutoencoderKL
from sd35.models.latent_format import SD3_LATENT_FORMAT, LatentFormat
from sd35.models.mmditx import MMDiTX
from sd35.runtime.devices import DevicePolicy
from sd35.sampling.guidance import SkipLayerGuidance
from sd35.sampling.schedule import ModelSampling
from sd35.text.encode import ConditioningCache, TextEncoders
from sd35.text.tokenizers import SD3Tokenizers


@dataclass(frozen=True)
class DiffusionModel:
    """The MMDiT with its sampling settings (ComfyUI's MODEL: ModelSamplingSD3 and SLG patch it)."""

    network: MMDiTX
    model_sampling: ModelSampling = field(default_factory=ModelSampling)
    slg: SkipLayerGuidance | None = None  # set by the SkipLayerGuidanceSD3 node (sigma window)
    latent_format: LatentFormat = SD3_LATENT_FORMAT  # ComfyUI's MODEL knows its latent format too
    name: str = ""


@dataclass(frozen=True)
class VAE:
    autoencoder: AutoencoderKL
    latent_format: LatentFormat = SD3_LATENT_FORMAT


@dataclass(frozen=True)
class TextStack:
    """Text encoders (any may be absent), their tokenizers, and a per-process conditioning cache."""

    encoders: TextEncoders
    tokenizers: SD3Tokenizers
    cache: ConditioningCache = field(default_factory=ConditioningCache, compare=False)


@dataclass(frozen=True)
class Components:
    diffusion: DiffusionModel
    text: TextStack
    vae: VAE
    policy: DevicePolicy = field(default_factory=DevicePolicy)

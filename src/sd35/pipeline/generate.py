"""The library call behind `sd35 generate`, the workflow nodes and the server.

Stages (each usable alone, as ComfyUI's nodes use them): encode_prompt → sample_latents → decode_latents,
plus encode_images for img2img. Latents crossing these functions are in VAE space, like ComfyUI's LATENT;
the model-space conversion (SD3 latent format) happens inside sample_latents, as in ComfyUI's KSampler.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from sd35.errors import UserInputError
from sd35.models.vae_tiling import needs_tiling, tiled_decode, tiled_encode
from sd35.pipeline.components import VAE, Components, DiffusionModel, TextStack
from sd35.pipeline.conditioning import CondList, negative_for_request, single
from sd35.pipeline.denoiser import Guidance, make_denoise_fn
from sd35.pipeline.fastpath import FastPath
from sd35.pipeline.request import GenerationRequest
from sd35.runtime.devices import DevicePolicy, on_device, stream_blocks
from sd35.sampling.flow import inverse_noise_scaling
from sd35.sampling.guidance import SkipLayerGuidance
from sd35.sampling.noise import seeded_noise
from sd35.sampling.samplers import StepInfo, sample
from sd35.sampling.schedule import ModelSampling, ksampler_sigmas, sigmas_for_denoise, slice_sigmas
from sd35.types import Conditioning

log = logging.getLogger(__name__)

StepCallback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class SamplingSettings:
    """KSampler / KSamplerAdvanced inputs (ComfyUI `nodes.py` common_ksampler)."""

    seed: int = 0
    steps: int = 40
    cfg: float = 5.5
    sampler: str = "dpmpp_2m"
    scheduler: str = "sgm_uniform"
    denoise: float = 1.0
    add_noise: bool = True
    start_step: int | None = None  # KSamplerAdvanced start_at_step
    end_step: int | None = None  # KSamplerAdvanced end_at_step
    leftover_noise: bool = False  # KSamplerAdvanced return_with_leftover_noise


@dataclass(frozen=True)
class GenerationResult:
    images: torch.Tensor  # [B, H, W, 3] float32 in [0, 1], on the CPU
    latents: torch.Tensor  # [B, 16, H/8, W/8] in VAE space, on the CPU
    warnings: tuple[str, ...] = ()


def max_image_side(diffusion: DiffusionModel) -> int:
    """Largest width/height (px) the model's position table covers: table side × patch × 8."""
    config = diffusion.network.config
    return config.pos_embed_max_size * config.patch_size * 8


def encode_prompt(text: TextStack, prompt: str, policy: DevicePolicy) -> tuple[Conditioning, tuple[str, ...]]:
    """Prompt → Conditioning (context [1, L, C], pooled [1, P]) and the tokenizer's warnings (>256 T5)."""
    encoders = text.encoders
    with contextlib.ExitStack() as stack:
        for module in (encoders.clip_l, encoders.clip_g):
            if module is not None:
                stack.enter_context(on_device(module, policy))
        if encoders.t5 is not None:
            stack.enter_context(on_device(encoders.t5, policy.for_t5()))
        result = text.cache.encode(encoders, text.tokenizers, prompt)
    for warning in result.warnings:
        log.warning("%s", warning)
    return result.conditioning, tuple(result.warnings)


def _schedule(diffusion: DiffusionModel, settings: SamplingSettings) -> torch.Tensor:
    """ComfyUI KSampler's sigmas (denoise, and the samplers that drop the penultimate σ), then
    KSamplerAdvanced's start/end slicing."""
    ms = diffusion.model_sampling
    if settings.start_step is None and settings.end_step is None:
        return sigmas_for_denoise(settings.scheduler, settings.steps, settings.denoise, ms, sampler=settings.sampler)
    sigmas = ksampler_sigmas(settings.scheduler, settings.steps, ms, sampler=settings.sampler)
    return slice_sigmas(sigmas, settings.start_step, settings.end_step, force_full_denoise=not settings.leftover_noise)


def _usable_slg(diffusion: DiffusionModel) -> SkipLayerGuidance | None:
    """SLG with the layers this model has (ComfyUI ignores missing blocks too, silently; we say so)."""
    slg = diffusion.slg
    if slg is None:
        return None
    depth = diffusion.network.config.depth
    layers = tuple(layer for layer in slg.layers if layer < depth)
    if layers != tuple(slg.layers):
        log.warning(
            "Skip Layer Guidance: the model has %d joint blocks; ignoring layers %s",
            depth,
            [layer for layer in slg.layers if layer >= depth],
        )
    return replace(slg, layers=layers) if layers else None


def sample_latents(
    diffusion: DiffusionModel,
    positive: CondList,
    negative: CondList,
    latent: torch.Tensor,
    settings: SamplingSettings,
    policy: DevicePolicy,
    on_step: StepCallback | None = None,
    fast: FastPath | None = None,
) -> torch.Tensor:
    """ComfyUI KSampler: VAE-space latent [B,16,h,w] in → VAE-space latent out (CPU, fp32).

    Noise is `torch.randn` on a CPU generator seeded with the seed (ComfyUI `prepare_noise`); an all-zero
    latent is not passed through the latent format (ComfyUI `CFGGuider.inner_sample`); the start is
    σ0·noise + (1 − σ0)·latent (CONST noise scaling).
    """
    sigmas = _schedule(diffusion, settings)
    latent = latent.to(torch.float32).cpu()
    noise = seeded_noise(tuple(latent.shape), settings.seed) if settings.add_noise else torch.zeros_like(latent)
    if len(sigmas) < 2:  # nothing to do (denoise 0 or an empty step range)
        return latent
    fmt = diffusion.latent_format
    empty = not bool(torch.count_nonzero(latent))
    model_latent = latent if empty else fmt.to_model(latent)
    network = diffusion.network
    device = policy.device
    x = sigmas[0] * noise + (1.0 - sigmas[0]) * model_latent
    # the reference's step-window SLG counts against the full step count, also for img2img
    guidance = Guidance(cfg=settings.cfg, slg=_usable_slg(diffusion), num_steps=settings.steps)
    fast = fast or FastPath()
    step_cache = fast.new_step_cache()
    denoise = make_denoise_fn(
        network, positive, negative, guidance, diffusion.model_sampling, batch_slg=fast.batch_slg, step_cache=step_cache
    )
    placement = (
        stream_blocks(network, list(network.joint_blocks), policy) if policy.lowvram else on_device(network, policy)
    )
    with placement:
        x = sample(
            settings.sampler,
            denoise,
            x.to(device),
            sigmas,  # stays on the host: samplers read it as floats
            seed=settings.seed,
            on_step=on_step,
            model_sampling=diffusion.model_sampling,
        )
    if step_cache is not None:
        log.info("%s", step_cache.summary())
    x = inverse_noise_scaling(x.float().cpu(), float(sigmas[-1]))  # identity when the schedule ends at 0
    return fmt.to_vae(x)


def decode_latents(
    vae: VAE, latents: torch.Tensor, policy: DevicePolicy, tiled: bool | None = None, channels_last: bool | None = None
) -> torch.Tensor:
    """VAE-space latents [B,16,h,w] → images [B, 8h, 8w, 3] float32 in [0, 1] on the CPU (ComfyUI VAEDecode).

    `tiled` None: tiles only when the image is too large for one pass (vae_tiling.needs_tiling).
    `channels_last` None: on for CPUs, where oneDNN's NHWC convolutions decode ~8 % faster (BENCHMARKS.md);
    the activations follow the input's layout, the weights stay as they are. Same maths; the convolution
    algorithms round differently (≤ 3e-5 on outputs in [-1, 1], well below one 8-bit level).
    """
    auto = vae.autoencoder
    if channels_last is None:
        channels_last = policy.device.type == "cpu"
    with on_device(auto, policy), torch.no_grad():
        z = latents.to(policy.device, policy.vae_dtype)
        if channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        use_tiles = needs_tiling(z.shape[-2] * 8, z.shape[-1] * 8) if tiled is None else tiled
        images = tiled_decode(auto, z) if use_tiles else auto.decode(z)
    images = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return images.permute(0, 2, 3, 1).cpu()


def encode_images(vae: VAE, images: torch.Tensor, policy: DevicePolicy, tiled: bool | None = None) -> torch.Tensor:
    """Images [B, H, W, C≥3] in [0, 1] → VAE-space latents (posterior mean), as ComfyUI VAEEncode.

    H and W are centre-cropped down to multiples of 8 (ComfyUI `vae_encode_crop_pixels`).
    """
    h, w = images.shape[1] // 8 * 8, images.shape[2] // 8 * 8
    if h == 0 or w == 0:
        raise UserInputError(f"image {images.shape[2]}x{images.shape[1]} is too small to encode (min 8x8)")
    top, left = (images.shape[1] - h) // 2, (images.shape[2] - w) // 2
    pixels = images[:, top : top + h, left : left + w, :3].permute(0, 3, 1, 2)
    auto = vae.autoencoder
    with on_device(auto, policy), torch.no_grad():
        x = (pixels.to(policy.device, policy.vae_dtype) * 2.0 - 1.0).contiguous()
        use_tiles = needs_tiling(h, w) if tiled is None else tiled
        z = tiled_encode(auto, x) if use_tiles else auto.encode(x)
    return z.float().cpu()


@dataclass(frozen=True)
class EncodedRequest:
    """A request's conditioning lists (the negative with the official workflow's zeroed tail)."""

    positive: CondList
    negative: CondList
    warnings: tuple[str, ...] = ()


def encode_request(text: TextStack, request: GenerationRequest, policy: DevicePolicy) -> EncodedRequest:
    """The text stage of `generate`: prompt and negative → conditioning lists."""
    cond, warnings = encode_prompt(text, request.prompt, policy)
    uncond, _ = encode_prompt(text, request.negative_prompt, policy)
    return EncodedRequest(single(cond), negative_for_request(uncond, request.negative_zero_after), warnings)


def render(
    diffusion: DiffusionModel,
    vae: VAE,
    request: GenerationRequest,
    encoded: EncodedRequest,
    policy: DevicePolicy,
    on_step: StepCallback | None = None,
    fast: FastPath | None = None,
) -> GenerationResult:
    """The image stage of `generate`: (init latent →) sample → decode."""
    request.validate(max_image_side(diffusion))
    if request.init_image is not None:
        image = torch.as_tensor(request.init_image, dtype=torch.float32)
        if image.ndim == 3:
            image = image.unsqueeze(0)
        latent = encode_images(vae, image, policy).repeat(request.batch_size, 1, 1, 1)
    else:
        latent = torch.zeros(request.batch_size, 16, request.height // 8, request.width // 8)
    diffusion = replace(diffusion, model_sampling=ModelSampling(shift=request.shift), slg=request.slg)
    settings = SamplingSettings(
        seed=request.seed,
        steps=request.steps,
        cfg=request.cfg,
        sampler=request.sampler,
        scheduler=request.scheduler,
        denoise=request.denoise,
    )
    latents = sample_latents(diffusion, encoded.positive, encoded.negative, latent, settings, policy, on_step, fast)
    images = decode_latents(vae, latents, policy)
    return GenerationResult(images=images, latents=latents, warnings=encoded.warnings)


def generate(
    components: Components,
    request: GenerationRequest,
    on_step: StepCallback | None = None,
    fast: FastPath | None = None,
) -> GenerationResult:
    """txt2img / img2img for one request → images and latents (no files, no PIL)."""
    request.validate(max_image_side(components.diffusion))
    encoded = encode_request(components.text, request, components.policy)
    return render(components.diffusion, components.vae, request, encoded, components.policy, on_step, fast)

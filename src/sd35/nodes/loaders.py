"""Loader nodes: CheckpointLoaderSimple, TripleCLIPLoader, DualCLIPLoader, CLIPLoader, VAELoader, UNETLoader.

Files are found through `Services` (ComfyUI's models/ layout) and loaded once into its ModelStore. What a
file holds is read from its keys (`loading.detect`), so text-encoder files may be given in any order, as
in ComfyUI's `sd3_clip.py` load_sd routing. ComfyUI sources: `nodes.py`, `comfy_extras/nodes_sd3.py`,
`comfy/sd.py` (load_checkpoint_guess_config, load_clip).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from sd35.errors import UserInputError
from sd35.loading.detect import Found, find_component, scan
from sd35.loading.load import load_found
from sd35.loading.tiny import TINY_CONFIGS
from sd35.nodes.services import Services, file_key
from sd35.nodes.values import Clip
from sd35.pipeline.components import VAE, DiffusionModel, TextStack
from sd35.pipeline.files import load_t5, load_with_fp8_linears
from sd35.runtime.devices import DevicePolicy
from sd35.text.encode import SD3_CONTEXT_DIM, TextEncoders
from sd35.text.tokenizers import load_tokenizers
from sd35.workflow import InputSpec, NodeSpec, OutputSpec

log = logging.getLogger(__name__)

TEXT_ROLES = ("clip_l", "clip_g", "t5xxl")
REAL_CLIP_WIDTHS = (768, 1280)  # CLIP-L / CLIP-G hidden sizes: real models use a 4096-wide context
CLIP_TYPES = (
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
    "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image",
)  # fmt: skip
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")
UNET_WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")


def _load(
    services: Services,
    found: Found,
    dtype: torch.dtype,
    *,
    what: str | None = None,
    load: Callable[[], Any] | None = None,
) -> Any:
    """The component of `found` in `dtype`, loaded once per (file, `what`, dtype) into the store.

    `what` (default: the role) names a variant of the component, e.g. "t5xxl-fp8"; `load()` builds it on a
    miss (default: `load_found` in `dtype`).
    """
    path = Path(found.info.path)
    build = load if load is not None else lambda: load_found(found, dtype=dtype)
    return services.store.get(path, what or found.info.component, dtype, build)


def _fingerprint(services: Services, kind: str, *names: str) -> Any:
    """IS_CHANGED for loaders: the files' identity (path, mtime, size), so a replaced file is reloaded."""
    keys = []
    for name in names:
        try:
            keys.append(list(file_key(services.model_path(kind, name))))
        except (UserInputError, OSError):
            keys.append(None)
    return keys


# --- text encoders -------------------------------------------------------------------------------------


def _pooled_width(config: Any) -> int:
    return config.projection_dim if config.project_pooled and config.projection_dim else config.hidden_size


def _widths(clip_l: Any, clip_g: Any, t5: Any) -> tuple[int, int | None]:
    """(context_dim, pooled_dim) for TextEncoders. Real encoders: T5's width or 4096, pooled L‖G (2048).
    Without T5 and with tiny test encoders, the widths of the tiny family (`loading.tiny`) are assumed."""
    if t5 is not None:
        context = t5.config.d_model
    elif any(m is not None and m.config.hidden_size in REAL_CLIP_WIDTHS for m in (clip_l, clip_g)):
        context = SD3_CONTEXT_DIM
    else:
        context = TINY_CONFIGS["t5xxl"].d_model
    if (clip_l is not None and clip_g is not None) or context == SD3_CONTEXT_DIM:
        return context, None
    return context, _pooled_width(TINY_CONFIGS["clip_l"]) + _pooled_width(TINY_CONFIGS["clip_g"])


def _assign_roles(files: Sequence[Path]) -> dict[str, Path]:
    """role -> file for text-encoder files in any order (a CLIP whose role is only guessed takes the free one)."""
    assigned: dict[str, Path] = {}
    guessed: list[tuple[Path, str]] = []
    for path in files:
        found = [f for f in scan(path) if f.info.component in TEXT_ROLES]
        if not found:
            held = ", ".join(f.info.component for f in scan(path)) or "nothing usable"
            raise UserInputError(f"{path.name} holds no CLIP-L, CLIP-G or T5 text encoder (it holds: {held})")
        for f in found:
            role = f.info.component
            if role in ("clip_l", "clip_g") and not f.role_certain:
                guessed.append((path, role))
            elif role in assigned:
                raise UserInputError(f"both {assigned[role].name} and {path.name} hold {role}")
            else:
                assigned[role] = path
    for path, role in guessed:
        if role in assigned:
            role = "clip_g" if role == "clip_l" else "clip_l"
        if role in assigned:
            raise UserInputError(f"{path.name} is a CLIP text encoder, but CLIP-L and CLIP-G are both given already")
        assigned[role] = path
    return assigned


def text_stack(services: Services, files: dict[str, Path]) -> TextStack:
    """Load the text encoders of `files` (role -> file) into a TextStack sharing the services' cache."""
    dtype = services.policy.text_dtype
    modules = {
        role: _load(services, find_component(path, role), dtype) for role, path in files.items() if role != "t5xxl"
    }
    if "t5xxl" in files:  # as `sd35 generate` loads it: fp8 files stay fp8, --t5-fp8 quantizes while loading
        found, policy = find_component(files["t5xxl"], "t5xxl"), services.policy
        what = "t5xxl-fp8" if policy.t5_fp8 else "t5xxl"
        modules["t5xxl"] = _load(services, found, dtype, what=what, load=lambda: load_t5(found.info, policy))
    clip_l, clip_g, t5 = (modules.get(role) for role in TEXT_ROLES)
    context_dim, pooled_dim = _widths(clip_l, clip_g, t5)
    encoders = TextEncoders(clip_l=clip_l, clip_g=clip_g, t5=t5, context_dim=context_dim, pooled_dim=pooled_dim)
    return TextStack(encoders=encoders, tokenizers=load_tokenizers(), cache=services.conditioning_cache)


def _clip_from_names(services: Services, names: Sequence[str], device: str = "default") -> Clip:
    roles = _assign_roles([services.model_path("text_encoders", n) for n in names])
    policy = services.policy
    if device == "cpu":
        policy = DevicePolicy(device=torch.device("cpu"), text_dtype=torch.float32)
    return Clip(text_stack(services, roles), policy)


def _check_type(node: str, clip_type: str) -> None:
    if clip_type != "sd3":
        raise UserInputError(f"{node}: type {clip_type!r} is not supported by sd35; use type 'sd3'")


# --- node functions ------------------------------------------------------------------------------------


def checkpoint_loader(services: Services, ckpt_name: str, **_: Any) -> tuple[Any, Any, Any]:
    """MODEL, CLIP (None without text-encoder keys, as ComfyUI) and VAE (None without first_stage_model.*)."""
    path = services.model_path("checkpoints", ckpt_name)
    found = {f.info.component: f for f in scan(path)}
    if "mmditx" not in found:
        held = ", ".join(found) or "nothing usable"
        raise UserInputError(f"{ckpt_name} holds no SD3 diffusion model (it holds: {held})")
    model = DiffusionModel(network=_load(services, found["mmditx"], services.policy.dtype), name=ckpt_name)
    vae = VAE(_load(services, found["vae"], services.policy.vae_dtype)) if "vae" in found else None
    if vae is None:
        log.warning("%s has no VAE weights (first_stage_model.*): its VAE output is None", ckpt_name)
    roles = {role: path for role in TEXT_ROLES if role in found}
    clip = Clip(text_stack(services, roles), services.policy) if roles else None
    if clip is None:  # ComfyUI load_state_dict_guess_config logs the same and returns CLIP None
        log.warning("no CLIP/text encoder weights in checkpoint, the text encoder model will not be loaded.")
    return model, clip, vae


def triple_clip_loader(services: Services, clip_name1: str, clip_name2: str, clip_name3: str, **_: Any) -> tuple:
    return (_clip_from_names(services, [clip_name1, clip_name2, clip_name3]),)


def dual_clip_loader(
    services: Services, clip_name1: str, clip_name2: str, type: str, device: str = "default", **_: Any
) -> tuple:
    _check_type("DualCLIPLoader", type)
    return (_clip_from_names(services, [clip_name1, clip_name2], device),)


def clip_loader(services: Services, clip_name: str, type: str, device: str = "default", **_: Any) -> tuple:
    _check_type("CLIPLoader", type)
    return (_clip_from_names(services, [clip_name], device),)


def vae_loader(services: Services, vae_name: str, **_: Any) -> tuple:
    if vae_name == "pixel_space":
        raise UserInputError("VAELoader: 'pixel_space' is for pixel-space models; SD3 needs its VAE file")
    path = services.model_path("vae", vae_name)
    return (VAE(_load(services, find_component(path, "vae"), services.policy.vae_dtype)),)


def unet_loader(services: Services, unet_name: str, weight_dtype: str, **_: Any) -> tuple:
    """weight_dtype (ComfyUI's): fp8_e4m3fn holds the joint blocks' Linear weights in fp8 and upcasts them per
    call; fp8_e4m3fn_fast also multiplies in fp8 where the GPU can (`Fp8Linear`). sd35 quantizes per tensor
    with an amax scale (ComfyUI casts unscaled). fp8_e5m2 is not supported (weights stay in the compute dtype).
    """
    path = services.model_path("diffusion_models", unet_name)
    found, dtype = find_component(path, "mmditx"), services.policy.dtype
    if weight_dtype in ("fp8_e4m3fn", "fp8_e4m3fn_fast"):
        fast = weight_dtype == "fp8_e4m3fn_fast"
        load = partial(load_with_fp8_linears, found.info, dtype, under="joint_blocks", fp8_compute=fast)
        network = _load(services, found, dtype, what=f"mmditx-{weight_dtype}", load=load)
    else:
        if weight_dtype != "default":
            log.warning("UNETLoader: weight_dtype %s is not supported; weights stay in the compute dtype", weight_dtype)
        network = _load(services, found, dtype)
    return (DiffusionModel(network=network, name=unet_name),)


# --- specs ---------------------------------------------------------------------------------------------


def _combo(name: str, services: Services, kind: str, *, v3: bool = False, tooltip: str | None = None) -> InputSpec:
    return InputSpec(
        name, "COMBO", choices_fn=services.model_choices(kind), combo_style="v3" if v3 else "legacy", tooltip=tooltip
    )


def loader_specs(services: Services) -> list[NodeSpec]:
    return [*_model_specs(services), *_clip_specs(services)]


def _clip_specs(services: Services) -> list[NodeSpec]:
    clip_out = OutputSpec("CLIP")
    device = InputSpec("device", "COMBO", required=False, choices=("default", "cpu"), advanced=True)
    te = "text_encoders"
    return [
        NodeSpec(
            "TripleCLIPLoader",
            inputs=tuple(_combo(f"clip_name{i}", services, te, v3=True) for i in (1, 2, 3)),
            outputs=(clip_out,),
            function=functools.partial(triple_clip_loader, services),
            category="advanced/loaders",
            description="[Recipes]\n\nsd3: clip-l, clip-g, t5",
            python_module="comfy_extras.nodes_sd3",
            fingerprint=lambda **names: _fingerprint(services, te, *names.values()),
        ),
        NodeSpec(
            "CLIPLoader",
            inputs=(_combo("clip_name", services, te), InputSpec("type", "COMBO", choices=CLIP_TYPES), device),
            outputs=(clip_out,),
            function=functools.partial(clip_loader, services),
            category="advanced/loaders",
            display_name="Load CLIP",
            description=CLIP_LOADER_DESCRIPTION,
            fingerprint=lambda clip_name, **_: _fingerprint(services, te, clip_name),
        ),
        NodeSpec(
            "DualCLIPLoader",
            inputs=(
                _combo("clip_name1", services, te),
                _combo("clip_name2", services, te),
                InputSpec("type", "COMBO", choices=DUAL_CLIP_TYPES),
                device,
            ),
            outputs=(clip_out,),
            function=functools.partial(dual_clip_loader, services),
            category="advanced/loaders",
            display_name="DualCLIPLoader",
            description=DUAL_CLIP_LOADER_DESCRIPTION,
            fingerprint=lambda clip_name1, clip_name2, **_: _fingerprint(services, te, clip_name1, clip_name2),
        ),
    ]


def _model_specs(services: Services) -> list[NodeSpec]:
    return [
        NodeSpec(
            "CheckpointLoaderSimple",
            inputs=(_combo("ckpt_name", services, "checkpoints", tooltip=CKPT_TOOLTIP),),
            outputs=(
                OutputSpec("MODEL", tooltip="The model used for denoising latents."),
                OutputSpec("CLIP", tooltip="The CLIP model used for encoding text prompts."),
                OutputSpec("VAE", tooltip=VAE_TOOLTIP),
            ),
            function=functools.partial(checkpoint_loader, services),
            category="loaders",
            display_name="Load Checkpoint",
            description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
            fingerprint=lambda ckpt_name: _fingerprint(services, "checkpoints", ckpt_name),
        ),
        NodeSpec(
            "VAELoader",
            inputs=(InputSpec("vae_name", "COMBO", choices_fn=lambda: [*services.models.list("vae"), "pixel_space"]),),
            outputs=(OutputSpec("VAE"),),
            function=functools.partial(vae_loader, services),
            category="loaders",
            display_name="Load VAE",
            fingerprint=lambda vae_name: _fingerprint(services, "vae", vae_name),
        ),
        NodeSpec(
            "UNETLoader",
            inputs=(
                _combo("unet_name", services, "diffusion_models"),
                InputSpec("weight_dtype", "COMBO", choices=UNET_WEIGHT_DTYPES),
            ),
            outputs=(OutputSpec("MODEL"),),
            function=functools.partial(unet_loader, services),
            category="advanced/loaders",
            display_name="Load Diffusion Model",
            fingerprint=lambda unet_name, **_: _fingerprint(services, "diffusion_models", unet_name),
        ),
    ]


CKPT_TOOLTIP = "The name of the checkpoint (model) to load."
VAE_TOOLTIP = "The VAE model used for encoding and decoding images to and from latent space."
CLIP_LOADER_DESCRIPTION = (
    "[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\n"
    "stable_audio: t5 base\n"
    "mochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n hidream: llama-3.1 (Recommend) or t5\n"
    "omnigen2: qwen vl 2.5 3B"
)
DUAL_CLIP_LOADER_DESCRIPTION = (
    "[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\nflux: clip-l, t5\n"
    "hidream: at least one of t5 or llama, recommended t5 and llama\nhunyuan_image: qwen2.5vl 7b and byt5 small"
)

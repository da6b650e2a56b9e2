"""Finding the model files a user has and turning them into Components.

Usual names (Stability's release and ComfyUI's folders): `sd3.5_medium.safetensors` (MMDiT + VAE),
`clip_l.safetensors`, `clip_g.safetensors`, `t5xxl_fp16.safetensors` / `t5xxl_fp8_e4m3fn*.safetensors`;
a models folder may hold them directly or in ComfyUI's `checkpoints/`, `clip/`, `text_encoders/`, `vae/`
subfolders; a diffusers-format folder (model_index.json) holds everything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sd35.errors import UserInputError
from sd35.loading.detect import ComponentInfo, detect_component, detect_components
from sd35.loading.load import build_model, load_component
from sd35.pipeline.components import VAE, Components, DiffusionModel, TextStack
from sd35.runtime.devices import DevicePolicy
from sd35.runtime.quant import quantize_fp8_
from sd35.text.encode import TextEncoders
from sd35.text.tokenizers import load_tokenizers

log = logging.getLogger(__name__)

MODEL_NAMES = ("sd3.5_medium.safetensors", "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors")
CLIP_L_NAMES = ("clip_l.safetensors",)
CLIP_G_NAMES = ("clip_g.safetensors",)
T5_NAMES = (
    "t5xxl_fp16.safetensors",
    "t5xxl_fp8_e4m3fn.safetensors",
    "t5xxl_fp8_e4m3fn_scaled.safetensors",
    "t5xxl.safetensors",
)
SUBFOLDERS = ("", "checkpoints", "diffusion_models", "unet", "text_encoders", "clip", "vae")
TINY_CACHE_VERSION = "tiny-v1"


@dataclass(frozen=True)
class ModelFiles:
    """Where each component comes from; None = absent (a missing text encoder is allowed)."""

    model: Path
    vae: Path | None = None  # None: the VAE inside `model`
    clip_l: Path | None = None
    clip_g: Path | None = None
    t5xxl: Path | None = None


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for sub in SUBFOLDERS:
        for name in names:
            candidate = root / sub / name
            if candidate.is_file():
                return candidate
    return None


def find_model_files(models_dir: str | Path) -> ModelFiles:
    """Locate the usual files in `models_dir` (flat, ComfyUI layout, or a diffusers folder)."""
    root = Path(models_dir).expanduser()
    if not root.is_dir():
        raise UserInputError(f"models folder not found: {root}")
    if (root / "model_index.json").is_file():
        return ModelFiles(model=root)
    model = _find(root, MODEL_NAMES)
    if model is None:
        raise UserInputError(
            f"no SD3.5 Medium checkpoint in {root} (looked for {', '.join(MODEL_NAMES)} there and in "
            f"{', '.join(s for s in SUBFOLDERS if s)}/); pass --model FILE"
        )
    return ModelFiles(
        model=model,
        clip_l=_find(root, CLIP_L_NAMES),
        clip_g=_find(root, CLIP_G_NAMES),
        t5xxl=_find(root, T5_NAMES),
    )


def tiny_models_dir() -> Path:
    """Where the embedded tiny random-weight model lives: $SD35_CACHE_DIR or ~/.cache/sd35, per version."""
    base = os.environ.get("SD35_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "sd35"
    )
    return Path(base) / TINY_CACHE_VERSION


def ensure_tiny_models() -> ModelFiles:
    """Make the tiny random-weight model on first use (atomically: built aside, then renamed) and find it."""
    from sd35.loading.tiny import make_tiny

    target = tiny_models_dir()
    if not (target / MODEL_NAMES[0]).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.{os.getpid()}"
        make_tiny(staging, diffusers=False)
        try:
            os.replace(staging, target)
        except OSError:  # another process won the race; use its copy
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return find_model_files(target)


@dataclass(frozen=True)
class Preflight:
    """Metadata-only view of the files (no tensor data read): what each holds, before any weight loads."""

    files: ModelFiles
    components: dict[str, ComponentInfo]

    @property
    def max_image_side(self) -> int:
        config = self.components["mmditx"].config
        return config.pos_embed_max_size * config.patch_size * 8


def _detect_one(path: Path, wanted: str) -> ComponentInfo:
    """What `path` holds for the `wanted` slot (a bare CLIP file takes the slot's role); errors name the file."""
    return detect_component(path, wanted)


def preflight(files: ModelFiles, *, use_t5: bool = True) -> Preflight:
    """Check every file holds what its slot needs; text encoders inside the checkpoint fill empty slots."""
    components: dict[str, ComponentInfo] = {}
    in_model = {info.component: info for info in detect_components(files.model)}
    if "mmditx" not in in_model:
        held = ", ".join(sorted(in_model)) or "nothing sd35 recognises"
        raise UserInputError(f"{files.model} holds no diffusion model (it holds {held})")
    components["mmditx"] = in_model["mmditx"]
    if files.vae is not None:
        components["vae"] = _detect_one(files.vae, "vae")
    elif "vae" in in_model:
        components["vae"] = in_model["vae"]
    else:
        raise UserInputError(f"{files.model} holds no VAE; pass --vae FILE")
    for slot in ("clip_l", "clip_g", "t5xxl"):
        if slot == "t5xxl" and not use_t5:
            continue
        path = getattr(files, slot)
        if path is not None:
            components[slot] = _detect_one(path, slot)
        elif slot in in_model:
            components[slot] = in_model[slot]
    if not {"clip_l", "clip_g", "t5xxl"} & components.keys():
        raise UserInputError("no text encoder found: give at least one of --clip-l, --clip-g, --t5xxl")
    return Preflight(files=files, components=components)


def _load(pre: Preflight, slot: str, dtype: torch.dtype) -> nn.Module:
    info = pre.components[slot]
    log.info("loading %s from %s", slot, info.path)
    return load_component(info.path, slot, dtype=dtype)


def load_t5(info: ComponentInfo, policy: DevicePolicy) -> nn.Module:
    """T5-XXL in the text dtype, or with `t5_fp8` its block Linears in fp8 (fp8 GEMMs on GPUs that have
    them, elsewhere upcast per layer call; see `Fp8Linear`).

    For fp8 the block Linear weights are loaded in the file's dtype, which is a memory map of the file (no
    copy), and each is quantized from those mapped pages, one layer at a time: the full-precision T5
    (9.5 GB in bf16) is never resident, only the fp8 weights (4.8 GB); the small remaining tensors
    (embedding, norms, relative position bias) load in the text dtype, in which T5 computes.
    A file stored in plain fp8 e4m3fn (e.g. ComfyUI's t5xxl_fp8_e4m3fn.safetensors) takes this path even without
    `t5_fp8`: its weights stay the file's fp8 values with scale 1 and are upcast per layer call, exactly what
    dequantizing them at load would compute, in half the memory (as ComfyUI runs fp8 files).
    """
    stored_fp8 = info.stored_dtype == "float8_e4m3fn" and info.quantization is None  # not scaled fp8
    if not policy.t5_fp8 and not stored_fp8:
        log.info("loading t5xxl from %s", info.path)
        return load_component(info.path, "t5xxl", dtype=policy.text_dtype)
    how = "kept in fp8 as stored" if stored_fp8 else "quantized to fp8 while loading"
    log.info("loading t5xxl from %s (block weights %s)", info.path, how)
    # fp8 GEMMs only when asked for: a stored fp8 file alone means fp8 storage, computation as before
    return load_with_fp8_linears(info, policy.text_dtype, under="encoder.block", fp8_compute=policy.t5_fp8)


def load_with_fp8_linears(info: ComponentInfo, dtype: torch.dtype, *, under: str, fp8_compute: bool) -> nn.Module:
    """Component `info` in `dtype`, except the `nn.Linear` weights under the submodule `under` (e.g.
    "encoder.block", "joint_blocks"): those are read in the file's dtype (a memory map of the file, no copy)
    and quantized to fp8 one layer at a time (`Fp8Linear`; an unscaled e4m3fn file's weights are kept as
    they are), so the full-precision weights are never all resident. `fp8_compute`: see `Fp8Linear`.
    """
    modules = build_model(info.component, info.config).named_modules()
    linears = {f"{n}.weight" for n, m in modules if type(m) is nn.Linear and n.startswith(under + ".")}
    model = load_component(info.path, info.component, dtype=dtype, keep_stored=linears.__contains__)
    quantize_fp8_(model.get_submodule(under), fp8_compute=fp8_compute)
    return model


def load_text_stack(pre: Preflight, policy: DevicePolicy, *, tokenizer_dir: Path | None = None) -> TextStack:
    """The text encoders present (CPU first; encoding moves them to the device) with their tokenizers."""
    found = pre.components
    config = found["mmditx"].config
    t5 = load_t5(found["t5xxl"], policy) if "t5xxl" in found else None
    encoders = TextEncoders(
        clip_l=_load(pre, "clip_l", policy.text_dtype) if "clip_l" in found else None,
        clip_g=_load(pre, "clip_g", policy.text_dtype) if "clip_g" in found else None,
        t5=t5,
        context_dim=config.context_in_dim,
        pooled_dim=config.adm_in_channels,
    )
    return TextStack(encoders=encoders, tokenizers=load_tokenizers(tokenizer_dir))


def load_image_stack(pre: Preflight, policy: DevicePolicy, *, fp8: bool = False) -> tuple[DiffusionModel, VAE]:
    """The MMDiT and the VAE (CPU first; each stage moves them to the device). `fp8`: the joint blocks'
    Linears quantized to fp8 while loading (`load_with_fp8_linears`, fp8 GEMMs where supported), so the
    full-precision blocks are never all resident."""
    if fp8:
        log.info(
            "loading mmditx from %s (joint-block weights quantized to fp8 while loading)", pre.components["mmditx"].path
        )
        network = load_with_fp8_linears(pre.components["mmditx"], policy.dtype, under="joint_blocks", fp8_compute=True)
    else:
        network = _load(pre, "mmditx", policy.dtype)
    return DiffusionModel(network=network, name=pre.files.model.name), VAE(_load(pre, "vae", policy.vae_dtype))


def load_components(pre: Preflight, policy: DevicePolicy, *, tokenizer_dir: Path | None = None) -> Components:
    """Load every detected component (CPU first; stages move them to the device as needed)."""
    diffusion, vae = load_image_stack(pre, policy)
    text = load_text_stack(pre, policy, tokenizer_dir=tokenizer_dir)
    return Components(diffusion=diffusion, text=text, vae=vae, policy=policy)

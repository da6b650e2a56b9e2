"""Image nodes: LoadImage, ImageScale, SaveImage, PreviewImage (ComfyUI `nodes.py`, `folder_paths.py`).

SaveImage writes `{prefix}_{counter:05}_.png` into the output folder (compress level 4) with the `prompt`
text chunk (the API prompt as executed) and one chunk per `extra_pnginfo` key (the UI `workflow`), so
ComfyUI can load sd35's images; pixels are truncated to uint8 as ComfyUI does. PreviewImage writes the
same to the temp folder with a random suffix and compress level 1. Both return ComfyUI's UI dict
{"images": [{"filename", "subfolder", "type"}]}.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from sd35.errors import UserInputError
from sd35.imageio.images import save_png, to_uint8
from sd35.nodes.resize import common_upscale
from sd35.nodes.services import Services
from sd35.workflow import InputSpec, NodeSpec, OutputSpec

IMAGE_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")
MAX_RESOLUTION = 16384
PREVIEW_LETTERS = "abcdefghijklmnopqrstupvxyz"  # ComfyUI's alphabet (sic: no 'w')


def _expand_vars(prefix: str, width: int, height: int) -> str:
    """%width%, %height%, %year% ... %second% (ComfyUI get_save_image_path compute_vars)."""
    now = time.localtime()
    values = {
        "width": width,
        "height": height,
        "year": now.tm_year,
        "month": f"{now.tm_mon:02d}",
        "day": f"{now.tm_mday:02d}",
        "hour": f"{now.tm_hour:02d}",
        "minute": f"{now.tm_min:02d}",
        "second": f"{now.tm_sec:02d}",
    }
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", str(value))
    return prefix


def save_path(prefix: str, base: Path, width: int, height: int) -> tuple[Path, str, int, str]:
    """(folder, file stem, next counter, subfolder) for a prefix that may hold sub-folders and %vars%; the
    counter is one past the highest `{stem}_NNNNN_` already there. Refuses to leave `base`."""
    if "%" in prefix:
        prefix = _expand_vars(prefix, width, height)
    norm = os.path.normpath(prefix)
    subfolder, stem = os.path.dirname(norm), os.path.basename(norm)
    folder = (base / subfolder).resolve()
    if os.path.commonpath((str(base.resolve()), str(folder))) != str(base.resolve()):
        raise UserInputError(f"Saving image outside the output folder is not allowed (filename_prefix {prefix!r})")
    folder.mkdir(parents=True, exist_ok=True)
    counter = 0
    for name in os.listdir(folder):
        if name.startswith(stem + "_"):
            digits = name[len(stem) + 1 :].split("_")[0]
            if digits.isdigit():
                counter = max(counter, int(digits))
    return folder, stem, counter + 1, subfolder


def save_images(
    services: Services,
    images: torch.Tensor,
    filename_prefix: str = "ComfyUI",
    prompt: dict | None = None,
    extra_pnginfo: dict | None = None,
    *,
    folder_type: str = "output",
    compress_level: int = 4,
    **_: Any,
) -> dict[str, Any]:
    """Write each image of [B, H, W, 3]; returns {"ui": {"images": [...]}, "result": ()}."""
    base = services.folder(folder_type)
    text: dict[str, str] = {}
    if services.write_metadata:
        if prompt is not None:
            text["prompt"] = json.dumps(prompt)
        for key, value in (extra_pnginfo or {}).items():
            text[key] = json.dumps(value)
    results = []
    with services.save_lock:
        folder, stem, counter, subfolder = save_path(filename_prefix, base, images.shape[2], images.shape[1])
        for batch_number, image in enumerate(images):
            name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            save_png(folder / name, to_uint8(image.float().cpu().numpy()), text, compress_level=compress_level)
            results.append({"filename": name, "subfolder": subfolder, "type": folder_type})
            counter += 1
    return {"ui": {"images": results}, "result": ()}


def preview_images(services: Services, images: torch.Tensor, **kw: Any) -> dict[str, Any]:
    suffix = "".join(random.SystemRandom().choice(PREVIEW_LETTERS) for _ in range(5))
    kw.pop("filename_prefix", None)
    return save_images(services, images, f"ComfyUI_temp_{suffix}", folder_type="temp", compress_level=1, **kw)


def _frames(path: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    images, masks = [], []
    with Image.open(path) as img:
        size = None
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":  # 16-bit greyscale PNG
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            size = size or rgb.size
            if rgb.size != size:
                continue
            images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None])
            if "A" in frame.getbands():
                alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                masks.append((1.0 - torch.from_numpy(alpha))[None])
            else:
                masks.append(torch.zeros(1, 64, 64))
        if img.format == "MPO":  # multi-picture JPEGs: only the main picture
            images, masks = images[:1], masks[:1]
    return images, masks


def load_image(services: Services, image: str, **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B, H, W, 3] in [0, 1] (EXIF-rotated RGB; one per frame of a multi-frame file) and MASK
    [B, H, W] = 1 − alpha, or zeros [B, 64, 64] without alpha (ComfyUI LoadImage)."""
    path = services.annotated_path(image)
    try:
        images, masks = _frames(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserInputError(f"cannot read image {image!r}: {exc}") from None
    return torch.cat(images), torch.cat(masks)


def _image_hash(services: Services, image: str) -> str:
    return hashlib.sha256(services.annotated_path(image).read_bytes()).hexdigest()


def _image_exists(services: Services, image: str) -> bool | str:
    try:
        services.annotated_path(image)
    except UserInputError:
        return f"Invalid image file: {image}"
    return True


def image_scale(image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str, **_: Any) -> tuple:
    """Resize [B, H, W, C] to width×height; a 0 side keeps the aspect ratio (ComfyUI ImageScale)."""
    if width == 0 and height == 0:
        return (image,)
    samples = image.movedim(-1, 1)
    if width == 0:
        width = max(1, round(samples.shape[3] * height / samples.shape[2]))
    elif height == 0:
        height = max(1, round(samples.shape[2] * width / samples.shape[3]))
    return (common_upscale(samples, width, height, upscale_method, crop).movedim(1, -1),)


def image_specs(services: Services) -> list[NodeSpec]:
    size = {"min": 0, "max": MAX_RESOLUTION, "step": 1, "default": 512}
    return [
        NodeSpec(
            "LoadImage",
            inputs=(InputSpec("image", "COMBO", choices_fn=services.input_images, image_upload=True),),
            outputs=(OutputSpec("IMAGE"), OutputSpec("MASK")),
            function=functools.partial(load_image, services),
            category="image",
            display_name="Load Image",
            fingerprint=functools.partial(_image_hash, services),
            validate_inputs=functools.partial(_image_exists, services),
        ),
        NodeSpec(
            "ImageScale",
            inputs=(
                InputSpec("image", "IMAGE"),
                InputSpec("upscale_method", "COMBO", choices=IMAGE_UPSCALE_METHODS),
                InputSpec("width", "INT", **size),
                InputSpec("height", "INT", **size),
                InputSpec("crop", "COMBO", choices=CROP_METHODS),
            ),
            outputs=(OutputSpec("IMAGE"),),
            function=image_scale,
            category="image/upscaling",
            display_name="Upscale Image",
        ),
        NodeSpec(
            "SaveImage",
            inputs=(
                InputSpec("images", "IMAGE", tooltip="The images to save."),
                InputSpec("filename_prefix", "STRING", default="ComfyUI", tooltip=SAVE_PREFIX_TOOLTIP),
            ),
            outputs=(),
            function=functools.partial(save_images, services),
            output_node=True,
            category="image",
            display_name="Save Image",
            description="Saves the input images to your ComfyUI output directory.",
            hidden=("prompt", "extra_pnginfo"),
        ),
        NodeSpec(
            "PreviewImage",
            inputs=(InputSpec("images", "IMAGE"),),
            outputs=(),
            function=functools.partial(preview_images, services),
            output_node=True,
            category="image",
            display_name="Preview Image",
            description="Saves the input images to your ComfyUI output directory.",
            hidden=("prompt", "extra_pnginfo"),
        ),
    ]


SAVE_PREFIX_TOOLTIP = (
    "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or "
    "%Empty Latent Image.width% to include values from nodes."
)

"""Pixels ↔ files: PNG writing with text chunks (atomically), image loading, PNG metadata reading."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from sd35.errors import UserInputError


def to_uint8(images: object) -> np.ndarray:
    """[B, H, W, 3] floats in [0, 1] → uint8, truncating like ComfyUI SaveImage (`clip(255·x).astype(uint8)`)."""
    array = np.asarray(images, dtype=np.float32)
    return np.clip(255.0 * array, 0, 255).astype(np.uint8)


def save_png(
    path: str | Path, pixels: np.ndarray, text: Mapping[str, str] | None = None, compress_level: int = 4
) -> Path:
    """Write an [H, W, 3] uint8 PNG with tEXt chunks, atomically: a temp file in the same folder, then rename.

    On any error (or Ctrl-C) the temp file is removed and no partial image is left at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(pixels).save(handle, format="PNG", pnginfo=info, compress_level=compress_level)
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600 files; images get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def new_file_mode() -> int:
    """0o666 minus the process umask: the mode `open()` would give a new file (mkstemp gives 0600).

    The umask is read from /proc/self/status where there is one: setting it to read it back (the only
    portable way) changes it process-wide for a moment, which a server thread creating a file then would
    inherit.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def load_image(path: str | Path) -> np.ndarray:
    """An image file → [H, W, 3] float32 in [0, 1] (EXIF-transposed, RGB), as ComfyUI LoadImage does."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            return np.asarray(image, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise UserInputError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserInputError(f"cannot read image {path}: {exc}") from None


def resize_image(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W, 3] float image → [height, width, 3] with Lanczos (the sd3.5 reference's img2img resize)."""
    if pixels.shape[0] == height and pixels.shape[1] == width:
        return pixels
    image = Image.fromarray(to_uint8(pixels))
    resized = image.resize((width, height), Image.LANCZOS)
    return np.asarray(resized, dtype=np.float32) / 255.0


def read_png_text(path: str | Path) -> dict[str, str]:
    """The tEXt/iTXt chunks of a PNG (e.g. ComfyUI's `prompt` and `workflow`)."""
    try:
        with Image.open(path) as image:
            return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
    except (UnidentifiedImageError, OSError) as exc:
        raise UserInputError(f"cannot read PNG {path}: {exc}") from None

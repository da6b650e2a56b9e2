"""Files the server reads and writes, confined to their folders: /view serves output/, input/ and temp/;
/upload/image writes to them. ComfyUI `server.py` view_image / image_upload behaviour, stricter: no "..",
no absolute paths, no symlink that leads outside the folder, no overwriting without the overwrite flag."""

from __future__ import annotations

import contextlib
import hashlib
import io
import mimetypes
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sd35.imageio.images import new_file_mode

FOLDER_TYPES = ("output", "input", "temp")

# Formats an upload may have (PIL format name -> extensions that are accepted for it).
UPLOAD_FORMATS = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "WEBP": (".webp",),
    "GIF": (".gif",),
    "BMP": (".bmp",),
}
UPLOAD_CONTENT_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "application/octet-stream"}
MAX_UPLOAD_PIXELS = 8192 * 8192  # larger pictures are refused before they are decoded
VIEWABLE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"}


class FileRequestError(Exception):
    """A file request that must be refused; `status` is the HTTP status (400, 403, 404, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Folders:
    """The three folders /view and uploads may touch (ComfyUI's output/, input/, temp/)."""

    output: Path
    input: Path
    temp: Path

    def base(self, folder_type: str) -> Path:
        if folder_type not in FOLDER_TYPES:
            raise FileRequestError(400, f"unknown folder type {folder_type!r}; use one of {', '.join(FOLDER_TYPES)}")
        return Path(getattr(self, folder_type))


def _check_name(filename: str) -> None:
    """A plain file name: no separators, no "..", no NUL, not hidden-empty."""
    if not filename or filename in (".", ".."):
        raise FileRequestError(400, "missing file name")
    if "\x00" in filename or "/" in filename or "\\" in filename or filename.startswith("."):
        raise FileRequestError(400, f"invalid file name {filename!r}")
    if len(filename) > 255:
        raise FileRequestError(400, "file name too long")


def _check_subfolder(subfolder: str) -> tuple[str, ...]:
    """Relative path parts of a subfolder ("" = the folder itself); refuses absolute paths and ".."."""
    if "\x00" in subfolder or "\\" in subfolder:
        raise FileRequestError(400, f"invalid subfolder {subfolder!r}")
    if subfolder.startswith("/") or (len(subfolder) > 1 and subfolder[1] == ":"):
        raise FileRequestError(400, "subfolder must be relative")
    parts = tuple(p for p in subfolder.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise FileRequestError(400, "subfolder must not contain '..'")
    if len(subfolder) > 1024:
        raise FileRequestError(400, "subfolder too long")
    return parts


def _inside(path: Path, base: Path) -> bool:
    try:
        path.relative_to(base)
    except ValueError:
        return False
    return True


def resolve_existing(folders: Folders, folder_type: str, subfolder: str, filename: str) -> Path:
    """The real path of an existing file for GET /view; symlinks are followed and must stay inside."""
    base = folders.base(folder_type)
    _check_name(filename)
    parts = _check_subfolder(subfolder)
    candidate = base.joinpath(*parts, filename)
    try:
        real_base = base.resolve(strict=True)
        real = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise FileRequestError(404, "file not found") from None
    except (OSError, RuntimeError):  # symlink loop, name too long, ...
        raise FileRequestError(404, "file not found") from None
    if not _inside(real, real_base):
        raise FileRequestError(403, "file is outside its folder")
    if not real.is_file():
        raise FileRequestError(404, "file not found")
    return real


def view_media_type(path: Path) -> tuple[str, bool]:
    """(content type, as_attachment) for /view: images inline, anything else downloaded as octet-stream
    (ComfyUI forces HTML/JS/CSS to download; we do it for every non-image type)."""
    guessed = mimetypes.guess_type(path.name)[0] or ""
    if guessed in VIEWABLE_TYPES:
        return guessed, False
    return "application/octet-stream", True


def check_image_bytes(data: bytes, filename: str) -> str:
    """The PIL format of an uploaded image, after checking it decodes, fits the size limit and that its
    extension matches its content. Raises FileRequestError(400/413)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or ""
            width, height = image.size
            if width * height > MAX_UPLOAD_PIXELS:
                raise FileRequestError(413, f"image is too large ({width}x{height} pixels)")
            image.verify()
    except FileRequestError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise FileRequestError(400, f"not a readable image: {type(exc).__name__}") from None
    if fmt not in UPLOAD_FORMATS:
        raise FileRequestError(415, f"unsupported image format {fmt or 'unknown'}")
    if Path(filename).suffix.lower() not in UPLOAD_FORMATS[fmt]:
        raise FileRequestError(400, f"file name {filename!r} does not match its content ({fmt})")
    return fmt


def _target_dir(folders: Folders, folder_type: str, subfolder: str) -> tuple[Path, str]:
    """Create (if needed) and return the upload folder, checking that it resolves inside its base."""
    base = folders.base(folder_type)
    parts = _check_subfolder(subfolder)
    base.mkdir(parents=True, exist_ok=True)
    real_base = base.resolve()
    target = real_base.joinpath(*parts)
    # Refuse before mkdir so that a symlinked parent cannot make us create folders elsewhere.
    probe = real_base
    for part in parts:
        probe = probe / part
        if probe.is_symlink() and not _inside(probe.resolve(), real_base):
            raise FileRequestError(403, "subfolder leads outside its folder")
    target.mkdir(parents=True, exist_ok=True)
    if not _inside(target.resolve(), real_base):
        raise FileRequestError(403, "subfolder leads outside its folder")
    return target, "/".join(parts)


def _same_content(path: Path, digest: str) -> bool:
    try:
        with path.open("rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest() == digest
    except OSError:
        return False


def _free_name(folder: Path, filename: str, digest: str) -> tuple[str, bool]:
    """(name, exists_with_same_content): ComfyUI's "name (1).png" numbering for existing files."""
    stem, suffix = os.path.splitext(filename)
    name, counter = filename, 1
    while os.path.lexists(folder / name):
        if not (folder / name).is_symlink() and _same_content(folder / name, digest):
            return name, True
        name = f"{stem} ({counter}){suffix}"
        counter += 1
    return name, False


def _write_atomic(path: Path, data: bytes, *, replace: bool) -> None:
    """Write via a temp file in the same folder; replace=False fails if `path` appeared meanwhile."""
    fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600 files; uploads get the usual permissions
        if replace:
            os.replace(tmp, path)  # replaces a symlink itself, never the file it points to
        else:
            os.link(tmp, path)  # atomic "create only if absent"
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_upload(
    folders: Folders, folder_type: str, subfolder: str, filename: str, data: bytes, *, overwrite: bool
) -> dict[str, str]:
    """Store an uploaded image; returns ComfyUI's {"name", "subfolder", "type"}.

    Without `overwrite`, an existing file with other content gets a " (n)" suffix, and one with the
    same content is reused (ComfyUI behaviour)."""
    _check_name(filename)
    check_image_bytes(data, filename)
    folder, sub = _target_dir(folders, folder_type, subfolder)
    digest = hashlib.sha256(data).hexdigest()
    if overwrite:
        _write_atomic(folder / filename, data, replace=True)
        return {"name": filename, "subfolder": sub, "type": folder_type}
    for _ in range(100):
        name, exists = _free_name(folder, filename, digest)
        if exists:
            return {"name": name, "subfolder": sub, "type": folder_type}
        try:
            _write_atomic(folder / name, data, replace=False)
        except FileExistsError:
            continue  # another upload took the name: number again
        return {"name": name, "subfolder": sub, "type": folder_type}
    raise FileRequestError(409, "could not find a free file name")

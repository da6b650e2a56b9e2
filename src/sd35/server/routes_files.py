"""GET /view and POST /upload/image, confined to output/, input/ and temp/ (see files.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image

from .files import UPLOAD_CONTENT_TYPES, FileRequestError, resolve_existing, save_upload, view_media_type
from .security import error_body
from .state import ServerState, get_state

router = APIRouter()
State = Annotated[ServerState, Depends(get_state)]
PREVIEW_FORMATS = {"webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png")}


def file_error(exc: FileRequestError) -> JSONResponse:
    kinds = {400: "bad_request", 403: "forbidden", 404: "not_found", 409: "conflict", 413: "too_large"}
    return JSONResponse(error_body(kinds.get(exc.status, "unsupported"), exc.message), status_code=exc.status)


def _converted(path: Path, preview: str | None, channel: str | None) -> tuple[bytes, str] | None:
    """Bytes and type for ?preview=webp;90 and ?channel=rgb|a (ComfyUI view_image); None = send the file."""
    if not preview and channel in (None, "", "rgba"):
        return None
    fmt, media = "PNG", "image/png"
    quality = 90
    if preview:
        name, _, q = preview.partition(";")
        if name not in PREVIEW_FORMATS:
            raise FileRequestError(400, f"unknown preview format {name!r}")
        fmt, media = PREVIEW_FORMATS[name]
        if q:
            if not q.isdigit() or not 1 <= int(q) <= 100:
                raise FileRequestError(400, "preview quality must be 1..100")
            quality = int(q)
    if channel not in (None, "", "rgba", "rgb", "a"):
        raise FileRequestError(400, "channel must be rgb, a or rgba")
    try:
        with Image.open(path) as image:
            image.load()
            if channel == "a":
                alpha = image.getchannel("A") if "A" in image.getbands() else Image.new("L", image.size, 255)
                image = Image.merge("RGBA", (alpha, alpha, alpha, alpha))
            elif channel == "rgb" or fmt == "JPEG":
                image = image.convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format=fmt, quality=quality)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise FileRequestError(400, "the file is not an image that can be converted") from None
    return buffer.getvalue(), media


@router.get("/view", responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such file"}})
def view(
    state: State,
    filename: Annotated[str, Query(max_length=255)],
    type: Annotated[str, Query(max_length=16)] = "output",
    subfolder: Annotated[str, Query(max_length=1024)] = "",
    preview: Annotated[str | None, Query(max_length=16)] = None,
    channel: Annotated[str | None, Query(max_length=8)] = None,
) -> Any:
    """A file from output/, input/ or temp/. Images are shown inline; anything else is a download."""
    try:
        path = resolve_existing(state.folders, type, subfolder, filename)
        converted = _converted(path, preview, channel)
    except FileRequestError as exc:
        return file_error(exc)
    if converted is not None:
        return Response(converted[0], media_type=converted[1], headers={"X-Content-Type-Options": "nosniff"})
    media_type, attachment = view_media_type(path)
    return FileResponse(
        path,
        media_type=media_type,
        filename=path.name if attachment else None,
        content_disposition_type="attachment" if attachment else "inline",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )


@router.post("/upload/image", responses={400: {"description": "refused"}, 413: {"description": "too large"}})
async def upload_image(
    state: State,
    image: Annotated[UploadFile, File(description="PNG, JPEG, WEBP, GIF or BMP")],
    type: Annotated[str, Form(max_length=16)] = "input",
    subfolder: Annotated[str, Form(max_length=1024)] = "",
    overwrite: Annotated[str, Form(max_length=8)] = "false",
) -> Any:
    """Store an image in input/ (or temp/, output/); answers {"name", "subfolder", "type"}.
    An existing name gets a " (n)" suffix unless overwrite is "true"/"1"."""
    content_type = (image.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if content_type not in UPLOAD_CONTENT_TYPES:
        return file_error(FileRequestError(415, f"content type {content_type!r} is not an accepted image type"))
    data = await image.read(state.config.max_upload_bytes + 1)
    if len(data) > state.config.max_upload_bytes:
        return file_error(FileRequestError(413, "image is larger than the upload limit"))
    filename = image.filename or ""
    flag = overwrite.strip().lower() in ("true", "1", "yes")
    try:
        return await run_in_threadpool(save_upload, state.folders, type, subfolder, filename, data, overwrite=flag)
    except FileRequestError as exc:
        return file_error(exc)

"""Read-only information routes: /object_info, /system_stats, /models, /embeddings, /extensions, /features."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from sd35 import __version__

from .security import error_body
from .state import ServerState, get_state

router = APIRouter()
State = Annotated[ServerState, Depends(get_state)]


@router.get("/object_info")
def object_info(state: State) -> dict[str, Any]:
    """Every node type's schema (COMBO file lists resolved now)."""
    return state.registry.object_info()


@router.get("/object_info/{node_class}")
def object_info_one(node_class: Annotated[str, PathParam(max_length=200)], state: State) -> dict[str, Any]:
    """{node_class: schema}, or {} for an unknown type (as ComfyUI answers)."""
    if node_class not in state.registry:
        return {}
    return {node_class: state.registry.object_info_for(node_class)}


def _memory() -> tuple[int, int]:
    """(total, available) RAM in bytes from /proc/meminfo (0, 0 where unavailable)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(fields["MemTotal"].split()[0]) * 1024
        free = int(fields.get("MemAvailable", fields["MemFree"]).split()[0]) * 1024
        return total, free
    except (OSError, KeyError, ValueError):
        return 0, 0


def _devices(services: Any) -> list[dict[str, Any]]:
    import torch  # imported here: the server module itself stays light to import

    policy = getattr(services, "device_policy", None) or getattr(services, "policy", None)
    device = getattr(policy, "device", None) or torch.device("cpu")
    device = torch.device(device)
    entry: dict[str, Any] = {"name": str(device), "type": device.type, "index": device.index}
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        entry.update(name=f"{device} {torch.cuda.get_device_name(device)}", vram_total=total, vram_free=free)
        entry.update(torch_vram_total=torch.cuda.memory_reserved(device), torch_vram_free=0)
    else:
        total, free = _memory()
        entry.update(vram_total=total, vram_free=free, torch_vram_total=0, torch_vram_free=0)
    return [entry]


@router.get("/system_stats")
def system_stats(state: State) -> dict[str, Any]:
    """ComfyUI's {system{os, ram_total, ram_free, comfyui_version, python_version, ...}, devices[...]}."""
    import torch

    total, free = _memory()
    system = {
        "os": os.name if sys.platform != "linux" else "posix",
        "ram_total": total,
        "ram_free": free,
        "comfyui_version": f"sd35 {__version__}",
        "required_frontend_version": "",
        "python_version": sys.version,
        "pytorch_version": torch.__version__,
        "embedded_python": False,
        "argv": list(state.config.argv),
        "platform": platform.platform(),
    }
    return {"system": system, "devices": _devices(state.services)}


def model_folders(services: Any) -> dict[str, list[str]]:
    """folder name -> model files (ComfyUI's folder names), from the services' ModelFolders; {} if it
    has none (a test stand-in)."""
    models = getattr(services, "models", None)
    if not callable(getattr(models, "list", None)):
        return {}
    from sd35.nodes.paths import MODEL_FOLDERS

    return {kind: models.list(kind) for kind in MODEL_FOLDERS}


@router.get("/models")
def models(state: State) -> list[str]:
    """The model folder names (ComfyUI: checkpoints, text_encoders, vae, ...)."""
    return list(model_folders(state.services))


@router.get("/models/{folder}", responses={404: {"description": "unknown folder"}})
def models_in(folder: Annotated[str, PathParam(max_length=100)], state: State) -> Any:
    """The files of one model folder."""
    found = model_folders(state.services)
    if folder not in found:
        return JSONResponse(error_body("not_found", f"unknown model folder {folder!r}"), status_code=404)
    return found[folder]


@router.get("/embeddings")
def embeddings() -> list[str]:
    """sd35 loads no textual-inversion embeddings."""
    return []


@router.get("/extensions")
def extensions() -> list[str]:
    return []


@router.get("/features")
def features(state: State) -> dict[str, Any]:
    return {"supports_preview_metadata": False, "max_upload_size": state.config.max_upload_bytes}

"""Helpers for the node and `sd35 run` tests: a ComfyUI-layout models folder holding the tiny checkpoints
under the names the shared workflows use, an all-in-one fp8 checkpoint like ComfyUI's SD3.5 Large
template file, and a runner that records engine events."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sd35.loading.keymaps import OFFICIAL_PREFIXES
from sd35.loading.tiny import tiny_state
from sd35.workflow import Executing, ExecutionCached, NodeRegistry, OutputCache, execute

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
WORKFLOWS = SHARED / "workflows"
OBJECT_INFO = SHARED / "comfyui_api_samples" / "object_info_sd3_subset.json"
OFFICIAL_UI = WORKFLOWS / "SD3.5M_example_workflow.json"
OFFICIAL_API = WORKFLOWS / "SD3.5M_example_workflow_api.json"
LARGE_TEMPLATE = WORKFLOWS / "sd3.5_simple_example.json"
LARGE_CKPT = "sd3.5_large_fp8_scaled.safetensors"
FP8_COMPONENTS = ("mmditx", "t5xxl")  # ComfyUI's scaled-fp8 files quantize the DiT and T5 linears
NOT_LINEAR = ("embed_tokens", "relative_attention_bias")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_all_in_one_fp8(path: Path) -> Path:
    """One file with every tiny component under the official prefixes (`text_encoders.*` included), the
    MMDiT and T5 linear weights stored as float8_e4m3fn with a `.scale_weight` scalar and a `scaled_fp8`
    marker, as ComfyUI's `sd3.5_large_fp8_scaled.safetensors` is laid out."""
    tensors: dict[str, torch.Tensor] = {}
    for component, prefix in OFFICIAL_PREFIXES.items():
        for key, value in tiny_state(component).items():
            linear = value.ndim == 2 and key.endswith(".weight") and not any(n in key for n in NOT_LINEAR)
            if component in FP8_COMPONENTS and linear:
                scale = (value.abs().max() / 448.0).clamp(min=1e-12)
                tensors[prefix + key] = (value / scale).to(torch.float8_e4m3fn)
                tensors[prefix + key[: -len("weight")] + "scale_weight"] = scale.reshape(())
            else:
                tensors[prefix + key] = value
        if component in FP8_COMPONENTS:
            tensors[prefix + "scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    save_file(tensors, str(path))
    return path


def make_comfy_models(root: Path, tiny: dict[str, Path]) -> Path:
    """root/{checkpoints,text_encoders,vae,diffusion_models} with the tiny files linked under the names
    the shared workflows use, plus the all-in-one fp8 checkpoint of the SD3.5 Large template."""
    layout = {
        "checkpoints/sd3.5_medium.safetensors": tiny["checkpoint"],
        "text_encoders/clip_l.safetensors": tiny["clip_l"],
        "text_encoders/clip_g.safetensors": tiny["clip_g"],
        "text_encoders/t5xxl_fp16.safetensors": tiny["t5xxl"],
        "vae/sd3.5_vae.safetensors": tiny["checkpoint"],  # VAELoader reads first_stage_model.* from it
        "diffusion_models/sd3.5_medium.safetensors": tiny["checkpoint"],
    }
    for name, target in layout.items():
        link = root / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
    write_all_in_one_fp8(root / "checkpoints" / LARGE_CKPT)
    return root


def run_prompt(
    prompt: dict[str, Any], registry: NodeRegistry, cache: OutputCache | None = None, **kw: Any
) -> tuple[Any, list[Any]]:
    """execute() with an event list; (result, events)."""
    events: list[Any] = []
    result = execute(prompt, registry, cache=cache if cache is not None else OutputCache(), events=events.append, **kw)
    return result, events


def executed_nodes(events: list[Any]) -> list[str]:
    return [e.node for e in events if isinstance(e, Executing) and e.node is not None]


def cached_nodes(events: list[Any]) -> list[str]:
    return [n for e in events if isinstance(e, ExecutionCached) for n in e.nodes]


def small(prompt: dict[str, Any], size: tuple[int, int] = (64, 64), steps: int = 3) -> dict[str, Any]:
    """A copy of an API prompt with every latent size and sampler step count made small (fast on CPU)."""
    out = json.loads(json.dumps(prompt))
    for node in out.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptySD3LatentImage", "EmptyLatentImage"):
            inputs["width"], inputs["height"] = size
        if node["class_type"] in ("KSampler", "KSamplerAdvanced"):
            inputs["steps"] = steps
    return out

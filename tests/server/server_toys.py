"""A fast stand-in for the real nodes in the server tests: every node of ComfyUI's SD3 /object_info subset
with its real inputs and outputs, and toy functions (no torch). KSampler sleeps `step_delay` per step and
reports progress; SaveImage/PreviewImage write real PNGs (colour from the seed, with the "prompt" text
chunk); CLIPTextEncode with text "FAIL" raises, so a failing prompt can be queued."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from sd35.errors import UserInputError
from sd35.workflow import InputSpec, NodeRegistry, spec_from_object_info

SHARED = Path("/work/shared")
SAMPLES = SHARED / "comfyui_api_samples"
WORKFLOWS = SHARED / "workflows"
MODEL_FILES = {
    "ckpt_name": ["sd3.5_medium.safetensors"],
    "clip_name1": ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"],
    "clip_name2": ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"],
    "clip_name3": ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"],
}


@dataclass
class ToyServices:
    """What the server reads from sd35.nodes.Services."""

    output_dir: Path
    input_dir: Path
    temp_dir: Path


def toy_services(root: Path) -> ToyServices:
    return ToyServices(root / "output", root / "input", root / "temp")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def official_prompt(*, steps: int = 2, size: int = 64, seed: int = 1, save: bool = True) -> dict[str, Any]:
    """The official SD3.5M API workflow at a tiny size; SaveImage (prefix "sd35") instead of PreviewImage."""
    prompt = load_json(WORKFLOWS / "SD3.5M_example_workflow_api.json")
    prompt["294"]["inputs"].update(steps=steps, seed=seed)
    prompt["135"]["inputs"].update(width=size, height=size)
    if save:
        del prompt["50"]
        prompt["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "sd35"}}
    return prompt


class _Writer:
    """File naming of SaveImage / PreviewImage (ComfyUI's "{prefix}_{counter:05}_.png")."""

    def __init__(self, services: ToyServices) -> None:
        self.services = services
        self.counter = 0

    def write(self, image: dict[str, Any], prefix: str, folder_type: str, prompt: Any) -> dict[str, Any]:
        folder = self.services.output_dir if folder_type == "output" else self.services.temp_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.counter += 1
        name = f"{prefix}_{self.counter:05}_.png"
        info = PngImagePlugin.PngInfo()
        info.add_text("prompt", json.dumps(prompt))
        seed = int(image.get("seed", 0))
        colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
        Image.new("RGB", (image["w"], image["h"]), colour).save(folder / name, pnginfo=info)
        return {"filename": name, "subfolder": "", "type": folder_type}


def toy_registry(services: ToyServices, *, step_delay: float = 0.0) -> NodeRegistry:
    writer = _Writer(services)

    def empty_latent(*, width: int, height: int, context: Any, **_: Any) -> tuple:
        return ({"w": width, "h": height, "seed": 0},)

    def ksampler(*, latent_image: dict, steps: int, context: Any, **kw: Any) -> tuple:
        for i in range(steps):
            if step_delay:
                time.sleep(step_delay)
            context.report_progress(i + 1, steps)
        return ({**latent_image, "seed": kw.get("seed", kw.get("noise_seed", 0))},)

    def text_encode(*, text: str, context: Any, **_: Any) -> tuple:
        if text == "FAIL":
            raise UserInputError("toy failure requested by the prompt text")
        return (f"cond:{text}",)

    def save(*, images: dict, context: Any, filename_prefix: str = "ComfyUI", prompt: Any = None, **_: Any) -> dict:
        return {"ui": {"images": [writer.write(images, filename_prefix, "output", prompt)]}, "result": ()}

    def preview(*, images: dict, context: Any, **_: Any) -> dict:
        return {"ui": {"images": [writer.write(images, "ComfyUI_temp", "temp", None)]}, "result": ()}

    def load_image(*, image: str, context: Any, **_: Any) -> tuple:
        path = services.input_dir / image
        with Image.open(path) as img:
            size = img.size
        return ({"w": size[0], "h": size[1], "seed": 0}, "mask")

    special = {
        "EmptySD3LatentImage": empty_latent,
        "EmptyLatentImage": empty_latent,
        "KSampler": ksampler,
        "KSamplerAdvanced": ksampler,
        "CLIPTextEncode": text_encode,
        "SaveImage": save,
        "PreviewImage": preview,
        "LoadImage": load_image,
    }
    registry = NodeRegistry()
    for class_type, info in load_json(SAMPLES / "object_info_sd3_subset.json").items():
        function = special.get(class_type) or _passthrough(class_type, len(info["output"]))
        spec = spec_from_object_info(info, function)
        inputs = tuple(_with_files(i, services) for i in spec.inputs)
        registry.register(dataclasses.replace(spec, inputs=inputs))
    return registry


def _passthrough(class_type: str, n_outputs: int) -> Any:
    """Returns the first dict input (latent/image) or a string naming the node, for each output."""

    def function(*, context: Any, **kwargs: Any) -> tuple:
        carried = next((v for v in kwargs.values() if isinstance(v, dict)), None)
        return tuple(
            carried if carried is not None else f"{class_type}#{context.node_id}:{i}" for i in range(n_outputs)
        )

    return function


def _with_files(spec: InputSpec, services: ToyServices) -> InputSpec:
    if spec.name in MODEL_FILES:
        return dataclasses.replace(spec, choices=None, choices_fn=lambda k=spec.name: MODEL_FILES[k])
    if spec.name == "image" and spec.type == "COMBO":

        def inputs() -> list[str]:
            folder = services.input_dir
            return (
                sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            )

        return dataclasses.replace(spec, choices=None, choices_fn=inputs)
    return spec

"""Building LoRA files from known random low-rank deltas, and the weights they should give by hand.

A `Delta` is one update in our (official) layout: up [out, r], down [r, in...] and alpha, so the
hand-merged weight is W + strength·(alpha/r)·up·down, computed here without sd35.lora. Writers lay the
same factors out as each trainer does: kohya/ComfyUI keep our fused names, diffusers-named formats split a
fused qkv into q/k/v row blocks and swap the halves of the adaLN layers diffusers stores as (scale, shift).
Also: loading the tiny models, a checkpoint folder with hand-merged weights, and a small generation
(64x64, 2 steps) whose images the tests compare.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from sd35.loading import convert, keymaps
from sd35.loading.keymaps import OFFICIAL_PREFIXES
from sd35.loading.tiny import CHECKPOINT_NAME, TEXT_ENCODER_FILES
from sd35.pipeline.components import Components
from sd35.pipeline.files import find_model_files, load_components, preflight
from sd35.pipeline.generate import generate
from sd35.pipeline.request import GenerationRequest
from sd35.runtime.devices import DevicePolicy

RANK = 4
REQUEST = GenerationRequest(prompt="a red cube", negative_prompt="blur", width=64, height=64, steps=2, seed=5, slg=None)


def load_tiny(models_dir: Path) -> Components:
    return load_components(preflight(find_model_files(models_dir)), DevicePolicy())


def networks(components: Components) -> dict[str, torch.nn.Module]:
    enc = components.text.encoders
    return {"mmditx": components.diffusion.network, "clip_l": enc.clip_l, "clip_g": enc.clip_g, "t5xxl": enc.t5}


def image(components: Components) -> torch.Tensor:
    with torch.inference_mode():
        return generate(components, REQUEST).images


def write_merged_checkpoint(src: Path, dst: Path, merged: dict[str, dict[str, torch.Tensor]]) -> Path:
    """A copy of the tiny model folder `src` whose weights are replaced by `merged` (component -> params)."""
    dst.mkdir(parents=True, exist_ok=True)
    files = {"mmditx": CHECKPOINT_NAME, **TEXT_ENCODER_FILES}
    for component, name in files.items():
        if component not in merged:
            shutil.copy(src / name, dst / name)
            continue
        state = load_file(str(src / name))
        prefix = OFFICIAL_PREFIXES["mmditx"] if component == "mmditx" else ""
        for param, tensor in merged[component].items():
            assert prefix + param in state, param
            state[prefix + param] = tensor.detach().contiguous()
        save_file(state, str(dst / name), metadata={"format": "pt"})
    return dst


@dataclass(frozen=True)
class Delta:
    component: str
    module: str  # our module name
    up: Tensor
    down: Tensor
    alpha: float | None

    @property
    def scale(self) -> float:
        return self.alpha / self.down.shape[0] if self.alpha is not None else 1.0

    def dense(self, shape: torch.Size) -> Tensor:
        return (self.up.flatten(1) @ self.down.flatten(1) * self.scale).reshape(shape)


def random_deltas(models: dict, names: dict[str, list[str]], seed: int, *, alpha: bool = True) -> list[Delta]:
    """One random rank-4 delta per (component, module) of `names`; conv weights get conv-shaped factors."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for component, modules in names.items():
        for name in modules:
            weight = models[component].get_submodule(name).weight
            in_shape = weight.shape[1:]
            up = torch.randn(weight.shape[0], RANK, generator=g) * 0.1
            down = torch.randn(RANK, *in_shape, generator=g) * 0.1
            if weight.ndim == 4:
                up = up[..., None, None]
            out.append(Delta(component, name, up, down, float(RANK * 2) if alpha else None))
    return out


@dataclass(frozen=True)
class DenseDelta:
    """A known ΔW in our layout for rows [start, stop) of a weight (LyCORIS tests build these by hand)."""

    component: str
    module: str
    delta: Tensor
    start: int = 0

    def dense(self, shape: torch.Size) -> Tensor:
        full = torch.zeros(shape)
        full[self.start : self.start + self.delta.shape[0]] = self.delta.reshape(-1, *shape[1:])
        return full


def hand_merged(models: dict, deltas: list, strengths: dict[str, float] | None = None) -> dict[str, dict[str, Tensor]]:
    """component -> {param: W + strength·ΔW} for every touched weight (fp32); strengths per component."""
    out: dict[str, dict[str, Tensor]] = {}
    for d in deltas:
        strength = (strengths or {}).get(d.component, 1.0)
        weight = models[d.component].get_submodule(d.module).weight.detach()
        merged = out.setdefault(d.component, {}).get(f"{d.module}.weight", weight.clone())
        out[d.component][f"{d.module}.weight"] = merged + strength * d.dense(weight.shape)
    return out


# --- writers: (deltas) -> {key: tensor} ------------------------------------------------------------------

KOHYA_TE = {"clip_l": "lora_te1_", "clip_g": "lora_te2_", "t5xxl": "lora_te3_"}
COMFY = {
    "mmditx": "diffusion_model.",
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
}


def _lora(stem: str, up: Tensor, down: Tensor, alpha: float | None, up_s=".lora_up.weight", down_s=".lora_down.weight"):
    out = {stem + up_s: up.contiguous(), stem + down_s: down.contiguous()}
    if alpha is not None:
        out[stem + ".alpha"] = torch.tensor(alpha)
    return out


def kohya(deltas: list[Delta]) -> dict[str, Tensor]:
    out = {}
    for d in deltas:
        prefix = "lora_unet_" if d.component == "mmditx" else KOHYA_TE[d.component]
        out.update(_lora(prefix + d.module.replace(".", "_"), d.up, d.down, d.alpha))
    return out


def comfyui(deltas: list[Delta]) -> dict[str, Tensor]:
    """ComfyUI LoraSave layout: no alpha (scale 1) -> the alpha is folded into up."""
    out = {}
    for d in deltas:
        out.update(_lora(COMFY[d.component] + d.module, d.up * d.scale, d.down, None))
    return out


def diffusers_parts(model, d: Delta) -> list[tuple[str, Tensor, Tensor]]:
    """(diffusers module name, up, down) for an MMDiT delta: qkv split into row thirds, adaLN halves swapped."""
    official = f"{d.module}.weight"
    mapping = next(m for m in keymaps.to_diffusers("mmditx", _weight_names(model)).mappings if m.official == official)
    names = [n.removesuffix(".weight") for n in mapping.diffusers]
    up = d.up * d.scale
    if mapping.op == keymaps.QKV:
        return [(n, part, d.down) for n, part in zip(names, up.chunk(3, dim=0), strict=True)]
    if mapping.op == keymaps.SWAP:
        up = convert.swap_halves(up)
    return [(names[0], up, d.down)]


def _weight_names(model) -> list[str]:
    return [
        f"{n}.weight"
        for n, m in model.named_modules()
        if n and isinstance(getattr(m, "weight", None), torch.nn.Parameter)
    ]


def diffusers_named(prefix: str, underscored: bool, te_prefixes: dict[str, str]) -> Callable:
    """A writer for diffusers module names under `prefix` (OneTrainer: lora_transformer_ + underscores)."""

    def write(deltas: list[Delta], models: dict) -> dict[str, Tensor]:
        out = {}
        for d in deltas:
            if d.component != "mmditx":
                name = d.module.replace(".", "_") if underscored else d.module
                out.update(_lora(te_prefixes[d.component] + name, d.up, d.down, d.alpha))
                continue
            for name, up, down in diffusers_parts(models["mmditx"], d):
                stem = prefix + (name.replace(".", "_") if underscored else name)
                out.update(_lora(stem, up, down, None))
        return out

    return write


def save(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path

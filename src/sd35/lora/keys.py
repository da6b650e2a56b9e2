"""LoRA key names: suffixes per factor, prefixes per trainer, and the name -> weight table of a model.

A LoRA key is `<prefix><module name><suffix>`. The prefix says which network and which naming the trainer
used (sources: kohya sd-scripts `networks/lora_sd3.py` LORA_PREFIX_*; ComfyUI `comfy/lora.py`
model_lora_keys_unet/model_lora_keys_clip and `comfy_extras/nodes_lora_extract.py`; diffusers
`SD3LoraLoaderMixin`; OneTrainer `lora_transformer_`; SimpleTuner LyCORIS `lycoris_`). Module names are
either ours (= the official checkpoint's, `joint_blocks.0.x_block.attn.qkv`; HF names for the text
encoders) or diffusers' (`transformer_blocks.0.attn.to_q`), dotted or with dots written as underscores.
Diffusers names are mapped through `sd35.loading.keymaps`: q/k/v parts address thirds of our fused qkv
rows, and the adaLN layers diffusers stores as (scale, shift) are swapped back (spec §2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from sd35.loading import keymaps

COMPONENTS = ("mmditx", "clip_l", "clip_g", "t5xxl")
COMPONENT_NAMES = {"mmditx": "MMDiT", "clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5-XXL"}

# (up, down, mid) suffix families of plain LoRA factors (comfy/weight_adapter/lora.py LoRAAdapter.load)
LORA_SUFFIXES = (
    (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight"),  # kohya, ComfyUI, LyCORIS LoCon
    (".lora_B.weight", ".lora_A.weight", None),  # PEFT / diffusers
    (".lora_B.default.weight", ".lora_A.default.weight", None),  # PEFT with the adapter name kept
    ("_lora.up.weight", "_lora.down.weight", None),  # old diffusers attention processors
    (".lora.up.weight", ".lora.down.weight", None),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", None),  # transformers-style
)
LOHA_SUFFIXES = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2")
LOKR_SUFFIXES = (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")
OTHER_SUFFIXES = (".alpha", ".diff", ".diff_b")
UNSUPPORTED_SUFFIXES = {  # recognised, refused with a reason
    ".dora_scale": "DoRA (weight-decomposed LoRA)",
    ".lora_magnitude_vector": "DoRA (weight-decomposed LoRA)",
    ".set_weight": "weight replacement (set_weight)",
    ".w_norm": "norm-weight patches (w_norm)",
    ".b_norm": "norm-bias patches (b_norm)",
    ".a1.weight": "GLoRA",
}
KNOWN_SUFFIXES = tuple(
    sorted(
        {s for group in LORA_SUFFIXES for s in group if s}
        | set(LOHA_SUFFIXES)
        | set(LOKR_SUFFIXES)
        | set(OTHER_SUFFIXES)
        | set(UNSUPPORTED_SUFFIXES),
        key=len,
        reverse=True,  # longest first: ".lora_B.default.weight" before ".lora_B.weight"
    )
)


@dataclass(frozen=True)
class Prefix:
    text: str
    component: str
    style: str  # trainer/naming family, reported as the file's format
    underscored: bool = False  # dots of the module name written as underscores


PREFIXES = (
    Prefix("lora_unet_", "mmditx", "kohya", underscored=True),
    Prefix("lora_transformer_", "mmditx", "onetrainer", underscored=True),
    Prefix("lycoris_", "mmditx", "simpletuner-lycoris", underscored=True),
    Prefix("lora_te1_", "clip_l", "kohya", underscored=True),
    Prefix("lora_te2_", "clip_g", "kohya", underscored=True),
    Prefix("lora_te3_", "t5xxl", "kohya", underscored=True),
    Prefix("model.diffusion_model.", "mmditx", "official"),
    Prefix("diffusion_model.", "mmditx", "comfyui"),
    Prefix("text_encoders.clip_l.transformer.", "clip_l", "comfyui"),
    Prefix("text_encoders.clip_g.transformer.", "clip_g", "comfyui"),
    Prefix("text_encoders.t5xxl.transformer.", "t5xxl", "comfyui"),
    Prefix("transformer.", "mmditx", "diffusers"),
    Prefix("base_model.model.", "mmditx", "diffusers"),  # PEFT's own wrapper name
    Prefix("text_encoder.", "clip_l", "diffusers"),
    Prefix("text_encoder_2.", "clip_g", "diffusers"),
    Prefix("text_encoder_3.", "t5xxl", "diffusers"),
    Prefix("", "mmditx", "bare"),  # `joint_blocks.…` / `transformer_blocks.…` with no prefix
)
# PEFT metadata sections (diffusers `lora_adapter_metadata`) per component
METADATA_SECTIONS = {
    "mmditx": "transformer",
    "clip_l": "text_encoder",
    "clip_g": "text_encoder_2",
    "t5xxl": "text_encoder_3",
}

# Names other model families use; checked before mapping so the error names the family.
FOREIGN = (
    (re.compile(r"double_blocks|single_blocks|single_transformer_blocks"), "Flux"),
    (re.compile(r"input_blocks|output_blocks|middle_block|down_blocks|up_blocks|mid_block"), "an SD1.x/SDXL UNet"),
    (re.compile(r"^lora_te_|^lora_prior_"), "SD1.x/SDXL/Stable Cascade"),
    (re.compile(r"^(diffusion_model|transformer)\.(layers|blocks|noise_refiner)\."), "another DiT (Lumina/Wan/...)"),
)


@dataclass(frozen=True)
class Target:
    """Where one LoRA module lands: a module of our model, a row block of its weight, a half swap."""

    module: str  # module path in our model, e.g. "joint_blocks.0.x_block.attn.qkv"
    part: int = 0  # which of `parts` equal row blocks (q, k, v thirds of a fused qkv)
    parts: int = 1
    swap: bool = False  # diffusers stores this adaLN's two halves as (scale, shift): swap ΔW's row halves

    def rows(self, out_features: int) -> tuple[int, int]:
        size = out_features // self.parts
        return self.part * size, (self.part + 1) * size


def split_suffix(key: str) -> tuple[str, str] | None:
    """(stem, suffix) for a key with a known factor suffix, else None."""
    for suffix in KNOWN_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], suffix
    return None


def split_prefix(stem: str) -> tuple[Prefix, str]:
    """The naming prefix of a stem and the module name after it (the bare prefix always matches)."""
    for prefix in PREFIXES:
        if stem.startswith(prefix.text):
            return prefix, stem[len(prefix.text) :]
    raise AssertionError("the bare prefix matches every stem")


def foreign_architecture(stems: Iterable[str]) -> tuple[str, list[str]] | None:
    """(family, example stems) if the stems follow another model family's naming."""
    for pattern, family in FOREIGN:
        hits = [s for s in stems if pattern.search(s)]
        if hits:
            return family, hits[:3]
    return None


def _weighted_modules(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if name and isinstance(getattr(m, "weight", None), nn.Parameter)]


def _diffusers_targets(component: str, names: list[str]) -> dict[str, Target]:
    """diffusers module name -> Target, from the official <-> diffusers rules of `loading.keymaps`."""
    if component not in keymaps.RULES:
        return {}
    out: dict[str, Target] = {}
    for mapping in keymaps.to_diffusers(component, [f"{n}.weight" for n in names]).mappings:
        module = mapping.official.removesuffix(".weight")
        parts = len(mapping.diffusers)
        for i, name in enumerate(mapping.diffusers):
            out[name.removesuffix(".weight")] = Target(module, i, parts, swap=mapping.op == keymaps.SWAP)
    return out


@dataclass(frozen=True)
class NameTable:
    """Module name -> Target for one model, dotted and underscored, official and diffusers names."""

    dotted: dict[str, Target]
    underscored: dict[str, Target]

    def lookup(self, name: str, underscored: bool) -> Target | None:
        return (self.underscored if underscored else self.dotted).get(name)


def name_table(component: str, model: nn.Module) -> NameTable:
    names = _weighted_modules(model)
    dotted = {n: Target(n) for n in names}
    for name, target in _diffusers_targets(component, names).items():
        if dotted.setdefault(name, target) != target:
            raise AssertionError(f"official and diffusers names collide at {name}")
    underscored: dict[str, Target] = {}
    for name, target in dotted.items():
        if underscored.setdefault(name.replace(".", "_"), target) != target:
            raise AssertionError(f"underscored names collide at {name}")
    return NameTable(dotted, underscored)

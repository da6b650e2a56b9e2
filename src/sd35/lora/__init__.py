"""LoRA files: format detection, key mapping to sd35 weights, merging and on-the-fly application.

Layers: `file` reads a safetensors LoRA into per-module adapters (`adapters`: LoRA/LoCon, LoHa, LoKr,
full diffs) using the naming rules of `keys`; `resolve` maps them onto loaded networks; `patch` merges or
hooks them (copy or in place with exact restore); `apply` does all of it for model handles. See
docs/lora.md.
"""

from sd35.lora.apply import LoraSpec, apply_loras, apply_to_networks, load_loras, parse_lora_arg
from sd35.lora.errors import LoraArchitectureError, LoraError, LoraKeyError, LoraShapeError
from sd35.lora.file import LoraFile, read_lora
from sd35.lora.patch import MODES, Entry, LoraPatcher, patched_copy, weight_deltas
from sd35.lora.resolve import ResolvedLora, WeightPatch, resolve

__all__ = [
    "MODES",
    "Entry",
    "LoraArchitectureError",
    "LoraError",
    "LoraFile",
    "LoraKeyError",
    "LoraPatcher",
    "LoraShapeError",
    "LoraSpec",
    "ResolvedLora",
    "WeightPatch",
    "apply_loras",
    "apply_to_networks",
    "load_loras",
    "parse_lora_arg",
    "patched_copy",
    "read_lora",
    "resolve",
    "weight_deltas",
]

"""LoRAs on whole model handles: read, map, and apply several files with their strengths.

`apply_loras(diffusion, text, specs)` takes the pipeline's frozen handles (a DiffusionModel-like value
with `.network`, a TextStack-like value with `.encoders.{clip_l, clip_g, t5}`; duck-typed, since `lora` sits
below `pipeline`) and returns new handles through `dataclasses.replace`. strength_model scales the MMDiT
patches, strength_clip the three text encoders' (ComfyUI `LoraLoader`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from sd35.errors import UserInputError
from sd35.lora.file import read_lora
from sd35.lora.patch import Entry, LoraPatcher, Mode, patched_copy
from sd35.lora.resolve import ResolvedLora, resolve

log = logging.getLogger(__name__)

TEXT_SLOTS = {"clip_l": "clip_l", "clip_g": "clip_g", "t5xxl": "t5"}  # component -> TextEncoders field
H = TypeVar("H")
T = TypeVar("T")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: its file and strengths (ComfyUI LoraLoader's strength_model/strength_clip)."""

    path: Path
    strength_model: float = 1.0
    strength_clip: float = 1.0

    def strength(self, component: str) -> float:
        return self.strength_model if component == "mmditx" else self.strength_clip


def parse_lora_arg(text: str) -> LoraSpec:
    """`FILE[:STRENGTH]` (the CLI's --lora) -> LoraSpec with that strength for the model and the text
    encoders. A colon not followed by a number is part of the path (C:\\loras\\x.safetensors)."""
    path, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        with contextlib.suppress(ValueError):
            strength, path = float(tail), head
    if not path:
        raise UserInputError("--lora needs a file: --lora FILE[:STRENGTH]")
    return LoraSpec(Path(path).expanduser(), strength, strength)


def load_loras(specs: Sequence[LoraSpec], networks: Mapping[str, nn.Module | None]) -> list[ResolvedLora]:
    """Read each file and map it onto `networks` (component -> network, None = not loaded); every key
    is checked before any weight changes."""
    resolved = []
    for spec in specs:
        if not spec.path.is_file():
            raise UserInputError(f"LoRA file not found: {spec.path}")
        lora = resolve(read_lora(spec.path), networks)
        log.info("LoRA %s (model %.3g, clip %.3g)", lora.file.describe(), spec.strength_model, spec.strength_clip)
        resolved.append(lora)
    return resolved


def apply_to_networks(
    networks: Mapping[str, nn.Module | None],
    specs: Sequence[LoraSpec],
    *,
    mode: Mode = "auto",
    inplace: bool = False,
) -> dict[str, nn.Module | None]:
    """component -> network with every LoRA of `specs` applied at its strength.

    inplace=False: new networks sharing untouched tensors (inputs unchanged). inplace=True: the given
    networks are patched for good (merged weights keep no backup): for a one-shot run that owns them.
    """
    resolved = load_loras(specs, networks)
    out = dict(networks)
    for component, network in networks.items():
        if network is None:
            continue
        entries = [Entry(r.for_component(component), s.strength(component)) for r, s in zip(resolved, specs)]
        entries = [e for e in entries if e.patches and e.strength != 0]
        if not entries:
            continue
        if inplace:
            LoraPatcher(network, backup=False).apply(entries, mode)
        else:
            out[component] = patched_copy(network, entries, mode)
    return out


def apply_loras(
    diffusion: H | None, text: T | None, specs: Sequence[LoraSpec], *, mode: Mode = "auto", inplace: bool = False
) -> tuple[H | None, T | None]:
    """(diffusion, text) handles with the LoRAs applied; either may be None (LoraLoaderModelOnly)."""
    if not specs:
        return diffusion, text
    encoders: Any = getattr(text, "encoders", None)
    networks: dict[str, nn.Module | None] = {"mmditx": getattr(diffusion, "network", None)}
    for component, slot in TEXT_SLOTS.items():
        networks[component] = getattr(encoders, slot, None) if encoders is not None else None
    patched = apply_to_networks(networks, specs, mode=mode, inplace=inplace)
    if diffusion is not None and patched["mmditx"] is not networks["mmditx"]:
        diffusion = replace(diffusion, network=patched["mmditx"])  # type: ignore[type-var]
    changed = {slot: patched[c] for c, slot in TEXT_SLOTS.items() if patched[c] is not networks[c]}
    if text is not None and changed:
        text = replace(text, encoders=replace(encoders, **changed))  # type: ignore[type-var]
    return diffusion, text

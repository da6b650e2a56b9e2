"""Reading a LoRA file: safetensors only (pickles refused by `loading.safetensors_io`), every key grouped
into one module's factors, factor shapes checked, the naming families reported.

Nothing here knows a model: `sd35.lora.resolve` maps the modules onto loaded networks.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from sd35.loading.safetensors_io import SafetensorsFile
from sd35.lora import keys as K
from sd35.lora.adapters import Adapter, Full, LoHa, LoKr, LowRank
from sd35.lora.errors import LoraArchitectureError, LoraError, LoraKeyError, LoraShapeError

log = logging.getLogger(__name__)

PEFT_METADATA_KEY = "lora_adapter_metadata"  # diffusers `lora_base.LORA_ADAPTER_METADATA_KEY`


@dataclass(frozen=True, eq=False)
class LoraModule:
    """The factors a file holds for one module: a weight update and/or a bias update."""

    stem: str  # the keys' common start, e.g. "lora_unet_joint_blocks_0_x_block_attn_qkv"
    prefix: K.Prefix
    name: str  # module name after the prefix
    weight: Adapter | None
    bias: Full | None
    keys: tuple[str, ...]

    @property
    def component(self) -> str:
        return self.prefix.component


@dataclass(frozen=True, eq=False)
class LoraFile:
    path: Path
    modules: tuple[LoraModule, ...]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def formats(self) -> tuple[str, ...]:
        """Naming families found (kohya, comfyui, diffusers, onetrainer, simpletuner-lycoris, official, bare)."""
        return tuple(sorted({m.prefix.style for m in self.modules}))

    @property
    def kinds(self) -> tuple[str, ...]:
        """Adapter kinds found (lora, locon, loha, lokr, diff)."""
        found = {m.weight.kind for m in self.modules if m.weight is not None}
        return tuple(sorted(found | ({"diff"} if any(m.bias is not None for m in self.modules) else set())))

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(c for c in K.COMPONENTS if any(m.component == c for m in self.modules))

    def describe(self) -> str:
        parts = ", ".join(K.COMPONENT_NAMES[c] for c in self.components)
        return (
            f"{self.path.name}: {'+'.join(self.formats)} {'/'.join(self.kinds)}, {len(self.modules)} modules ({parts})"
        )


def _peft_alpha(metadata: dict[str, Any], component: str, module: str, rank: int) -> float | None:
    """alpha giving PEFT's scale (lora_alpha/r, or /sqrt(r) with rsLoRA) from diffusers' saved LoraConfig."""
    section = K.METADATA_SECTIONS[component]
    alpha = metadata.get(f"{section}.lora_alpha")
    if alpha is None:
        return None
    for pattern, value in (metadata.get(f"{section}.alpha_pattern") or {}).items():
        if re.match(rf"(^|.*\.){pattern}$", module):
            alpha = value
            break
    if metadata.get(f"{section}.use_rslora"):
        return float(alpha) * math.sqrt(rank)  # LowRank.scale = alpha / r
    return float(alpha)


def _lora(path: Path, stem: str, parts: dict[str, Tensor], alpha: float | None) -> LowRank | None:
    for up_s, down_s, mid_s in K.LORA_SUFFIXES:
        if up_s in parts or down_s in parts:
            if up_s not in parts or down_s not in parts:
                have, need = (up_s, down_s) if up_s in parts else (down_s, up_s)
                raise LoraShapeError(path, f"{stem}{have} has no matching {stem}{need} (incomplete LoRA pair)")
            return LowRank(parts[up_s], parts[down_s], alpha, parts.get(mid_s) if mid_s else None)
    return None


def _adapter(path: Path, stem: str, parts: dict[str, Tensor], alpha: float | None) -> Adapter | None:
    candidates: list[Adapter] = []
    if (lora := _lora(path, stem, parts, alpha)) is not None:
        candidates.append(lora)
    if any(s in parts for s in K.LOHA_SUFFIXES):
        try:
            w = [parts[s] for s in K.LOHA_SUFFIXES[:4]]
        except KeyError as exc:
            raise LoraShapeError(path, f"{stem}: LoHa factor {exc.args[0]} is missing") from None
        candidates.append(LoHa(*w, alpha=alpha, t1=parts.get(".hada_t1"), t2=parts.get(".hada_t2")))
    if any(s in parts for s in K.LOKR_SUFFIXES):
        w = [parts.get(s) for s in K.LOKR_SUFFIXES]
        candidates.append(LoKr(*w, alpha=alpha))
    if ".diff" in parts:
        candidates.append(Full(parts[".diff"]))
    if len(candidates) > 1:
        kinds = ", ".join(c.kind for c in candidates)
        raise LoraError(path, f"{stem} holds several adapters for one weight ({kinds})")
    return candidates[0] if candidates else None


def _module(path: Path, stem: str, parts: dict[str, Tensor], peft: dict[str, Any]) -> LoraModule:
    refused = sorted({K.UNSUPPORTED_SUFFIXES[s] for s in parts if s in K.UNSUPPORTED_SUFFIXES})
    if refused:
        raise LoraError(path, f"{stem} uses {', '.join(refused)}, which sd35 does not support")
    prefix, name = K.split_prefix(stem)
    alpha = float(parts[".alpha"].float().reshape(-1)[0]) if ".alpha" in parts else None
    weight = _adapter(path, stem, parts, alpha)
    if isinstance(weight, LowRank) and alpha is None and peft:
        weight = LowRank(weight.up, weight.down, _peft_alpha(peft, prefix.component, name, weight.rank), weight.mid)
    bias = Full(parts[".diff_b"]) if ".diff_b" in parts else None
    if weight is None and bias is None:
        raise LoraError(path, f"{stem} has {', '.join(sorted(parts))} but no weights to apply")
    if weight is not None and (problem := weight.check()) is not None:
        raise LoraShapeError(path, f"{stem}: {problem}")
    return LoraModule(stem, prefix, name, weight, bias, tuple(stem + s for s in sorted(parts)))


def _peft_metadata(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    raw = metadata.get(PEFT_METADATA_KEY)
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("LoRA %s: unreadable %s metadata ignored", path.name, PEFT_METADATA_KEY)
        return {}
    if any(k.endswith(".use_dora") and v for k, v in parsed.items()):
        raise LoraError(path, "is a PEFT DoRA adapter (use_dora), which sd35 does not support")
    return parsed


def read_lora(path: str | Path) -> LoraFile:
    """Read and check a LoRA file. Raises CheckpointError subclasses naming the file and the problem:
    not safetensors / a pickle, another model family, unknown keys, inconsistent factor shapes."""
    path = Path(path)
    with SafetensorsFile(path) as f:
        if len(f) == 0:
            raise LoraError(path, "holds no tensors")
        split = {key: K.split_suffix(key) for key in f.keys()}  # noqa: SIM118 (no __iter__)
        stems = list(dict.fromkeys(s[0] if s else key for key, s in split.items()))
        if (foreign := K.foreign_architecture(stems)) is not None:
            raise LoraArchitectureError(path, *foreign)
        unknown = [key for key, s in split.items() if s is None]
        if unknown:
            raise LoraKeyError(path, unknown, "These keys end in no known LoRA factor name")
        grouped: dict[str, dict[str, Tensor]] = defaultdict(dict)
        for key, (stem, suffix) in split.items():  # type: ignore[misc]
            grouped[stem][suffix] = f.read(key)
        peft = _peft_metadata(path, f.metadata)
        modules = tuple(_module(path, stem, parts, peft) for stem, parts in sorted(grouped.items()))
        return LoraFile(path, modules, dict(f.metadata))

"""Mapping a read LoRA file onto loaded networks: every module to one weight (or a row block of it).

Strict, unlike ComfyUI's "lora key not loaded" warning: a module no naming rule maps to a weight of the
loaded model, or whose ΔW does not fit that weight, is an error listing the keys. Modules for a text
encoder that is not loaded (say T5) are skipped with a warning, as they cannot be checked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from sd35.lora import keys as K
from sd35.lora.adapters import Adapter, fits
from sd35.lora.errors import LoraKeyError, LoraShapeError
from sd35.lora.file import LoraFile, LoraModule

log = logging.getLogger(__name__)

# CLIP-L's text_projection is unused by SD3 (pooled = the unprojected EOS state) and absent from some
# clip_l files; OneTrainer trains it anyway (ComfyUI maps it "to omit the warning").
UNUSED_TARGETS = {("clip_l", "text_projection")}


@dataclass(frozen=True, eq=False)
class WeightPatch:
    """One adapter on one parameter: `param` is "…qkv.weight" or "…qkv.bias"."""

    param: str
    adapter: Adapter
    target: K.Target
    stem: str


@dataclass(frozen=True, eq=False)
class ResolvedLora:
    """A LoRA file mapped onto models: component -> its patches; skipped: component -> module count."""

    file: LoraFile
    patches: dict[str, tuple[WeightPatch, ...]]
    skipped: dict[str, int] = field(default_factory=dict)

    def for_component(self, component: str) -> tuple[WeightPatch, ...]:
        return self.patches.get(component, ())


def _unknown_hint(names: list[str], model: nn.Module) -> str:
    depth = len(getattr(model, "joint_blocks", ()))
    blocks = {int(m.group(1)) for n in names if (m := re.search(r"(?:joint|transformer)_blocks[._](\d+)[._]", n))}
    if depth and blocks and max(blocks) >= depth:
        return (
            f"They name joint block {max(blocks)}, but this MMDiT has {depth} blocks: a LoRA for a deeper "
            "model (SD3.5 Large has 38, SD3/SD3.5 Medium 24)?"
        )
    if any("attn2" in n for n in names):
        with_attn2 = [i for i, b in enumerate(getattr(model, "joint_blocks", ())) if b.x_block.attn2 is not None]
        return f"They target attn2 (x-block self-attention), which this MMDiT has on blocks {with_attn2 or 'none'}"
    return ""


def _patches(module: LoraModule, target: K.Target, model: nn.Module, path) -> list[WeightPatch]:  # noqa: ANN001
    layer = model.get_submodule(target.module)
    out = []
    for kind, adapter in (("weight", module.weight), ("bias", module.bias)):
        if adapter is None:
            continue
        param = getattr(layer, kind, None)
        if param is None:
            raise LoraShapeError(path, f"{module.stem} patches a {kind}, but {target.module} has none")
        rows = target.rows(param.shape[0])
        shape = (rows[1] - rows[0], *param.shape[1:])
        if not fits(adapter.shape(), shape) or (target.swap and shape[0] % 2):
            part = f" (rows {rows[0]}:{rows[1]} of {list(param.shape)})" if target.parts > 1 else ""
            raise LoraShapeError(
                path,
                f"{module.stem}: its {kind} update is {list(adapter.shape())} but {target.module}.{kind} is "
                f"{list(shape)}{part}: a LoRA for a model of another size (SD3.5 Large?)",
            )
        out.append(WeightPatch(f"{target.module}.{kind}", adapter, target, module.stem))
    return out


def resolve(lora: LoraFile, models: Mapping[str, nn.Module | None]) -> ResolvedLora:
    """Map every module of `lora` onto `models` (component -> network or None when not loaded)."""
    tables = {c: K.name_table(c, m) for c, m in models.items() if m is not None}
    patches: dict[str, list[WeightPatch]] = {}
    skipped: dict[str, int] = {}
    unknown: dict[str, list[str]] = {}
    for module in lora.modules:
        component = module.component
        if component not in tables:
            skipped[component] = skipped.get(component, 0) + 1
            continue
        target = tables[component].lookup(module.name, module.prefix.underscored)
        if target is None:
            if (component, module.name) in UNUSED_TARGETS:
                skipped[component] = skipped.get(component, 0) + 1
                continue
            unknown.setdefault(component, []).extend(module.keys)
            continue
        patches.setdefault(component, []).extend(_patches(module, target, models[component], lora.path))
    if unknown:
        component, keys = next(iter(unknown.items()))
        all_keys = [k for ks in unknown.values() for k in ks]
        raise LoraKeyError(lora.path, all_keys, _unknown_hint(keys, models[component]))
    for component, count in skipped.items():
        log.warning(
            "LoRA %s: %d module(s) for %s not applied (%s)",
            lora.path.name,
            count,
            K.COMPONENT_NAMES[component],
            "not loaded" if component not in tables else "a weight SD3 does not use",
        )
    return ResolvedLora(lora, {c: tuple(p) for c, p in patches.items()}, skipped)

"""Applying resolved LoRA patches to a network: merged into the weights, or added on the fly.

- merge: W' = (W.float() + Σ strength·ΔW).to(W.dtype), one write per weight (fast sampling).
- on the fly: W stays untouched; a forward hook adds Σ strength·up·(down·x) (low-rank LoRA on a Linear)
  or x·ΔWᵀ (other adapters, convolutions) to the layer's output. "auto" does this for fp8 weights,
  which a merge would round (ComfyUI's bypass mode, `comfy/weight_adapter/bypass.py`), and merges the rest.

`patched_copy` returns a new network sharing every untouched tensor with its input, which stays as it was
(what node sockets need); applying LoRAs to a patched copy rebuilds from the original with the LoRA lists
joined, so stacking never merges into already-merged weights. `LoraPatcher` patches a network in place and
`restore()` puts the original tensors back bit for bit (ComfyUI `ModelPatcher.patch_model`/`unpatch_model`).
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd35.loading.convert import swap_halves
from sd35.lora.resolve import WeightPatch

log = logging.getLogger(__name__)

Mode = Literal["auto", "merge", "on_the_fly"]
MODES: tuple[str, ...] = ("auto", "merge", "on_the_fly")
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
TERM_NAME = "lora_term"  # child module holding the on-the-fly factors of a layer


@dataclass(frozen=True)
class Entry:
    """The patches one LoRA makes to one network, at one strength."""

    patches: tuple[WeightPatch, ...]
    strength: float


@dataclass(frozen=True, eq=False)
class LoraOrigin:
    """Stored on a patched copy: the network it was made from and every entry applied since."""

    base: nn.Module
    entries: tuple[Entry, ...]


def _placed(patch: WeightPatch, shape: torch.Size, device: torch.device, strength: float) -> tuple[slice, Tensor]:
    """(row slice, strength·ΔW for those rows) in fp32 on `device`, halves swapped where diffusers swaps."""
    start, stop = patch.target.rows(shape[0])
    delta = patch.adapter.delta().reshape(stop - start, *shape[1:]).to(device)
    if patch.target.swap:
        delta = swap_halves(delta)
    return slice(start, stop), delta * strength


def weight_deltas(module: nn.Module, entries: Sequence[Entry]) -> dict[str, Tensor]:
    """parameter name -> Σ strength·ΔW over `entries`, fp32, full parameter shape (strength 0 skipped)."""
    out: dict[str, Tensor] = {}
    for entry in entries:
        if entry.strength == 0:
            continue
        for patch in entry.patches:
            param = module.get_parameter(patch.param)
            total = out.setdefault(patch.param, torch.zeros(param.shape, dtype=torch.float32, device=param.device))
            rows, delta = _placed(patch, param.shape, param.device, entry.strength)
            total[rows] += delta
    return out


class LoraTerm(nn.Module):
    """The on-the-fly addition of one layer: low-rank factors (down [R, in], up [out, R], strengths and
    scales folded into up, R = Σ ranks), a dense ΔW, a bias Δb; non-persistent buffers follow `.to()`."""

    def __init__(
        self, layer: nn.Module, down: Tensor | None, up: Tensor | None, dense: Tensor | None, bias: Tensor | None
    ):
        super().__init__()
        self.conv = isinstance(layer, nn.Conv2d)
        self.conv_args = (layer.stride, layer.padding, layer.dilation, layer.groups) if self.conv else ()
        for name, t in (("down", down), ("up", up), ("dense", dense), ("bias", bias)):
            self.register_buffer(name, t, persistent=False)

    def forward(self, x: Tensor) -> Tensor | float:
        out: Tensor | float = 0.0
        dtype = next(t.dtype for t in (self.down, self.dense, self.bias) if t is not None)
        h = x.to(dtype)
        if self.down is not None and self.up is not None:
            out = F.linear(F.linear(h, self.down), self.up)
        if self.dense is not None:
            out = out + (F.conv2d(h, self.dense, None, *self.conv_args) if self.conv else F.linear(h, self.dense))
        if self.bias is not None:
            out = out + (self.bias.view(-1, 1, 1) if self.conv else self.bias)
        return out


def _add_term(layer: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """Forward hook of an on-the-fly layer: output + its LoraTerm(input)."""
    term = getattr(layer, TERM_NAME)(args[0])
    return output + (term.to(output.dtype) if isinstance(term, Tensor) else term)


def _term_dtype(weight: Tensor) -> torch.dtype:
    return torch.bfloat16 if weight.dtype in FP8 or not weight.dtype.is_floating_point else weight.dtype


def _build_term(layer: nn.Module, patches: list[tuple[WeightPatch, float]]) -> LoraTerm:
    weight = layer.weight
    device, dtype = weight.device, _term_dtype(weight)
    downs, ups = [], []
    dense = bias = None
    for patch, strength in patches:
        factors = patch.adapter.factors() if isinstance(layer, nn.Linear) and patch.param == "weight" else None
        if factors is not None:
            down, up = factors
            start, stop = patch.target.rows(weight.shape[0])
            if patch.target.swap:
                up = swap_halves(up)
            full = torch.zeros(weight.shape[0], up.shape[1])
            full[start:stop] = up * strength
            downs.append(down)
            ups.append(full)
            continue
        param = layer.get_parameter(patch.param)
        rows, delta = _placed(patch, param.shape, torch.device("cpu"), strength)
        if patch.param == "bias":
            bias = torch.zeros(param.shape) if bias is None else bias
            bias[rows] += delta
        else:
            dense = torch.zeros(param.shape) if dense is None else dense
            dense[rows] += delta
    cast = [None if t is None else t.to(device=device, dtype=dtype) for t in (dense, bias)]
    down = torch.cat(downs).to(device=device, dtype=dtype) if downs else None
    up = torch.cat(ups, dim=1).to(device=device, dtype=dtype) if ups else None
    return LoraTerm(layer, down, up, *cast)


def _by_layer(entries: Sequence[Entry]) -> dict[str, list[tuple[WeightPatch, float]]]:
    layers: dict[str, list[tuple[WeightPatch, float]]] = defaultdict(list)
    for entry in entries:
        if entry.strength != 0:
            for patch in entry.patches:
                layers[patch.param.rsplit(".", 1)[0]].append((patch, entry.strength))
    return layers


def _on_the_fly(layer: nn.Module, mode: str) -> bool:
    if mode == "merge" or not isinstance(layer, (nn.Linear, nn.Conv2d)):
        return False
    return mode == "on_the_fly" or layer.weight.dtype in FP8


def _merged(layer: nn.Module, patches: list[tuple[WeightPatch, float]]) -> dict[str, Tensor]:
    """kind ("weight"/"bias") -> merged tensor in the parameter's dtype."""
    deltas = weight_deltas(layer, [Entry((p,), s) for p, s in patches])
    out = {}
    for name, delta in deltas.items():
        param = layer.get_parameter(name)
        out[name] = (param.float() + delta).to(param.dtype)
    return out


def _relative(patches: list[tuple[WeightPatch, float]], layer_name: str) -> list[tuple[WeightPatch, float]]:
    """The patches with parameter names relative to their layer ("weight"/"bias")."""
    return [(replace(p, param=p.param[len(layer_name) + 1 :]), s) for p, s in patches]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown LoRA mode {mode!r}; expected one of {', '.join(MODES)}")


def patched_copy(module: nn.Module, entries: Sequence[Entry], mode: Mode = "auto") -> nn.Module:
    """A copy of `module` with `entries` applied; `module` and its tensors are left untouched.

    Untouched parameters and buffers are shared (no memory); merged weights are new tensors. Given a
    patched copy, the new entries join the ones already applied, rebuilt from the original network.
    """
    _check_mode(mode)
    origin: LoraOrigin | None = getattr(module, "lora_origin", None)
    base, entries = (origin.base, origin.entries + tuple(entries)) if origin else (module, tuple(entries))
    layers = _by_layer(entries)
    if not layers:  # nothing at a non-zero strength: the original network itself
        return base
    shared = {id(t): t for t in (*base.parameters(), *base.buffers())}
    clone = copy.deepcopy(base, memo=shared)
    with torch.no_grad():
        for name, patches in layers.items():
            layer = clone.get_submodule(name)
            patches = _relative(patches, name)
            if _on_the_fly(layer, mode):
                layer.add_module(TERM_NAME, _build_term(layer, patches))
                layer.register_forward_hook(_add_term)
            else:
                for kind, merged in _merged(layer, patches).items():
                    setattr(layer, kind, nn.Parameter(merged, requires_grad=False))
    clone.lora_origin = LoraOrigin(base, entries)
    return clone


class LoraPatcher:
    """In-place patches on one network with exact undo. `backup=False` saves the copy of each merged
    weight (for a network nothing else uses); `restore()` then refuses."""

    def __init__(self, module: nn.Module, *, backup: bool = True) -> None:
        self.module = module
        self.backup = backup
        self._saved: dict[str, Tensor] = {}
        self._hooks: list[tuple[nn.Module, torch.utils.hooks.RemovableHandle]] = []
        self._merged = 0
        self.applied = False

    def apply(self, entries: Sequence[Entry], mode: Mode = "auto") -> LoraPatcher:
        _check_mode(mode)
        if self.applied:
            raise RuntimeError("LoRAs are already applied; restore() first")
        for name, patches in _by_layer(entries).items():
            layer = self.module.get_submodule(name)
            patches = _relative(patches, name)
            if _on_the_fly(layer, mode):
                layer.add_module(TERM_NAME, _build_term(layer, patches))
                self._hooks.append((layer, layer.register_forward_hook(_add_term)))
                continue
            for kind, merged in _merged(layer, patches).items():
                param = layer.get_parameter(kind)
                if self.backup:
                    self._saved[f"{name}.{kind}"] = param.detach().clone()
                _write(param, merged)
                self._merged += 1
        self.applied = True
        return self

    def restore(self) -> None:
        """Put back the original tensors (bit-exact) and remove the on-the-fly hooks."""
        if not self.applied:
            return
        if not self.backup and self._merged:
            raise RuntimeError("this LoraPatcher kept no backup: the original weights cannot be restored")
        for name, saved in self._saved.items():
            _write(self.module.get_parameter(name), saved)
        for layer, handle in self._hooks:
            handle.remove()
            delattr(layer, TERM_NAME)
        self._saved.clear()
        self._hooks.clear()
        self._merged = 0
        self.applied = False

    def __enter__(self) -> LoraPatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _write(param: Tensor, value: Tensor) -> None:
    """param ← value in place (inference tensors can only be written inside inference mode)."""
    context = torch.inference_mode() if param.is_inference() else torch.no_grad()
    with context:
        param.copy_(value)

"""Build a component on the meta device, map file keys to model keys, strict-load, cast to a dtype.

Order (design §6.4): read metadata -> detect config -> build on meta -> plan every model tensor from
file keys and check names and shapes (no data read yet) -> read, dequantize, cast -> load_state_dict
(strict=True, assign=True). Tensors already in the target dtype on CPU stay memory-mapped (zero copy).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sd35.errors import UserInputError
from sd35.loading import convert, keymaps
from sd35.loading.detect import Found, find_component, is_quant_extra
from sd35.loading.errors import LoadError
from sd35.loading.sources import TensorIndex

__all__ = ["LoadError", "build_model", "check_found", "load_component", "load_found"]

log = logging.getLogger(__name__)

COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TRIM_BYTES = 4 * 2**20  # return freed cast temporaries to the OS after tensors at least this large


@dataclass(frozen=True)
class Part:
    """One file tensor feeding a model tensor, with its scaled-fp8 scale tensor if any."""

    key: str
    scale: str | None = None


@dataclass(frozen=True)
class Plan:
    """How to make one model tensor: its file parts and the key-map op combining them."""

    parts: tuple[Part, ...]
    op: str = keymaps.COPY


def build_model(component: str, config, *, device: torch.device | str = "meta", dtype=torch.float32) -> nn.Module:
    """An uninitialised model of `component` for `config` (on the meta device by default)."""
    if component == "mmditx":
        from sd35.models.mmditx import MMDiTX as cls
    elif component == "vae":
        from sd35.models.autoencoder import AutoencoderKL as cls
    elif component in ("clip_l", "clip_g"):
        from sd35.models.clip import CLIPTextModel as cls
    elif component == "t5xxl":
        from sd35.models.t5 import T5Encoder as cls
    else:
        raise UserInputError(f"unknown component {component!r}; expected one of {', '.join(keymaps.COMPONENTS)}")
    return cls(config, device=device, dtype=dtype)


def _file_tensors(found: Found) -> tuple[dict[str, str], dict[str, str]]:
    """({local name: file key} of parameter tensors, {local weight name: file key of its scale})."""
    prefix = found.info.prefix
    params, scales = {}, {}
    for key in found.keys:
        local = key[len(prefix) :]
        if local.endswith(keymaps.WEIGHT_SCALE_SUFFIXES):
            scales[local.rsplit(".", 1)[0] + ".weight"] = key
        elif not is_quant_extra(local):
            params[local] = key
    return params, scales


def _plan(found: Found) -> tuple[dict[str, Plan], list[str], list[str]]:
    """({official key: Plan}, unexpected file names, missing file names) for a component's tensors."""
    component = found.info.component
    params, scales = _file_tensors(found)
    ignored = keymaps.IGNORED_KEYS.get(component, set())
    if component == "t5xxl" and "encoder.embed_tokens.weight" not in params and "shared.weight" in params:
        params["encoder.embed_tokens.weight"] = params.pop("shared.weight")  # HF ties the two tables
    for name in ignored & params.keys():
        log.debug("%s: ignoring %s", found.index.origin, name)
        del params[name]
    part = {name: Part(key, scales.get(name)) for name, key in params.items()}
    if found.info.layout == "official":
        return {name: Plan((p,)) for name, p in part.items()}, [], []
    keymap = keymaps.from_diffusers(component, params)
    plans, missing = {}, []
    for m in keymap.mappings:
        absent = [d for d in m.diffusers if d not in part]
        missing += absent
        if not absent:
            plans[m.official] = Plan(tuple(part[d] for d in m.diffusers), m.op)
    return plans, list(keymap.unmatched), missing


def _planned_shape(index: TensorIndex, plan: Plan) -> tuple[int, ...]:
    shapes = [index.shape(p.key) for p in plan.parts]
    return keymaps.mapped_shape(plan.op, shapes, to_official=True) if plan.op != keymaps.COPY else shapes[0]


def _check(found: Found, model: nn.Module) -> dict[str, Plan]:
    """Plans for every model tensor; LoadError naming missing, unexpected and mis-shaped keys otherwise."""
    plans, unexpected, missing_parts = _plan(found)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(plans))
    if found.info.layout == "diffusers" and missing:  # name them as the file would
        names = {m.official: m.diffusers for m in keymaps.to_diffusers(found.info.component, missing).mappings}
        missing = sorted({d for k in missing for d in names.get(k, (k,))})
    unexpected = sorted(unexpected + [k for k in plans if k not in expected])
    mismatched = []
    for key, plan in plans.items():
        if key in expected:
            shape = _planned_shape(found.index, plan)
            if shape != tuple(expected[key].shape):
                mismatched.append((key, shape, tuple(expected[key].shape)))
    missing = sorted(set(missing) | set(missing_parts))
    if missing or unexpected or mismatched:
        raise LoadError(
            found.info.component, found.index.origin, missing=missing, unexpected=unexpected, mismatched=mismatched
        )
    return plans


def _fetch(
    index: TensorIndex, part: Part, target: torch.Tensor, device: torch.device, zero_copy: bool, stored: bool = False
):
    """One file tensor in the target tensor's dtype on `device` (dequantized when it has a scale); with
    `stored`, in the file's own dtype when that is fp32/fp16/bf16 or unscaled float8_e4m3fn (a memory map when
    zero_copy)."""
    meta = index.meta(part.key)
    dtype = target.dtype if target.is_floating_point() else meta.torch_dtype
    if stored and part.scale is None and meta.torch_dtype in (*COMPUTE_DTYPES, torch.float8_e4m3fn):
        dtype = meta.torch_dtype
    if part.scale is not None:
        return convert.dequantize(index.read(part.key, torch.float32), index.read(part.scale), dtype).to(device)
    if zero_copy and meta.torch_dtype == dtype and device.type == "cpu":
        return index.tensor(part.key)
    return index.read(part.key, dtype).to(device)


def _heap_trimmer():
    """glibc's malloc_trim, or None elsewhere. Casting a tensor leaves freed temporaries in malloc's free
    lists; handing them back to the OS after each large cast keeps the peak near the loaded size (about
    300 MB less on a 1.5 GB checkpoint, see benchmarks/results/loading.md)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def check_found(found: Found) -> None:
    """Check names and shapes of a found component against its model, reading no tensor data."""
    _check(found, build_model(found.info.component, found.info.config))


def load_found(
    found: Found,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    mmap: bool = True,
    keep_stored: Callable[[str], bool] | None = None,
) -> nn.Module:
    """Load an already located component (see `load_component`).

    `keep_stored(key)` True: that tensor keeps the file's dtype (fp32/fp16/bf16 or unscaled fp8 e4m3fn; a
    zero-copy memory map on the CPU) instead of being cast to `dtype`, for a caller that converts it next
    (e.g. quantizes it, or wraps fp8 weights in `Fp8Linear`).
    """
    if dtype not in COMPUTE_DTYPES:
        raise UserInputError(f"cannot compute in {dtype}; choose float32, float16 or bfloat16")
    device = torch.device(device)
    model = build_model(found.info.component, found.info.config, dtype=dtype)
    plans = _check(found, model)
    expected = model.state_dict()
    state = {}
    trim = _heap_trimmer() if device.type == "cpu" else None
    for key, plan in plans.items():
        single = len(plan.parts) == 1
        stored = keep_stored is not None and keep_stored(key)
        parts = [_fetch(found.index, p, expected[key], device, mmap and single, stored) for p in plan.parts]
        state[key] = convert.to_official(plan.op, parts) if plan.op != keymaps.COPY else parts[0]
        copied = not (mmap and single and found.index.meta(plan.parts[0].key).torch_dtype == state[key].dtype)
        if trim is not None and copied and state[key].nbytes >= TRIM_BYTES:
            trim(0)
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a model registering non-persistent buffers would need them rebuilt here
        raise RuntimeError(f"{found.info.component}: tensors left uninitialised after loading: {left[:5]}")
    log.debug("loaded %s from %s (%s -> %s)", found.info.component, found.index.origin, found.info.stored_dtype, dtype)
    return model.eval().requires_grad_(False)


def load_component(
    path: str | Path,
    component: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    mmap: bool = True,
    keep_stored: Callable[[str], bool] | None = None,
) -> nn.Module:
    """Load `component` ("mmditx" | "vae" | "clip_l" | "clip_g" | "t5xxl") from a file or folder.

    Weights are cast (fp8 ones dequantized) to `dtype` and placed on `device`; the module is in eval
    mode without gradients. With `mmap` (default), CPU tensors already stored in `dtype` stay backed by a
    private memory map of the file (zero copy, read on first use): replace such a file atomically, never
    rewrite it in place while the model is in use. Raises WrongComponentError if `path` does not hold the
    component, LoadError if its tensors do not fit the detected config, CheckpointFormatError /
    UnsafeCheckpointError for unreadable or pickled files. `keep_stored`: see `load_found`.
    """
    if component not in keymaps.COMPONENTS:
        raise UserInputError(f"unknown component {component!r}; expected one of {', '.join(keymaps.COMPONENTS)}")
    found = find_component(path, component)
    return load_found(found, dtype=dtype, device=device, mmap=mmap, keep_stored=keep_stored)

"""What a file or folder holds: components, their configs (from shapes), stored dtype and size.

Understands the official single file (`model.diffusion_model.*`, `first_stage_model.*`, optional
`text_encoders.{clip_l,clip_g,t5xxl}.transformer.*`), bare component files (no prefix), diffusers
pipeline folders (`transformer/`, `vae/`, `text_encoder{,_2,_3}/`, single or sharded) and folders of
model files. Only headers are read.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from sd35.loading import keymaps
from sd35.loading.errors import WrongComponentError
from sd35.loading.safetensors_io import DTYPES, FLOAT8, PICKLE_SUFFIXES
from sd35.loading.shapes import (
    ShapeError,
    Shapes,
    clip_config_from_shapes,
    clip_role_from_shapes,
    mmditx_config_from_shapes,
    t5_config_from_shapes,
    vae_config_from_shapes,
)
from sd35.loading.sources import TensorIndex, open_index
from sd35.models.configs import AutoencoderConfig, CLIPTextConfig, MMDiTXConfig, T5Config

log = logging.getLogger(__name__)

Config = MMDiTXConfig | AutoencoderConfig | CLIPTextConfig | T5Config
FOLDER_ROLES = {folder: comp for comp, folder in keymaps.DIFFUSERS_FOLDERS.items()}
_NAME_ROLE = re.compile(r"clip[_-]?(vit[_-]?)?([lg])(\b|_|-|\d)", re.IGNORECASE)


@dataclass(frozen=True)
class ComponentInfo:
    """One model component found in a file or folder.

    component: "mmditx" | "vae" | "clip_l" | "clip_g" | "t5xxl"; path: what to pass to `load_component`
    (the file, or the component folder of a diffusers folder); sources: the safetensors files read;
    prefix: the file-key prefix stripped
    to get model keys ("" for bare files); layout: "official" or "diffusers"; stored_dtype: the torch
    name of the dtype holding most bytes; quantization: "scaled_fp8" for ComfyUI scaled fp8 files;
    detected_by: how the component was recognised (CLIP-L vs -G needs this).
    """

    component: str
    config: Config
    path: Path
    sources: tuple[Path, ...]
    prefix: str
    layout: str
    stored_dtype: str
    n_params: int
    n_bytes: int
    quantization: str | None = None
    detected_by: str = "keys"


@dataclass(frozen=True, eq=False)
class Found:
    """A component plus what a loader needs: the tensor index and the file keys that belong to it."""

    info: ComponentInfo
    index: TensorIndex
    keys: tuple[str, ...]  # file keys (with prefix), scale tensors included
    role_certain: bool = True


def is_quant_extra(key: str) -> bool:
    """Scale tensors and markers of scaled-fp8 files (not model parameters)."""
    return (
        key == keymaps.SCALED_FP8_MARKER
        or key.endswith("." + keymaps.SCALED_FP8_MARKER)
        or key.endswith(keymaps.WEIGHT_SCALE_SUFFIXES)
        or key.endswith(keymaps.IGNORED_SCALE_SUFFIXES)
    )


def official_shapes(
    index: TensorIndex, keys: tuple[str, ...], prefix: str, layout: str, component: str
) -> dict[str, tuple[int, ...]]:
    """{official key: shape} of a component's tensors, scale tensors left out (diffusers names mapped)."""
    local = {k[len(prefix) :]: index.shape(k) for k in keys}
    local = {k: s for k, s in local.items() if not is_quant_extra(k)}
    if layout == "official":
        return local
    keymap = keymaps.from_diffusers(component, local)
    out = {}
    for m in keymap.mappings:
        if all(d in local for d in m.diffusers):
            out[m.official] = keymaps.mapped_shape(m.op, [local[d] for d in m.diffusers], to_official=True)
    return out


def _bare_kind(keys: set[str]) -> tuple[str, str] | None:
    """(component or "clip", layout) of un-prefixed keys, from signature keys."""
    starts = {k.split(".", 1)[0] for k in keys}
    if "joint_blocks" in starts or "x_embedder.proj.weight" in keys:
        return "mmditx", "official"
    if "transformer_blocks" in starts and "pos_embed.proj.weight" in keys:
        return "mmditx", "diffusers"
    if "decoder.conv_in.weight" in keys or "encoder.conv_in.weight" in keys:
        diffusers = any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys)
        return "vae", "diffusers" if diffusers else "official"
    if "text_model.embeddings.token_embedding.weight" in keys:
        return "clip", "official"
    if any(k.startswith("encoder.block.") for k in keys) or "encoder.embed_tokens.weight" in keys:
        return "t5xxl", "official"
    return None


def _foreign_model(keys: set[str]) -> str | None:
    """A name for well-known non-SD3 layouts, to make 'wrong model' errors useful."""
    joined = " ".join(sorted(keys)[:2000])
    if "input_blocks.0.0.weight" in joined:
        return "a UNet diffusion model (SD1.x/SD2/SDXL), not an SD3 MMDiT"
    if "double_blocks.0." in joined:
        return "a Flux model, not SD3"
    return None


def _summary(index: TensorIndex, keys: tuple[str, ...]) -> tuple[str, int, int, str | None]:
    """(stored dtype, parameters, bytes, quantization) of a component's tensors."""
    by_dtype: Counter[str] = Counter()
    n_params = n_bytes = 0
    scaled = False
    for k in keys:
        meta = index.meta(k)
        n_bytes += meta.nbytes
        if is_quant_extra(k):
            scaled = scaled or k.endswith((*keymaps.WEIGHT_SCALE_SUFFIXES, keymaps.SCALED_FP8_MARKER))
            continue
        n_params += meta.numel
        by_dtype[meta.dtype] += meta.nbytes
    quantization = "scaled_fp8" if scaled and any(d in FLOAT8 for d in by_dtype) else None
    if quantization:  # name the fp8 format even where unquantized tables hold more bytes
        by_dtype = Counter({d: n for d, n in by_dtype.items() if d in FLOAT8})
    dominant = by_dtype.most_common(1)[0][0] if by_dtype else "F32"
    return str(DTYPES[dominant][1]).removeprefix("torch."), n_params, n_bytes, quantization


def _clip_role(index: TensorIndex, shapes: Shapes, hint: tuple[str, str] | None) -> tuple[str, str, bool]:
    """(role, how, certain) for a CLIP text encoder: prefix/folder > width > file name > guess."""
    if hint:
        return hint[0], hint[1], True
    by_width = clip_role_from_shapes(shapes)
    if by_width:
        return by_width, "width", True
    for path in index.paths:
        m = _NAME_ROLE.search(path.name)
        if m:
            return f"clip_{m.group(2).lower()}", "file name", False
    # no real width and no name: a projection-less CLIP can only be CLIP-L
    return "clip_l", "guess (no text_projection)" if "text_projection.weight" not in shapes else "guess", False


def _make(
    index: TensorIndex, comp: str, keys: list[str], prefix: str, layout: str, hint: tuple[str, str] | None = None
) -> Found:
    """Build a Found for keys already known to form one component; ShapeError -> WrongComponentError.

    `hint`: (role, reason) when a prefix or a diffusers folder name fixes the CLIP role.
    """
    shapes = official_shapes(index, tuple(keys), prefix, layout, comp)
    detected_by, certain = "keys", True
    try:
        if comp == "mmditx":
            config: Config = mmditx_config_from_shapes(shapes)
        elif comp == "vae":
            config = vae_config_from_shapes(shapes)
        elif comp == "t5xxl":
            config = t5_config_from_shapes(shapes)
        else:
            comp, detected_by, certain = _clip_role(index, shapes, hint)
            config = clip_config_from_shapes(shapes, comp)
    except ShapeError as exc:
        where = f" (keys {prefix}*)" if prefix else ""
        raise WrongComponentError(index.origin, f"looks like {comp}{where} but {exc}") from None
    dtype, n_params, n_bytes, quant = _summary(index, keys)
    info = ComponentInfo(
        comp, config, index.origin, index.paths, prefix, layout, dtype, n_params, n_bytes, quant, detected_by
    )
    return Found(info, index, tuple(keys), certain)


def scan_index(index: TensorIndex, folder: str | None = None) -> list[Found]:
    """Components of one tensor index (a file, or a component folder named `folder` such as
    "text_encoder_2", whose name fixes the role and marks the diffusers layout)."""
    keys = index.keys()
    found: list[Found] = []
    claimed: set[str] = set()
    for comp, prefix in keymaps.OFFICIAL_PREFIXES.items():
        group = [k for k in keys if k.startswith(prefix)]
        if not group:
            continue
        claimed.update(group)
        local = {k[len(prefix) :] for k in group}
        kind = _bare_kind(local)
        if kind is None or (kind[0] != comp and not (comp.startswith("clip") and kind[0] == "clip")):
            what = _foreign_model(local) or "not a recognisable SD3 component"
            raise WrongComponentError(index.origin, f"the keys under {prefix!r} are {what} (expected {comp})")
        hint = (comp, f"prefix {prefix}") if comp.startswith("clip") else None
        found.append(_make(index, comp, group, prefix, kind[1], hint))
    rest = [k for k in keys if k not in claimed]
    if rest and not found:
        kind = _bare_kind(set(rest))
        if kind is None:
            what = _foreign_model(set(rest))
            first = ", ".join(sorted(rest)[:3])
            message = f"holds {what}" if what else f"does not look like any SD3 model component (first keys: {first})"
            raise WrongComponentError(index.origin, message)
        role = FOLDER_ROLES.get(folder or "")
        hint = (role, f"folder {folder}/") if role in ("clip_l", "clip_g") else None
        found.append(_make(index, kind[0], rest, "", "diffusers" if role else kind[1], hint))
    elif rest:
        log.info("%s: %d keys outside the known prefixes are ignored", index.origin, len(rest))
    return found


def _is_component_folder(path: Path) -> bool:
    return (path / "config.json").is_file() or any(path.glob("*.safetensors.index.json"))


def scan(path: str | Path) -> list[Found]:
    """Every component under `path`: a file, a component folder, a diffusers folder or a models folder."""
    path = Path(path)
    if not path.is_dir():
        return scan_index(open_index(path))
    subfolders = [path / f for f in keymaps.DIFFUSERS_FOLDERS.values() if (path / f).is_dir()]
    if (path / "model_index.json").is_file() or subfolders:
        out = []
        for folder in subfolders:
            out += scan_index(open_index(folder), folder.name)
        return out
    if _is_component_folder(path):
        return scan_index(open_index(path), path.name)
    out = []
    for child in sorted(path.iterdir()):
        if child.suffix == ".safetensors" or (child.is_dir() and (child / "model_index.json").is_file()):
            out += scan(child)
        elif child.suffix.lower() in PICKLE_SUFFIXES:
            log.warning("%s: skipped, a pickle checkpoint (sd35 reads .safetensors only)", child)
    if not out:
        raise WrongComponentError(path, "holds no .safetensors model files")
    return out


def detect_components(path: str | Path) -> list[ComponentInfo]:
    """What `path` holds, from headers only (see module docstring for the layouts understood)."""
    return [f.info for f in scan(path)]


def find_component(path: str | Path, component: str) -> Found:
    """The `component` stored under `path`; a CLIP file whose role is not certain takes the asked role."""
    found = scan(path)
    for f in found:
        if f.info.component == component:
            return f
    if component in ("clip_l", "clip_g"):
        for f in found:
            if f.info.component in ("clip_l", "clip_g") and not f.role_certain:
                return _as_role(f, component)
    held = ", ".join(f.info.component for f in found) or "nothing usable"
    separate = "SD3.5 text encoders are separate files: clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors."
    advice = {
        "clip_l": separate,
        "clip_g": separate,
        "t5xxl": separate,
        "mmditx": "The diffusion model is in sd3.5_medium.safetensors (keys model.diffusion_model.*).",
        "vae": "The VAE is inside sd3.5_medium.safetensors (keys first_stage_model.*) or a separate VAE file.",
    }.get(component, "")
    raise WrongComponentError(path, f"holds no {component} (it holds: {held}). {advice}".rstrip())


def _as_role(f: Found, role: str) -> Found:
    shapes = official_shapes(f.index, f.keys, f.info.prefix, f.info.layout, role)
    config = clip_config_from_shapes(shapes, role)
    info = replace(f.info, component=role, config=config, detected_by="requested role")
    return Found(info, f.index, f.keys, False)


def detect_component(path: str | Path, component: str) -> ComponentInfo:
    """The ComponentInfo `load_component(path, component)` would use (a CLIP file of uncertain role gets the
    asked role and its config); raises WrongComponentError if `path` does not hold `component`."""
    return find_component(path, component).info

"""Where model files, inputs and outputs live: ComfyUI's `models/` folder layout, resolved at request time.

A *models root* holds ComfyUI's sub-folders (`checkpoints/`, `text_encoders/` and its legacy name `clip/`,
`vae/`, `diffusion_models/` and its legacy name `unet/`, `loras/`, ...). A root with none of them (a "flat"
folder such as the one `sd35 make-tiny` writes) serves every kind. Roots come, in this order of precedence,
from `--models DIR` (repeatable), `$SD35_MODELS` (os.pathsep-separated), the config file's `models`, and
an existing ComfyUI install (`--comfyui DIR`, `$SD35_COMFYUI`, config `comfyui`), whose `models/` is added
after them. The config file is TOML: `$SD35_CONFIG`, else `$XDG_CONFIG_HOME/sd35/config.toml`
(`~/.config/sd35/config.toml`). Replaces ComfyUI's `folder_paths` module globals with one object.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd35.errors import UserInputError

# kind -> sub-folders searched, in ComfyUI's order (`folder_paths.py` folder_names_and_paths)
MODEL_FOLDERS: Mapping[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "text_encoders": ("text_encoders", "clip"),
    "vae": ("vae",),
    "diffusion_models": ("diffusion_models", "unet"),
    "loras": ("loras",),
    "vae_approx": ("vae_approx",),
    "embeddings": ("embeddings",),
}
# sd35 reads safetensors only (pickled .ckpt/.pt files are refused by the loader, so they are not offered)
MODEL_EXTENSIONS = (".safetensors", ".sft")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ENV_MODELS, ENV_COMFYUI, ENV_CONFIG = "SD35_MODELS", "SD35_COMFYUI", "SD35_CONFIG"


def _is_flat(root: Path) -> bool:
    return not any((root / sub).is_dir() for subs in MODEL_FOLDERS.values() for sub in subs)


def _walk(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Files under `folder` (recursively, following links) as '/'-separated relative names."""
    names = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        for name in filenames:
            if name.lower().endswith(extensions) and not name.startswith("."):
                names.append((rel / name).as_posix())
    return names


def contained(base: Path, name: str) -> Path | None:
    """base/name if it stays inside `base` lexically (no absolute names, no '..' escapes), else None.
    Symbolic links inside `base` are followed wherever they point, as ComfyUI does for model folders."""
    if not name or Path(name).is_absolute() or "\\" in name:
        return None
    root = os.path.abspath(base)
    target = os.path.abspath(os.path.join(root, name))
    if os.path.commonpath((root, target)) != root or target == root:
        return None
    return Path(target)


@dataclass(frozen=True)
class ModelFolders:
    """The model roots, and any extra folders per kind (config `[folders]`)."""

    roots: tuple[Path, ...] = ()
    extra: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)

    def folders(self, kind: str) -> list[Path]:
        """Existing folders searched for `kind` (e.g. "checkpoints"), in search order."""
        if kind not in MODEL_FOLDERS:
            raise ValueError(f"unknown model folder kind {kind!r}")
        out: list[Path] = []
        for root in self.roots:
            if _is_flat(root):
                out.append(root)
            else:
                out += [root / sub for sub in MODEL_FOLDERS[kind]]
        out += list(self.extra.get(kind, ()))
        return [p for p in dict.fromkeys(out) if p.is_dir()]

    def describe(self, kind: str) -> str:
        """'checkpoints/ (looked in /a/checkpoints, /b)' for error messages."""
        searched = [str(p) for p in self.folders(kind)]
        if not self.roots and not self.extra.get(kind):
            where = "no models folder is set: pass --models DIR, set $SD35_MODELS or a config file"
        elif searched:
            where = "looked in " + ", ".join(searched)
        else:
            subs = "/, ".join(MODEL_FOLDERS[kind])
            where = f"none of {subs}/ exists under " + ", ".join(str(r) for r in self.roots)
        return f"{MODEL_FOLDERS[kind][0]}/ ({where})"

    def list(self, kind: str) -> list[str]:
        """File names offered for `kind`, as ComfyUI lists them: relative, '/'-separated, sorted, unique."""
        names: dict[str, None] = {}
        for folder in self.folders(kind):
            names.update(dict.fromkeys(_walk(folder, MODEL_EXTENSIONS)))
        return sorted(names)

    def resolve(self, kind: str, name: str) -> Path:
        """The file `name` of `kind` (first folder that has it); UserInputError naming the folders if none."""
        for folder in self.folders(kind):
            path = contained(folder, name)
            if path is not None and path.is_file():
                return path
        raise UserInputError(f"model file {name!r} not found in {self.describe(kind)}")


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sd35" / "config.toml"


def read_config(path: Path) -> dict[str, Any]:
    """The TOML settings file (empty when it does not exist). Keys: models (str or list), comfyui,
    output_dir, input_dir, and a [folders] table of kind -> extra folder(s)."""
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise UserInputError(f"reading {path} needs Python 3.11+ (tomllib); use --models or $SD35_MODELS") from None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"config file {path} is not valid TOML: {exc}") from None


def _paths(value: Any, what: str) -> list[Path]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise UserInputError(f"{what} must be a folder or a list of folders")
    return [Path(v).expanduser() for v in items if v]


@dataclass(frozen=True)
class Locations:
    """Everything the nodes need to find files: model folders plus the input folder (and where the
    settings came from, for messages)."""

    models: ModelFolders
    input_dir: Path | None = None
    output_dir: Path | None = None
    sources: tuple[str, ...] = ()


def resolve_locations(
    models: Sequence[str | Path] = (),
    comfyui: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Locations:
    """Model roots from flag > $SD35_MODELS > config `models`, then the ComfyUI install's models/ folder
    (flag > $SD35_COMFYUI > config `comfyui`). A ComfyUI install also gives the default input folder."""
    env = os.environ if env is None else env
    config = read_config(config_path(env)) if config is None else config
    sources: list[str] = []
    roots = [Path(m).expanduser() for m in models]
    if roots:
        sources.append("--models")
    elif env.get(ENV_MODELS):
        roots = [Path(p).expanduser() for p in env[ENV_MODELS].split(os.pathsep) if p]
        sources.append(f"${ENV_MODELS}")
    else:
        roots = _paths(config.get("models"), "config 'models'")
        if roots:
            sources.append("config file")
    comfy = comfyui or env.get(ENV_COMFYUI) or config.get("comfyui")
    input_dir = _paths(config.get("input_dir"), "config 'input_dir'")
    output_dir = _paths(config.get("output_dir"), "config 'output_dir'")
    if comfy:
        comfy_dir = Path(comfy).expanduser()
        if not (comfy_dir / "models").is_dir():
            raise UserInputError(f"{comfy_dir} does not look like a ComfyUI install (it has no models/ folder)")
        roots.append(comfy_dir / "models")
        sources.append("ComfyUI install")
        if not input_dir:
            input_dir = [comfy_dir / "input"]
    for root in roots:
        if not root.is_dir():
            raise UserInputError(f"models folder not found: {root}")
    extra = {
        kind: tuple(_paths(value, f"config folders.{kind}"))
        for kind, value in dict(config.get("folders") or {}).items()
        if kind in MODEL_FOLDERS
    }
    return Locations(
        models=ModelFolders(tuple(roots), extra),
        input_dir=input_dir[0] if input_dir else None,
        output_dir=output_dir[0] if output_dir else None,
        sources=tuple(sources),
    )


def list_images(folder: Path | None) -> list[str]:
    """Image files directly in `folder` (LoadImage's choices; ComfyUI lists the input folder's top level)."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

"""Services: what the nodes need from the outside world, built once by the CLI or server and injected.

It replaces ComfyUI's `folder_paths` and `model_management` globals: model folders (listed when a choice
list is needed, so new files show up without a restart), the input/output/temp folders, the device
policy, and a store of loaded model components shared by every node and every run.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sd35.errors import UserInputError
from sd35.nodes.paths import Locations, ModelFolders, contained, list_images
from sd35.runtime.devices import DevicePolicy
from sd35.text.encode import ConditioningCache

log = logging.getLogger(__name__)

FOLDER_TYPES = ("input", "output", "temp")  # ComfyUI's "type" of a file in a UI dict / annotated name


def file_key(path: Path) -> tuple[str, int, int]:
    """(resolved path, mtime_ns, size): changes when the file is replaced or rewritten."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


class ModelStore:
    """Loaded components keyed by (file key, what, dtype), so two nodes or two runs naming the same file
    share one module. Thread-safe; `max_entries` bounds it (least recently used go first); `clear()`
    frees everything (the server's POST /free)."""

    def __init__(self, max_entries: int = 16) -> None:
        self.max_entries = max_entries
        self.loads = 0
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, path: Path, what: str, dtype: torch.dtype, load: Callable[[], Any]) -> Any:
        """The cached value for (path, what, dtype), calling `load()` on a miss."""
        key = (*file_key(path), what, str(dtype))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            value = load()
            self.loads += 1
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass
class Services:
    """Injected into `build_registry`. `output_dir` receives SaveImage files, `temp_dir` PreviewImage files
    (default output_dir/temp), `input_dir` holds LoadImage's images and uploads (None: LoadImage offers
    nothing)."""

    models: ModelFolders
    output_dir: Path
    temp_dir: Path | None = None
    input_dir: Path | None = None
    policy: DevicePolicy = field(default_factory=DevicePolicy)
    store: ModelStore = field(default_factory=ModelStore)
    conditioning_cache: ConditioningCache = field(default_factory=ConditioningCache)
    write_metadata: bool = True  # PNG prompt/workflow chunks (ComfyUI --disable-metadata turns them off)
    save_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.temp_dir = Path(self.temp_dir) if self.temp_dir is not None else self.output_dir / "temp"
        self.input_dir = Path(self.input_dir) if self.input_dir is not None else None

    @classmethod
    def create(
        cls, locations: Locations, output_dir: Path, *, policy: DevicePolicy | None = None, **kw: Any
    ) -> Services:
        input_dir = kw.pop("input_dir", None) or locations.input_dir
        return cls(locations.models, output_dir, input_dir=input_dir, policy=policy or DevicePolicy(), **kw)

    # --- model files -------------------------------------------------------------------------------
    def model_choices(self, kind: str) -> Callable[[], list[str]]:
        """A choices_fn for a COMBO input listing `kind`'s files when called."""
        return lambda: self.models.list(kind)

    def model_path(self, kind: str, name: str) -> Path:
        return self.models.resolve(kind, name)

    # --- input / output / temp ---------------------------------------------------------------------
    def folder(self, folder_type: str) -> Path:
        if folder_type == "output":
            return self.output_dir
        if folder_type == "temp":
            assert self.temp_dir is not None
            return self.temp_dir
        if folder_type == "input":
            if self.input_dir is None:
                raise UserInputError("no input folder is set (pass --input-dir DIR)")
            return self.input_dir
        raise UserInputError(f"unknown folder type {folder_type!r}; expected one of {', '.join(FOLDER_TYPES)}")

    def input_images(self) -> list[str]:
        return list_images(self.input_dir)

    def annotated_path(self, name: str, default: str = "input") -> Path:
        """ComfyUI's annotated file name: 'a.png' (the default folder), 'a.png [output]', 'sub/a.png [temp]';
        UserInputError if it leaves its folder or does not exist."""
        folder_type = default
        for candidate in FOLDER_TYPES:
            suffix = f" [{candidate}]"
            if name.endswith(suffix):
                name, folder_type = name[: -len(suffix)], candidate
                break
        base = self.folder(folder_type)
        path = contained(base, name)
        if path is None:
            raise UserInputError(f"image name {name!r} leaves the {folder_type} folder")
        if not path.is_file():
            raise UserInputError(f"image {name!r} not found in the {folder_type} folder ({base})")
        return path

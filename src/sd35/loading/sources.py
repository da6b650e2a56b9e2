"""Where tensors come from: one safetensors file, a sharded set with an index json, or a folder.

A `TensorIndex` maps every key to the file that holds it, from headers only. Folder rules follow
diffusers/transformers: `<name>.safetensors.index.json` with a `weight_map` {key: shard file}, else the
`*.safetensors` files of the folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from sd35.loading.errors import CheckpointFormatError, WrongComponentError
from sd35.loading.safetensors_io import SafetensorsFile, TensorMeta, refuse_pickle


class TensorIndex:
    """Keys of one or more safetensors files (no key may appear twice), read lazily."""

    def __init__(self, files: Iterable[SafetensorsFile], origin: Path) -> None:
        self.origin = origin  # the path the user named (file, index json or folder)
        self.files = tuple(files)
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for key in f.keys():  # noqa: SIM118 (SafetensorsFile is not a mapping)
                if key in self._where:
                    raise CheckpointFormatError(
                        origin, f"key {key!r} is stored twice ({self._where[key].path.name}, {f.path.name})"
                    )
                self._where[key] = f

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def keys(self) -> list[str]:
        return list(self._where)

    def meta(self, key: str) -> TensorMeta:
        return self._where[key].meta(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(key)

    def file_of(self, key: str) -> SafetensorsFile:
        return self._where[key]

    def tensor(self, key: str) -> torch.Tensor:
        return self._where[key].tensor(key)

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self._where[key].read(key, dtype)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files)


def _from_index_json(index_path: Path, origin: Path | None = None) -> TensorIndex:
    try:
        data = json.loads(index_path.read_text())
        weight_map = data["weight_map"]
        assert isinstance(weight_map, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise CheckpointFormatError(index_path, "is not a valid shard index (no 'weight_map')") from None
    folder = index_path.parent
    files = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = folder / shard
        if not shard_path.is_file():
            raise CheckpointFormatError(index_path, f"names shard {shard!r}, which does not exist")
        files[shard] = SafetensorsFile(shard_path)
    for key, shard in weight_map.items():
        if key not in files[shard]:
            raise CheckpointFormatError(index_path, f"says {key!r} is in {shard}, but that shard lacks it")
    return TensorIndex(files.values(), origin or index_path)


def open_index(path: str | Path) -> TensorIndex:
    """A TensorIndex for a .safetensors file, a shard index json, or a folder holding either."""
    path = Path(path)
    if not path.exists():
        raise CheckpointFormatError(path, "does not exist")
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) == 1:
            return _from_index_json(indexes[0], path)
        shards = sorted(path.glob("*.safetensors"))
        if indexes or not shards:
            found = ", ".join(p.name for p in sorted(path.iterdir())[:8]) or "nothing"
            raise WrongComponentError(path, f"holds no single safetensors model (found: {found})")
        return TensorIndex((SafetensorsFile(p) for p in shards), path)
    if path.name.endswith(".index.json"):
        return _from_index_json(path)
    with path.open("rb") as fh:
        refuse_pickle(path, fh.read(16))
    return TensorIndex([SafetensorsFile(path)], path)

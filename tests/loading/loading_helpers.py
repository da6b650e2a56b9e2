"""Helpers for the loading tests: real-layout fixtures as header-only (sparse) files, edited copies."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F8_E4M3": 1}


def fixture_tensors(name: str) -> dict[str, dict]:
    """{key: {"dtype", "shape"}} of a real SD3.x single file (tests/fixtures/*.json)."""
    return json.loads((FIXTURES / name).read_text())["tensors"]


def fixture_shapes(name: str, prefix: str) -> dict[str, tuple[int, ...]]:
    """{key without prefix: shape} for the keys under `prefix`."""
    return {k[len(prefix) :]: tuple(v["shape"]) for k, v in fixture_tensors(name).items() if k.startswith(prefix)}


def write_header_only(path: Path, tensors: dict[str, dict]) -> Path:
    """A valid safetensors file whose data block is a hole (sparse): the header of a multi-GB checkpoint
    at the cost of a few KB on disk. Only metadata may be read from it."""
    header, offset = {}, 0
    for key, spec in tensors.items():
        nbytes = math.prod(spec["shape"]) * ITEMSIZE[spec["dtype"]]
        header[key] = {"dtype": spec["dtype"], "shape": spec["shape"], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    return path


def edited_copy(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """Copy a safetensors file through `edit(state)` (which changes the dict in place)."""
    state = load_file(str(src))
    edit(state)
    save_file(state, str(dst))
    return dst

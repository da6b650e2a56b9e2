"""Lazy safetensors reading: the header is parsed and checked first, tensor data is read only on request.

File layout (safetensors spec): u64 little-endian header length N, N bytes of JSON
`{key: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the data
block; offsets are relative to the start of the data block. Pickled checkpoints are refused by
extension and by magic bytes: nothing here ever unpickles.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sd35.loading.errors import CheckpointFormatError, UnsafeCheckpointError

# safetensors dtype string -> (bytes per element, torch dtype)
DTYPES: dict[str, tuple[int, torch.dtype]] = {
    "F64": (8, torch.float64),
    "F32": (4, torch.float32),
    "F16": (2, torch.float16),
    "BF16": (2, torch.bfloat16),
    "F8_E4M3": (1, torch.float8_e4m3fn),
    "F8_E5M2": (1, torch.float8_e5m2),
    "I64": (8, torch.int64),
    "I32": (4, torch.int32),
    "I16": (2, torch.int16),
    "I8": (1, torch.int8),
    "U8": (1, torch.uint8),
    "BOOL": (1, torch.bool),
}
TORCH_TO_SAFETENSORS = {dt: name for name, (_, dt) in DTYPES.items()}
FLOAT8 = {"F8_E4M3", "F8_E5M2"}

MAX_HEADER_BYTES = 100 * 2**20  # the real SD3.5 headers are ~100 KB; anything this large is not one
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
READ_CHUNK_BYTES = 16 * 2**20  # staging buffer for reads that cast


@dataclass(frozen=True)
class TensorMeta:
    """What the header says about one tensor: dtype string, shape, byte range within the data block."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][1]


def refuse_pickle(path: Path, head: bytes) -> None:
    """Raise UnsafeCheckpointError if `path` is (or is named like) a pickled checkpoint."""
    if head.startswith(_ZIP_MAGIC):
        raise UnsafeCheckpointError(path, "PyTorch zip/pickle checkpoint (torch.save format)")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise UnsafeCheckpointError(path, "Python pickle")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeCheckpointError(path, f"'{path.suffix}' checkpoint (a PyTorch pickle format)")


def _describe_non_safetensors(head: bytes) -> str | None:
    """A human guess at what a non-safetensors file is, from its first bytes."""
    text = head.lstrip()
    if text.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the model itself: fetch the real file (git lfs pull)"
    if text[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "is a web page (HTML), not a model: probably a failed or redirected download"
    if text.startswith(b"GGUF"):
        return "is a GGUF file; sd35 reads .safetensors only"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        return "is a text file, not a safetensors model"
    return None


def _parse_entry(path: Path, key: str, entry: Any, data_size: int) -> TensorMeta:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointFormatError(path, f"header entry {key!r} is malformed: {str(entry)[:120]}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise CheckpointFormatError(path, f"tensor {key!r} has unsupported dtype {dtype!r}")
    ints_ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [*shape, *offsets])
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2 or not ints_ok:
        raise CheckpointFormatError(path, f"header entry {key!r} has an invalid shape or data_offsets")
    begin, end = offsets
    meta = TensorMeta(dtype, tuple(shape), begin, end)
    expected = meta.numel * DTYPES[dtype][0]
    if end < begin or end - begin != expected:
        raise CheckpointFormatError(
            path,
            f"header lies about tensor {key!r}: {dtype} {list(shape)} needs {expected} bytes but its "
            f"data_offsets [{begin}, {end}] span {end - begin}. The file is damaged or was not written "
            "by a safetensors writer.",
        )
    return meta


def read_header(path: Path) -> tuple[dict[str, TensorMeta], dict[str, str], int]:
    """Parse and check a safetensors header: (tensors by key, __metadata__, data block start).

    Raises CheckpointFormatError for anything a loader could trip on later (empty, text, truncated,
    offsets outside the file or overlapping, sizes inconsistent with dtype×shape), and
    UnsafeCheckpointError for pickles.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            refuse_pickle(path, head + fh.read(8))
            if size == 0:
                raise CheckpointFormatError(path, "is empty (0 bytes): an interrupted download or copy?")
            if size < 8:
                raise CheckpointFormatError(path, f"is only {size} bytes: too short to be safetensors")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n < 2:
                fh.seek(0)
                guess = _describe_non_safetensors(fh.read(256))
                raise CheckpointFormatError(path, guess or "is not a safetensors file (no valid header)")
            if 8 + n > size:
                raise CheckpointFormatError(
                    path, f"is truncated: its header claims {n} bytes but the file has only {size} bytes"
                )
            fh.seek(8)
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointFormatError(path, f"cannot be read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        guess = _describe_non_safetensors(head + raw[:248])
        raise CheckpointFormatError(path, guess or "has a corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(path, "has a corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointFormatError(path, "has a corrupt safetensors header (__metadata__ is not a mapping)")
    data_start, data_size = 8 + n, size - 8 - n
    tensors = {key: _parse_entry(path, key, entry, data_size) for key, entry in header.items()}
    _check_layout(path, tensors, data_size)
    return tensors, {str(k): str(v) for k, v in metadata.items()}, data_start


def _check_layout(path: Path, tensors: dict[str, TensorMeta], data_size: int) -> None:
    """Offsets must lie inside the data block and must not overlap."""
    need = max((m.end for m in tensors.values()), default=0)
    if need > data_size:
        raise CheckpointFormatError(
            path,
            f"is truncated: its header describes {need} bytes of tensor data but only {max(data_size, 0)} "
            "are present (an incomplete download or copy?)",
        )
    ordered = sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end))
    for (key_a, a), (key_b, b) in zip(ordered, ordered[1:]):
        if b.begin < a.end:
            raise CheckpointFormatError(path, f"header lies about offsets: tensors {key_a!r} and {key_b!r} overlap")


class SafetensorsFile:
    """One safetensors file. Construction reads and validates the header only.

    `shape`/`dtype`/`meta` come from the header; `tensor(key)` maps the data (zero copy, private
    copy-on-write pages, via safetensors.safe_open); `read(key)` copies one tensor into fresh memory with a
    plain file read, which keeps no file pages alive (what a loader wants when it converts dtypes).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tensors, self.metadata, self._data_start = read_header(self.path)
        self._handle: Any = None

    def __repr__(self) -> str:
        return f"SafetensorsFile({str(self.path)!r}, {len(self._tensors)} tensors)"

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def meta(self, key: str) -> TensorMeta:
        return self._tensors[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._tensors[key].shape

    def dtype(self, key: str) -> str:
        """The stored dtype as a safetensors string ("F16", "BF16", "F8_E4M3", ...)."""
        return self._tensors[key].dtype

    @property
    def tensor_bytes(self) -> int:
        return sum(m.nbytes for m in self._tensors.values())

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor backed by a private memory map of the file (no copy until written)."""
        meta = self._tensors[key]
        if self._handle is None:
            from safetensors import SafetensorError, safe_open

            try:
                self._handle = safe_open(str(self.path), framework="pt")
            except (SafetensorError, OSError) as exc:
                raise CheckpointFormatError(self.path, f"cannot be mapped: {exc}") from exc
        out = self._handle.get_tensor(key)
        if tuple(out.shape) != meta.shape:  # the header changed under us
            raise CheckpointFormatError(self.path, f"changed on disk while being read ({key!r})")
        return out

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A fresh CPU copy of one tensor, read with positioned file reads (no mmap), optionally cast.

        A cast streams the data through a small buffer straight into the output, so the peak memory is
        the output plus READ_CHUNK_BYTES, not output plus a full-size copy in the stored dtype.
        """
        meta = self._tensors[key]
        dtype = dtype or meta.torch_dtype
        out = torch.empty(meta.shape, dtype=dtype)
        if meta.numel == 0:
            return out
        with self.path.open("rb") as fh:
            fh.seek(self._data_start + meta.begin)
            if dtype == meta.torch_dtype:
                self._read_exact(fh, out.view(-1), key)
                return out
            flat = out.view(-1)
            step = max(1, READ_CHUNK_BYTES // DTYPES[meta.dtype][0])
            buffer = torch.empty(min(step, meta.numel), dtype=meta.torch_dtype)
            for start in range(0, meta.numel, step):
                part = buffer[: min(step, meta.numel - start)]
                self._read_exact(fh, part, key)
                flat[start : start + part.numel()].copy_(part)
        return out

    def _read_exact(self, fh, flat: torch.Tensor, key: str) -> None:
        """Fill the 1-D tensor `flat` from the file's current position."""
        view = memoryview(flat.view(torch.uint8).numpy()).cast("B")
        if fh.readinto(view) != len(view):
            raise CheckpointFormatError(self.path, f"is truncated: tensor {key!r} ends past the end of file")

    def close(self) -> None:
        self._handle = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The lazy reader: header facts without data, tensors by mmap or by read, and every bad-file error."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sd35.loading.errors import CheckpointFormatError, UnsafeCheckpointError
from sd35.loading.safetensors_io import SafetensorsFile


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = {
        "a": torch.randn(3, 4),
        "b": torch.randn(5).to(torch.bfloat16),
        "c": torch.randn(2, 2).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(0.25),
    }
    path = tmp_path / "small.safetensors"
    save_file(state, str(path), metadata={"format": "pt", "note": "x"})
    return path, state


def test_header_facts_and_both_read_paths(small) -> None:
    path, state = small
    f = SafetensorsFile(path)
    assert sorted(f.keys()) == sorted(state) and len(f) == 4 and "a" in f
    assert f.shape("a") == (3, 4) and f.dtype("b") == "BF16" and f.dtype("c") == "F8_E4M3"
    assert f.metadata == {"format": "pt", "note": "x"}
    assert f.tensor_bytes == 3 * 4 * 4 + 5 * 2 + 4 + 4
    for key, expected in state.items():
        for got in (f.tensor(key), f.read(key)):
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert torch.equal(got.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8))


def test_mmap_tensor_is_private(small) -> None:
    """Writing to a mapped tensor must never change the file (copy-on-write mapping)."""
    path, state = small
    SafetensorsFile(path).tensor("a").add_(1.0)
    assert torch.equal(SafetensorsFile(path).read("a"), state["a"])


def _rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (n - len(new)) if len(new) <= n else b""
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_truncated_file(small) -> None:
    path, _ = small
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointFormatError, match="is truncated: its header describes .* bytes of tensor data"):
        SafetensorsFile(path)


def test_truncated_inside_header(small) -> None:
    path, _ = small
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointFormatError, match="is truncated: its header claims"):
        SafetensorsFile(path)


def test_header_lying_about_a_tensor_size(small) -> None:
    path, _ = small
    _rewrite_header(path, lambda h: h["a"].update(shape=[3, 5]))
    with pytest.raises(CheckpointFormatError, match="header lies about tensor 'a'"):
        SafetensorsFile(path)


def test_header_with_overlapping_offsets(small) -> None:
    path, _ = small

    def overlap(h: dict) -> None:
        h["scalar"]["data_offsets"] = [h["a"]["data_offsets"][0], h["a"]["data_offsets"][0] + 4]

    _rewrite_header(path, overlap)
    with pytest.raises(CheckpointFormatError, match="overlap"):
        SafetensorsFile(path)


def test_header_not_json(small) -> None:
    path, _ = small
    raw = bytearray(path.read_bytes())
    raw[8] = ord("#")
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match="corrupt safetensors header"):
        SafetensorsFile(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"abc", "too short"),
        (b"just some notes about my favourite models\n" * 3, "is a text file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "web page"),
        (bytes(range(256)) * 4, "not a safetensors file"),
    ],
    ids=["empty", "tiny", "text", "lfs", "html", "binary"],
)
def test_not_safetensors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match=message):
        SafetensorsFile(path)


def test_pickles_are_refused_without_unpickling(tmp_path: Path) -> None:
    zipped = tmp_path / "model.safetensors"  # lying extension: caught by magic bytes
    torch.save({"w": torch.zeros(2)}, zipped)
    with pytest.raises(UnsafeCheckpointError, match="does not load pickles") as info:
        SafetensorsFile(zipped)
    assert "weights_only=True" in str(info.value) and "save_file" in str(info.value)
    raw = tmp_path / "model.pkl"
    raw.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="Python pickle"):
        SafetensorsFile(raw)
    named = tmp_path / "model.ckpt"  # refused by extension whatever it holds
    named.write_bytes(b"\x00" * 64)
    with pytest.raises(UnsafeCheckpointError, match="'.ckpt' checkpoint"):
        SafetensorsFile(named)


@pytest.mark.parametrize("target", [torch.float32, torch.bfloat16, torch.float16])
def test_cast_reads_stream_in_chunks(tmp_path: Path, monkeypatch, target: torch.dtype) -> None:
    import sd35.loading.safetensors_io as io

    monkeypatch.setattr(io, "READ_CHUNK_BYTES", 100)  # 7 chunks of 50 fp16 values, the last one short
    state = {"w": torch.randn(7, 49).to(torch.float16), "f8": torch.randn(333).to(torch.float8_e5m2)}
    save_file(state, str(tmp_path / "w.safetensors"))
    f = SafetensorsFile(tmp_path / "w.safetensors")
    for key, value in state.items():
        got = f.read(key, target)
        assert got.dtype == target and torch.equal(got, value.to(target))

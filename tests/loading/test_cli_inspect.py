"""`sd35 inspect` and `sd35 make-tiny`: reports, JSON, and one clear error per bad file without a traceback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loading_helpers import edited_copy, fixture_tensors, write_header_only

from sd35.cli.main import main


def _inspect(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["inspect", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_inspect_reports_every_component_and_readiness(tiny_models_dir: Path, capsys) -> None:
    rc, out, err = _inspect(capsys, str(tiny_models_dir / "sd3.5_medium.safetensors"))
    assert rc == 0 and not err
    assert "mmditx" in out and "depth 3, hidden 192" in out and "vae" in out
    assert "missing for generation: clip_l, clip_g, t5xxl" in out
    rc, out, _ = _inspect(capsys, str(tiny_models_dir / "diffusers"))
    assert rc == 0 and "ready for generation" in out


def test_inspect_json(tiny_models_dir: Path, capsys) -> None:
    files = [str(tiny_models_dir / n) for n in ("sd3.5_medium.safetensors", "clip_l.safetensors", "clip_g.safetensors")]
    rc, out, _ = _inspect(capsys, "--json", *files, str(tiny_models_dir / "t5xxl_fp16.safetensors"))
    report = json.loads(out)
    assert rc == 0 and report["ready"] and report["missing"] == [] and report["mismatches"] == []
    first = report["entries"][0]["components"][0]
    assert first["component"] == "mmditx" and first["config"]["depth"] == 3 and first["stored_dtype"] == "float32"
    assert first["n_bytes"] > first["n_params"] > 6_000_000


def test_inspect_real_layout_header(tmp_path: Path, capsys) -> None:
    path = write_header_only(tmp_path / "sd3.5_medium.safetensors", fixture_tensors("sd35_medium_keys.json"))
    rc, out, _ = _inspect(capsys, str(path))
    assert rc == 0
    assert "depth 24, hidden 1536, heads 24, pos table 384 (up to 6144px), attn2 on blocks 0-12" in out
    assert "2.47 B params" in out and "float16" in out


def test_inspect_reports_component_width_mismatches(tiny_models_dir: Path, tmp_path: Path, capsys) -> None:
    """A CLIP-G file saved as clip_l.safetensors: every file reads fine, but the widths do not add up."""
    impostor = tmp_path / "clip_l.safetensors"
    impostor.write_bytes((tiny_models_dir / "clip_g.safetensors").read_bytes())
    names = ("sd3.5_medium.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors")
    rc, out, _ = _inspect(capsys, str(impostor), *(str(tiny_models_dir / n) for n in names))
    assert rc == 0 and "ready for generation" not in out
    assert "mismatch: CLIP-L + CLIP-G pooled width 384 != diffusion model's 320" in out


def _bad_files(tiny: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    clip = tiny / "clip_l.safetensors"
    p = "model.diffusion_model."
    ckpt = tiny / "sd3.5_medium.safetensors"
    raw = clip.read_bytes()
    (tmp / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    lying = bytearray(raw)
    start = lying.index(b'"data_offsets":[') + len(b'"data_offsets":[')
    lying[start] = ord("9") if lying[start] != ord("9") else ord("8")  # one offset changed, same length
    (tmp / "lying.safetensors").write_bytes(bytes(lying))
    torch.save({"w": torch.zeros(1)}, tmp / "model.ckpt")
    (tmp / "notes.safetensors").write_text("these are not weights\n" * 10)
    (tmp / "empty.safetensors").write_bytes(b"")
    return {
        "truncated": (tmp / "truncated.safetensors", "is truncated"),
        "lying header": (tmp / "lying.safetensors", "header lies about"),
        "pickle": (tmp / "model.ckpt", "does not load pickles"),
        "text": (tmp / "notes.safetensors", "is a text file"),
        "empty": (tmp / "empty.safetensors", "is empty (0 bytes)"),
        "wrong component": (
            edited_copy(
                clip, tmp / "wrong.safetensors", lambda s: s.update({f"{p}input_blocks.0.0.weight": torch.zeros(1)})
            ),
            "UNet diffusion model",
        ),
        "missing keys": (
            edited_copy(ckpt, tmp / "missing.safetensors", lambda s: s.pop(f"{p}final_layer.linear.bias")),
            "missing 1 key(s): final_layer.linear.bias",
        ),
        "extra keys": (
            edited_copy(ckpt, tmp / "extra.safetensors", lambda s: s.update({f"{p}extra.weight": torch.zeros(1)})),
            "unexpected 1 key(s): extra.weight",
        ),
        "mis-shaped": (
            edited_copy(
                ckpt, tmp / "shape.safetensors", lambda s: s.update({f"{p}t_embedder.mlp.2.bias": torch.zeros(5)})
            ),
            "mis-shaped 1 tensor(s): t_embedder.mlp.2.bias (file [5], model [192])",
        ),
    }


def test_each_bad_file_has_its_own_error(tiny_models_dir: Path, tmp_path: Path, capsys) -> None:
    bad = _bad_files(tiny_models_dir, tmp_path)
    messages = set()
    for name, (path, expected) in bad.items():
        rc, _, err = _inspect(capsys, str(path))
        assert rc == 2, name
        assert expected in err, (name, err)
        assert "Traceback" not in err and err.startswith("sd35 inspect: error: "), name
        messages.add(err)
    assert len(messages) == len(bad)


def test_bad_file_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 3)
    run = subprocess.run([sys.executable, "-m", "sd35.cli.main", "inspect", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2 and "too short to be safetensors" in run.stderr and "Traceback" not in run.stderr


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_make_tiny_is_deterministic(tiny_model_paths, tmp_path: Path, capsys, dtype: str) -> None:
    assert main(["make-tiny", str(tmp_path), "--no-diffusers", "--dtype", dtype]) == 0
    assert "checkpoint" in capsys.readouterr().out
    assert not (tmp_path / "diffusers").exists()
    if dtype == "fp32":  # same bytes as the session fixture (same seed)
        for key in ("checkpoint", "clip_l", "clip_g", "t5xxl"):
            assert _digest(tmp_path / tiny_model_paths[key].name) == _digest(tiny_model_paths[key]), key
    else:
        from sd35.loading.detect import detect_components

        assert {i.stored_dtype for i in detect_components(tmp_path)} == {"bfloat16"}

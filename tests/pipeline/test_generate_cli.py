"""`sd35 generate` on the tiny checkpoint: PNG with metadata, determinism, and refusals before any load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd35.cli.main import main

SMALL = ["--width", "64", "--height", "48", "--steps", "2"]


def _models_args(tiny_models_dir: Path) -> list[str]:
    return ["--models", str(tiny_models_dir)]


def test_png_with_metadata_and_seed_determinism(tiny_models_dir: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "img_{seed}.png")
    args = ["generate", "a red cube", *SMALL, *_models_args(tiny_models_dir), "-o", out]
    assert main([*args, "--seed", "7"]) == 0
    first = tmp_path / "img_7.png"
    assert capsys.readouterr().out.strip() == str(first)
    image = Image.open(first)
    assert image.size == (64, 48)
    params = image.text["parameters"]
    assert params.startswith("a red cube\n") and "Seed: 7" in params and "Steps: 2" in params
    graph = json.loads(image.text["prompt"])
    assert graph["294"]["inputs"]["seed"] == 7 and graph["6"]["inputs"]["text"] == "a red cube"
    assert graph["300"]["class_type"] == "SkipLayerGuidanceSD3"

    again = tmp_path / "again"
    assert main([*args[:-1], str(again / "img_{seed}.png"), "--seed", "7"]) == 0
    assert (again / "img_7.png").read_bytes() == first.read_bytes()

    assert main([*args, "--seed", "8"]) == 0
    a = np.asarray(Image.open(first), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "img_8.png"), dtype=np.int16)
    assert np.abs(a - b).mean() > 1.0


def test_batch_and_img2img(tiny_models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b_{n}.png"
    args = ["generate", "x", *SMALL, *_models_args(tiny_models_dir), "--seed", "3", "--batch", "2", "-o", str(out)]
    assert main(args) == 0
    assert (tmp_path / "b_0.png").is_file() and (tmp_path / "b_1.png").is_file()
    init = tmp_path / "b_0.png"
    args = ["generate", "x", *SMALL, *_models_args(tiny_models_dir), "--seed", "3", "--init-image", str(init)]
    assert main([*args, "--denoise", "0.5", "-o", str(tmp_path / "i2i.png")]) == 0
    assert "Denoising strength: 0.5" in Image.open(tmp_path / "i2i.png").text["parameters"]


BAD_INPUTS = {
    "size not multiple of 16": (["--width", "100"], "multiple of 16"),
    "beyond the position table": (["--width", "2048"], "position table"),
    "steps < 1": (["--steps", "0"], "steps must be at least 1"),
    "unknown sampler": (["--sampler", "nope"], "unknown sampler"),
    "unknown scheduler": (["--scheduler", "nope"], "unknown scheduler"),
    "denoise > 1": (["--denoise", "1.5", "--init-image", "x.png"], "denoise"),
    "denoise < 0": (["--denoise", "-0.1"], "denoise"),
    "unreadable init image": (["--init-image", "{tmp}/bad.png"], "cannot read image"),
    "missing init image": (["--init-image", "{tmp}/none.png"], "image not found"),
    "missing models folder": (["--models", "{tmp}/nowhere"], "models folder not found"),
    "wrong model file": (["--model", "{tiny}/clip_l.safetensors"], "holds no diffusion model"),
    "wrong text encoder file": (["--t5xxl", "{tiny}/clip_g.safetensors"], "t5xxl"),
    "bad slg layers": (["--slg-layers", "a,b"], "--slg-layers"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_refused_before_loading(case, tiny_models_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import sd35.cli.generate_runner as runner

    def forbidden(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(runner, "generate_from_files", forbidden)
    (tmp_path / "bad.png").write_text("not an image")
    extra, message = BAD_INPUTS[case]
    extra = [a.format(tmp=tmp_path, tiny=tiny_models_dir) for a in extra]
    base = ["generate", "p", "--width", "64", "--height", "64"]
    if not any(a in ("--models", "--model") for a in extra):
        base += _models_args(tiny_models_dir)
    elif "--model" in extra:
        base += ["--clip-l", str(tiny_models_dir / "clip_l.safetensors")]
    out_dir = tmp_path / "out"
    code = main([*base, *extra, "-o", str(out_dir / "x.png")])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err, err
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_text_encoders_are_freed_before_the_mmdit_loads(tiny_models_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """generate loads in stages: no text encoder is alive when the MMDiT and VAE are loaded."""
    import gc
    import weakref

    import sd35.pipeline.oneshot as oneshot

    refs: list[weakref.ref] = []
    alive_at_image_stage: list[bool] = []
    real_text, real_image = oneshot.load_text_stack, oneshot.load_image_stack

    def load_text(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        stack = real_text(*args, **kwargs)
        refs.extend(weakref.ref(m) for m in (stack.encoders.clip_l, stack.encoders.clip_g, stack.encoders.t5))
        return stack

    def load_image(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        gc.collect()
        alive_at_image_stage.extend(ref() is not None for ref in refs)
        return real_image(*args, **kwargs)

    monkeypatch.setattr(oneshot, "load_text_stack", load_text)
    monkeypatch.setattr(oneshot, "load_image_stack", load_image)
    args = ["generate", "x", *SMALL, *_models_args(tiny_models_dir), "--seed", "1", "-o", str(tmp_path / "s.png")]
    assert main(args) == 0
    assert alive_at_image_stage == [False, False, False]


def test_saved_png_gets_the_usual_permissions(tmp_path: Path) -> None:
    import os

    import numpy as np

    from sd35.imageio.images import save_png

    path = save_png(tmp_path / "p.png", np.zeros((8, 8, 3), dtype=np.uint8), {"k": "v"})
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temp file left behind

"""`sd35 run` end to end on tiny weights placed in a ComfyUI models folder under the names the shared
workflows use: every shared workflow runs, the official one also at its own 1280×768 size, PNGs carry
`prompt` and `workflow` chunks with the overrides applied, and re-running a PNG reproduces it exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nodes"))
from nodes_support import OFFICIAL_API, OFFICIAL_UI, WORKFLOWS, make_comfy_models  # noqa: E402

from sd35.cli.main import main  # noqa: E402

SMALL = ["--set", "EmptySD3LatentImage.width=64", "--set", "EmptySD3LatentImage.height=64", "--set", "KSampler.steps=2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_model_paths: dict[str, Path]) -> Path:
    if not WORKFLOWS.is_dir():
        pytest.skip(f"the shared workflows folder {WORKFLOWS} is not present")
    return make_comfy_models(tmp_path_factory.mktemp("models"), tiny_model_paths)


def sd35_run(models: Path, out: Path, *args: Any, capsys: pytest.CaptureFixture) -> tuple[int, list[Path], str]:
    """(exit code, printed paths, stderr)."""
    rc = main(["run", *map(str, args), "--models", str(models), "--output-dir", str(out), "-q"])
    captured = capsys.readouterr()
    return rc, [Path(line) for line in captured.out.splitlines() if line.strip()], captured.err


def png(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with Image.open(path) as image:
        return np.array(image), {k: json.loads(v) for k, v in image.text.items()}


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("*.json")) or ["(none)"])
def test_every_shared_workflow_runs(models: Path, tmp_path: Path, capsys, name: str) -> None:  # noqa: ANN001
    """Unchanged except for model files, with size and steps made small through --set (the official
    workflow at its own size is the next test)."""
    rc, paths, err = sd35_run(models, tmp_path / "out", WORKFLOWS / name, *SMALL, capsys=capsys)
    assert rc == 0, err
    assert len(paths) == 1 and paths[0].is_file()
    pixels, chunks = png(paths[0])
    assert pixels.shape == (64, 64, 3)
    sampler = next(v for v in chunks["prompt"].values() if v["class_type"] == "KSampler")
    assert sampler["inputs"]["steps"] == 2  # the prompt chunk holds the graph as executed
    is_ui = "nodes" in json.loads((WORKFLOWS / name).read_text())
    assert ("workflow" in chunks) == is_ui  # an API file has no UI graph to embed


def test_official_workflow_at_its_own_size(models: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """1280×768 as in the file; one sampling step here (40 in the slow test below)."""
    rc, paths, err = sd35_run(models, tmp_path / "out", OFFICIAL_UI, "--set", "294.steps=1", capsys=capsys)
    assert rc == 0, err
    (path,) = paths
    assert path.parent == tmp_path / "out" / "temp"  # PreviewImage → OUTPUT_DIR/temp
    pixels, chunks = png(path)
    assert pixels.shape == (768, 1280, 3)
    assert chunks["prompt"]["135"]["inputs"] == {"width": 1280, "height": 768, "batch_size": 1}


@pytest.mark.slow
def test_official_workflow_full_size_equals_library(models: Path, tmp_path: Path, capsys, tiny_model_paths) -> None:  # noqa: ANN001
    """The official workflow exactly as shipped (1280×768, 40 steps) against the library call by hand."""
    import torch

    from sd35.imageio.images import to_uint8
    from sd35.loading.load import load_component
    from sd35.nodes import ModelFolders, Services
    from sd35.nodes.loaders import text_stack
    from sd35.pipeline.components import VAE, DiffusionModel
    from sd35.pipeline.conditioning import negative_for_request, single
    from sd35.pipeline.generate import SamplingSettings, decode_latents, encode_prompt, sample_latents
    from sd35.sampling.schedule import ModelSampling

    rc, (path,), err = sd35_run(models, tmp_path / "out", OFFICIAL_UI, capsys=capsys)
    assert rc == 0, err
    services = Services(ModelFolders((models,)), tmp_path / "x")
    text = text_stack(services, {r: tiny_model_paths[r] for r in ("clip_l", "clip_g", "t5xxl")})
    policy = services.policy
    positive, _ = encode_prompt(text, "beautiful scenery nature glass bottle landscape, purple galaxy bottle,", policy)
    empty, _ = encode_prompt(text, "", policy)
    model = DiffusionModel(load_component(tiny_model_paths["checkpoint"], "mmditx"), ModelSampling(shift=3.0))
    settings = SamplingSettings(seed=193277626003815, steps=40, cfg=5.5, sampler="dpmpp_2m", scheduler="sgm_uniform")
    negative = negative_for_request(empty, 0.2)
    latent = sample_latents(model, single(positive), negative, torch.zeros(1, 16, 96, 160), settings, policy)
    image = decode_latents(VAE(load_component(tiny_model_paths["checkpoint"], "vae")), latent, policy)
    assert np.array_equal(png(path)[0], to_uint8(image[0].numpy()))


def test_png_carries_overrides_and_reruns_to_the_identical_image(models: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from sd35.nodes import ModelFolders, Services, build_registry
    from sd35.workflow import ui_to_api

    overrides = ["--set", "6.text=a red fox in the snow", "--set", "KSampler.seed=5"]
    rc, (first,), err = sd35_run(models, tmp_path / "a", OFFICIAL_UI, *SMALL, *overrides, capsys=capsys)
    assert rc == 0, err
    pixels, chunks = png(first)
    prompt, workflow = chunks["prompt"], chunks["workflow"]
    assert prompt["6"]["inputs"]["text"] == "a red fox in the snow" and prompt["294"]["inputs"]["seed"] == 5
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert nodes[6]["widgets_values"] == ["a red fox in the snow"]
    assert nodes[294]["widgets_values"][:3] == [5, "randomize", 2] and nodes[135]["widgets_values"] == [64, 64, 1]
    registry = build_registry(Services(ModelFolders(), tmp_path / "unused"))
    assert {k: v["inputs"] for k, v in ui_to_api(workflow, registry).items()} == {
        k: v["inputs"] for k, v in prompt.items()
    }  # the two chunks describe the same graph
    rc, (second,), err = sd35_run(models, tmp_path / "b", first, capsys=capsys)
    assert rc == 0, err
    again, chunks_again = png(second)
    assert np.array_equal(again, pixels) and chunks_again == chunks
    rc, (third,), _ = sd35_run(models, tmp_path / "c", first, "--set", "KSampler.seed=6", capsys=capsys)
    assert not np.array_equal(png(third)[0], pixels)


def test_api_workflow_with_save_image_and_model_settings(models: Path, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """SaveImage into --output-dir with ComfyUI's names; models found through $SD35_MODELS and --comfyui."""
    prompt = json.loads(OFFICIAL_API.read_text())
    prompt["50"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "sd35/run"}}
    path = tmp_path / "api.json"
    path.write_text(json.dumps(prompt))
    monkeypatch.setenv("SD35_MODELS", str(models))
    out = tmp_path / "out"
    rc = main(["run", str(path), *SMALL, "--output-dir", str(out), "-q"])
    printed = capsys.readouterr().out.split()
    assert rc == 0 and printed == [str(out / "sd35" / "run_00001_.png")]
    monkeypatch.delenv("SD35_MODELS")
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "models").symlink_to(models)
    rc = main(["run", str(path), *SMALL, "--comfyui", str(comfy), "--output-dir", str(out), "-q"])
    assert rc == 0 and capsys.readouterr().out.split() == [str(out / "sd35" / "run_00002_.png")]


def test_ui_file_and_its_api_file_give_identical_pngs(models: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    rc, (ui_png,), err = sd35_run(models, tmp_path / "ui", OFFICIAL_UI, *SMALL, capsys=capsys)
    assert rc == 0, err
    rc, (api_png,), err = sd35_run(models, tmp_path / "api", OFFICIAL_API, *SMALL, capsys=capsys)
    assert rc == 0, err
    (ui_pixels, ui_chunks), (api_pixels, api_chunks) = png(ui_png), png(api_png)
    assert np.array_equal(ui_pixels, api_pixels)
    assert {k: v["inputs"] for k, v in ui_chunks["prompt"].items()} == {
        k: v["inputs"] for k, v in api_chunks["prompt"].items()
    }

"""Workflow files for `sd35 run`: formats and PNG chunks, overrides applied consistently to the API prompt
and the UI workflow, and validation errors that name the folders searched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nodes_support import OFFICIAL_API, OFFICIAL_UI, load_json
from PIL import Image, PngImagePlugin

from sd35.errors import UserInputError
from sd35.nodes import ModelFolders, Services, build_registry
from sd35.nodes.workflow_file import Override, apply_overrides, explain_missing_files, read_workflow
from sd35.workflow import WorkflowValidationError, ui_to_api, validate


@pytest.fixture
def bare(tmp_path: Path):  # noqa: ANN201
    services = Services(ModelFolders((tmp_path / "models",)), tmp_path / "out")
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    return services, build_registry(services)


def _png(path: Path, chunks: dict[str, str]) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


def _inputs(prompt: dict) -> dict:
    return {k: v["inputs"] for k, v in prompt.items()}


def test_formats_and_png_chunks(shared_dir: Path, tmp_path: Path, bare) -> None:  # noqa: ANN001
    _, registry = bare
    api, ui = load_json(OFFICIAL_API), load_json(OFFICIAL_UI)
    from_api = read_workflow(OFFICIAL_API, registry)
    from_ui = read_workflow(OFFICIAL_UI, registry)
    assert from_api.workflow is None and from_ui.workflow == ui
    assert _inputs(from_ui.prompt) == _inputs(api) == _inputs(from_api.prompt)
    both = read_workflow(_png(tmp_path / "both.png", {"prompt": json.dumps(api), "workflow": json.dumps(ui)}), registry)
    assert both.prompt == api and both.workflow == ui
    only_ui = read_workflow(_png(tmp_path / "ui.png", {"workflow": json.dumps(ui)}), registry)
    assert _inputs(only_ui.prompt) == _inputs(api)
    with pytest.raises(UserInputError, match="'prompt' chunk is not valid JSON"):
        read_workflow(_png(tmp_path / "bad.png", {"prompt": "{"}), registry)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(WorkflowValidationError, match="not valid JSON"):
        read_workflow(tmp_path / "bad.json", registry)


def test_overrides_reach_both_the_prompt_and_the_ui_widgets(shared_dir: Path, bare) -> None:  # noqa: ANN001
    _, registry = bare
    wf = read_workflow(OFFICIAL_UI, registry)
    changes = ["6.text=a=b", "KSampler.cfg=4", "294.seed=9", "EmptySD3LatentImage.width=512", "13.shift=6"]
    out = apply_overrides(wf, [Override.parse(c) for c in changes], registry)
    assert out.prompt["6"]["inputs"]["text"] == "a=b"  # split at the first '='
    assert out.prompt["294"]["inputs"]["cfg"] == 4.0 and out.prompt["294"]["inputs"]["seed"] == 9
    assert _inputs(ui_to_api(out.workflow, registry)) == _inputs(out.prompt)
    assert wf.prompt["294"]["inputs"]["seed"] == 193277626003815  # the input is not modified
    nodes = {n["id"]: n for n in out.workflow["nodes"]}
    assert nodes[294]["widgets_values"] == [9, "randomize", 40, 4.0, "dpmpp_2m", "sgm_uniform", 1]


def test_overrides_on_short_or_named_widget_lists(bare) -> None:  # noqa: ANN001
    _, registry = bare
    ui = {
        "nodes": [
            {"id": 1, "type": "EmptySD3LatentImage", "widgets_values": [], "outputs": [], "inputs": []},
            {"id": 2, "type": "SaveImage", "widgets_values": {"filename_prefix": "a"}, "inputs": []},
        ],
        "links": [],
    }
    wf = read_workflow_from(ui, registry)
    out = apply_overrides(wf, [Override.parse("1.batch_size=2"), Override.parse("2.filename_prefix=b")], registry)
    assert out.workflow["nodes"][0]["widgets_values"] == [1024, 1024, 2]
    assert out.workflow["nodes"][1]["widgets_values"] == {"filename_prefix": "b"}


def read_workflow_from(ui: dict, registry):  # noqa: ANN001, ANN201
    from sd35.nodes.workflow_file import WorkflowFile

    return WorkflowFile(ui_to_api(ui, registry), ui, Path("mem.json"))


def test_missing_file_errors_name_the_folders(shared_dir: Path, tmp_path: Path, bare) -> None:  # noqa: ANN001
    services, registry = bare
    prompt = load_json(OFFICIAL_API)
    response = explain_missing_files(validate(prompt, registry).to_response(), prompt, services)
    details = [e["details"] for e in response["node_errors"]["4"]["errors"]]
    assert details == [
        f"ckpt_name: model file 'sd3.5_medium.safetensors' not found in checkpoints/ "
        f"(looked in {tmp_path / 'models' / 'checkpoints'})"
    ]
    (detail,) = [e["details"] for e in response["node_errors"]["11"]["errors"]][:1]
    assert "not found in text_encoders/ (none of text_encoders/, clip/ exists under" in detail

"""`sd35 run` on malformed workflows: each gives a clear error naming the node (or the file problem), exit
code 2, and leaves no image behind."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nodes"))
from nodes_support import OFFICIAL_API, OFFICIAL_UI, WORKFLOWS, make_comfy_models  # noqa: E402

from sd35.cli.main import main  # noqa: E402

Prompt = dict[str, Any]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_model_paths: dict[str, Path]) -> Path:
    if not WORKFLOWS.is_dir():
        pytest.skip(f"the shared workflows folder {WORKFLOWS} is not present")
    return make_comfy_models(tmp_path_factory.mktemp("models"), tiny_model_paths)


def _official() -> Prompt:
    prompt = json.loads(OFFICIAL_API.read_text())
    prompt["135"]["inputs"].update(width=32, height=32)
    prompt["294"]["inputs"]["steps"] = 1
    return prompt


def _edit(change: Callable[[Prompt], None]) -> Prompt:
    prompt = copy.deepcopy(_official())
    change(prompt)
    return prompt


def _set(node: str, name: str, value: Any) -> Callable[[Prompt], None]:
    return lambda p: p[node]["inputs"].__setitem__(name, value)


def _cycle(p: Prompt) -> None:
    p["69"]["inputs"]["conditioning_2"] = ["72", 0]
    p["72"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["69", 0], "conditioning_2": ["70", 0]},
    }


def _checkpoint_clip(p: Prompt) -> None:  # the checkpoint has no text encoders: CLIP is None at run time
    p["6"]["inputs"]["clip"] = ["4", 1]


def _two_outputs_second_fails(p: Prompt) -> None:  # SaveImage "10" runs (and writes) before "60" fails
    p["10"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ok"}}
    p["60"] = {"class_type": "PreviewImage", "inputs": {"images": ["61", 0]}}
    p["61"] = {"class_type": "VAEDecode", "inputs": {"samples": ["62", 0], "vae": ["4", 2]}}
    p["62"] = {"class_type": "KSampler", "inputs": dict(p["294"]["inputs"], positive=["63", 0])}
    p["63"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["4", 1]}}


def _ui(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    workflow = json.loads(OFFICIAL_UI.read_text())
    change(workflow)
    return workflow


def _ui_widget(node_id: int, index: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(workflow: dict[str, Any]) -> None:
        next(n for n in workflow["nodes"] if n["id"] == node_id)["widgets_values"][index] = value

    return change


# (case id, prompt / UI workflow / raw text, fragments the error must contain)
CASES: list[tuple[str, Prompt | str, tuple[str, ...]]] = [  # the UI cases run at the file's 1280×768 but fail first
    ("bad_json", '{"4": {"class_type": "CheckpointLoaderSimple", ', ("not valid JSON", "line 1")),
    ("not_an_object", "[1, 2, 3]", ("expected a JSON object of nodes",)),
    (
        "unknown_node",
        _edit(lambda p: p["13"].__setitem__("class_type", "ModelSamplingSD9")),
        ("ModelSamplingSD9", "13"),
    ),
    (
        "missing_link_target",
        _edit(_set("8", "samples", ["999", 0])),
        ("node 8 (VAEDecode)", "'999' is not in the prompt"),
    ),
    ("bad_link_slot", _edit(_set("8", "vae", ["4", 7])), ("node 8 (VAEDecode)", "output slot 7")),
    ("type_mismatch", _edit(_set("294", "model", ["6", 0])), ("node 294 (KSampler)", "CONDITIONING", "MODEL")),
    ("cycle", _edit(_cycle), ("Dependency cycle", "node 69", "node 72")),
    ("below_min", _edit(_set("294", "steps", 0)), ("node 294 (KSampler)", "smaller than min", "steps")),
    ("above_max", _edit(_set("294", "cfg", 101.0)), ("node 294 (KSampler)", "bigger than max", "cfg")),
    ("not_a_number", _edit(_set("294", "steps", "many")), ("node 294 (KSampler)", "Failed to convert", "steps")),
    ("not_in_list", _edit(_set("294", "scheduler", "fast")), ("node 294 (KSampler)", "Value not in list", "fast")),
    ("unimplemented_sampler", _edit(_set("294", "sampler_name", "dpm_adaptive")), ("node 294", "dpm_adaptive")),
    ("missing_input", _edit(lambda p: p["294"]["inputs"].pop("positive")), ("node 294 (KSampler)", "positive")),
    (
        "missing_model_file",
        _edit(_set("4", "ckpt_name", "sd3.5_large.safetensors")),
        ("node 4", "not found in checkpoints/"),
    ),
    (
        "missing_text_encoder",
        _edit(_set("11", "clip_name3", "t5xxl_fp8_e4m3fn.safetensors")),
        ("node 11", "text_encoders/"),
    ),
    ("no_output_node", _edit(lambda p: p.pop("50")), ("Prompt has no outputs",)),
    (
        "clip_none_at_run_time",
        _edit(_checkpoint_clip),
        ("node 6 (CLIPTextEncode) failed", "clip input is invalid: None"),
    ),
    ("ui_broken_link", _ui(lambda w: w["links"][0].__setitem__(1, 999)), ("node 6 (CLIPTextEncode)", "node 999")),
    ("ui_out_of_range", _ui(_ui_widget(294, 2, -5)), ("node 294 (KSampler)", "Value -5 smaller than min of 1")),
    ("partial_run_fails", _edit(_two_outputs_second_fails), ("node 63 (CLIPTextEncode) failed",)),
]


@pytest.mark.parametrize(("case", "workflow", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_malformed_workflow_fails_clearly_with_no_output(
    models: Path, tmp_path: Path, capsys, case: str, workflow: Prompt | str, fragments: tuple[str, ...]
) -> None:  # noqa: ANN001
    path = tmp_path / f"{case}.json"
    path.write_text(workflow if isinstance(workflow, str) else json.dumps(workflow))
    out = tmp_path / "out"
    rc = main(["run", str(path), "--models", str(models), "--output-dir", str(out), "-q"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    message = captured.err
    assert message.startswith("sd35 run: error:")
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


def test_missing_model_error_names_the_folder_searched(models: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    path = tmp_path / "w.json"
    path.write_text(json.dumps(_edit(_set("4", "ckpt_name", "sd3.5_large.safetensors"))))
    assert main(["run", str(path), "--models", str(models), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"model file 'sd3.5_large.safetensors' not found in checkpoints/ (looked in {models / 'checkpoints'})" in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "6.text"], "expected NODE.INPUT=VALUE"),
        (["--set", "Nope.seed=1"], "no node 'Nope'"),
        (["--set", "CLIPTextEncode.text=x"], "matches several nodes"),
        (["--set", "294.sead=1"], "has no input 'sead'"),
        (["--set", "294.steps=ten"], "steps needs a INT value"),
        (["--set", "294.model=4"], "is a connection, not a value"),
    ],
)
def test_bad_overrides_are_refused(models: Path, tmp_path: Path, capsys, args: list[str], fragment: str) -> None:  # noqa: ANN001
    rc = main(["run", str(OFFICIAL_UI), *args, "--models", str(models), "--output-dir", str(tmp_path / "o")])
    assert rc == 2 and fragment in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_png_without_a_workflow_and_a_missing_file(models: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from PIL import Image

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert main(["run", str(plain), "--models", str(models)]) == 2
    assert "holds no workflow" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.json"), "--models", str(models)]) == 2
    assert "cannot read workflow" in capsys.readouterr().err

"""Front ends: `sd35 generate --lora FILE[:STRENGTH]` (image = merged checkpoint's), the LoraLoader and
LoraLoaderModelOnly nodes over a models root's loras/ folder, and the server's listing of that folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lora_helpers import hand_merged, kohya, random_deltas, save, write_merged_checkpoint
from PIL import Image

from sd35.cli.main import main
from sd35.lora import LoraSpec, parse_lora_arg
from sd35.nodes.lora_nodes import register_lora_nodes
from sd35.nodes.paths import ModelFolders
from sd35.nodes.services import Services
from sd35.nodes.values import Clip
from sd35.pipeline.components import DiffusionModel
from sd35.runtime.devices import DevicePolicy
from sd35.workflow import NodeRegistry, node_object_info

TARGETS = {
    "mmditx": ["joint_blocks.0.x_block.attn.qkv", "joint_blocks.1.x_block.attn2.qkv", "final_layer.adaLN_modulation.1"],
    "clip_l": ["text_model.encoder.layers.1.self_attn.v_proj"],
    "t5xxl": ["encoder.block.0.layer.1.DenseReluDense.wo"],
}
OBJECT_INFO = Path(__file__).resolve().parents[3] / "shared" / "comfyui_api_samples" / "object_info_sd3_subset.json"
SMALL = ["--width", "64", "--height", "64", "--steps", "2", "--seed", "3", "--no-slg"]


@pytest.fixture(scope="module")
def lora_file(models, tmp_path_factory: pytest.TempPathFactory):
    deltas = random_deltas(models, TARGETS, seed=21)
    return save(tmp_path_factory.mktemp("cli") / "style.safetensors", kohya(deltas)), deltas


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


@pytest.mark.parametrize(
    ("text", "path", "strength"),
    [
        ("a.safetensors", "a.safetensors", 1.0),
        ("a.safetensors:0.5", "a.safetensors", 0.5),
        ("dir/a.safetensors:-1.25", "dir/a.safetensors", -1.25),
        ("C:\\loras\\a.safetensors", "C:\\loras\\a.safetensors", 1.0),
        ("C:\\loras\\a.safetensors:2", "C:\\loras\\a.safetensors", 2.0),
    ],
)
def test_parse_lora_arg(text: str, path: str, strength: float) -> None:
    assert parse_lora_arg(text) == LoraSpec(Path(path), strength, strength)


def test_generate_with_lora_equals_merged_checkpoint(models, lora_file, tiny_models_dir: Path, tmp_path: Path) -> None:
    path, deltas = lora_file
    strengths = dict.fromkeys(TARGETS, 0.75)
    merged_dir = write_merged_checkpoint(tiny_models_dir, tmp_path / "merged", hand_merged(models, deltas, strengths))
    common = ["generate", "a red cube", *SMALL, "--dtype", "fp32"]  # exact: no bf16 rounding of the base weights
    out = {name: tmp_path / f"{name}.png" for name in ("lora", "merged", "plain", "two")}
    assert main([*common, "--models", str(tiny_models_dir), "--lora", f"{path}:0.75", "-o", str(out["lora"])]) == 0
    assert main([*common, "--models", str(merged_dir), "-o", str(out["merged"])]) == 0
    assert main([*common, "--models", str(tiny_models_dir), "-o", str(out["plain"])]) == 0
    args = ["--lora", f"{path}:0.5", "--lora", f"{path}:0.25"]  # repeatable: two at once add up to 0.75
    assert main([*common, "--models", str(tiny_models_dir), *args, "-o", str(out["two"])]) == 0
    assert np.array_equal(_pixels(out["lora"]), _pixels(out["merged"]))
    meta = Image.open(out["lora"]).text  # the PNG says which LoRA made it, in both formats
    assert f"LoRA: {path.name}:0.75/0.75" in meta["parameters"]
    graph = json.loads(meta["prompt"])
    assert graph["400"]["class_type"] == "LoraLoader" and graph["400"]["inputs"]["lora_name"] == path.name
    assert graph["13"]["inputs"]["model"] == ["400", 0] and graph["6"]["inputs"]["clip"] == ["400", 1]
    assert np.abs(_pixels(out["two"]) - _pixels(out["lora"])).max() <= 1  # 0.5+0.25 vs 0.75: rounding only
    assert np.abs(_pixels(out["lora"]) - _pixels(out["plain"])).mean() > 1.0  # the LoRA changes the image


def test_generate_refuses_bad_loras(lora_file, tiny_models_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import sd35.cli.generate_runner as runner

    common = ["generate", "x", *SMALL, "--models", str(tiny_models_dir), "-o", str(tmp_path / "x.png")]
    loaded = []
    real = runner.generate_from_files
    monkeypatch.setattr(runner, "generate_from_files", lambda *a, **k: loaded.append(1) or real(*a, **k))
    assert main([*common, "--lora", str(tmp_path / "missing.safetensors")]) == 2
    assert "LoRA file not found" in capsys.readouterr().err and not loaded  # refused before loading
    stem = "lora_unet_double_blocks_0_img_attn_qkv"
    tensors = {f"{stem}.lora_down.weight": torch.zeros(4, 8), f"{stem}.lora_up.weight": torch.zeros(8, 4)}
    flux = save(tmp_path / "flux.safetensors", tensors)
    assert main([*common, "--lora", f"{flux}:0.5"]) == 2
    err = capsys.readouterr().err
    assert "is a LoRA for Flux" in err and "Traceback" not in err


@pytest.fixture
def services(lora_file, tmp_path: Path) -> Services:
    folder = tmp_path / "models" / "loras" / "styles"
    folder.mkdir(parents=True)
    (folder / "style.safetensors").write_bytes(lora_file[0].read_bytes())
    (folder / "notes.txt").write_text("not a model")
    return Services(ModelFolders(roots=(tmp_path / "models",)), output_dir=tmp_path / "out")


def test_lora_nodes(services: Services, base, models, lora_file) -> None:
    registry = NodeRegistry()
    register_lora_nodes(registry, services)
    loader, model_only = registry.get("LoraLoader"), registry.get("LoraLoaderModelOnly")
    assert loader.input("lora_name").choices_fn() == ["styles/style.safetensors"]
    model, clip = DiffusionModel(network=models["mmditx"], name="m"), Clip(base.text, DevicePolicy())
    name = "styles/style.safetensors"
    new_model, new_clip = loader.function(model=model, clip=clip, lora_name=name, strength_model=0.5, strength_clip=2.0)
    expected = hand_merged(models, lora_file[1], {"mmditx": 0.5, "clip_l": 2.0, "t5xxl": 2.0})
    patched = {
        "mmditx": new_model.network,
        "clip_l": new_clip.stack.encoders.clip_l,
        "t5xxl": new_clip.stack.encoders.t5,
    }
    for component, params in expected.items():
        for param, want in params.items():
            assert (patched[component].get_parameter(param) - want).abs().max().item() <= 1e-6
    assert new_model.name == "m" and model.network is models["mmditx"] and clip.stack is base.text  # inputs intact
    assert new_clip.stack.encoders.clip_g is base.text.encoders.clip_g  # untouched encoder shared
    assert new_clip.policy == clip.policy and new_clip.stack.cache is base.text.cache

    assert loader.function(model=model, clip=clip, lora_name=name, strength_model=0, strength_clip=0) == (model, clip)
    (only,) = model_only.function(model=model, lora_name=name, strength_model=0.5)
    assert torch.equal(
        only.network.joint_blocks[0].x_block.attn.qkv.weight, new_model.network.joint_blocks[0].x_block.attn.qkv.weight
    )
    assert loader.fingerprint(lora_name=name) is not None


def test_object_info_equals_comfyuis(services: Services) -> None:
    """Both specs against ComfyUI v0.3.64's /object_info sample (lora_name's file list blanked there). The
    sample gives LoraLoaderModelOnly LoraLoader's two output tooltips (inherited) for its one output."""
    if not OBJECT_INFO.is_file():
        pytest.skip(f"{OBJECT_INFO} is not present")
    reference = json.loads(OBJECT_INFO.read_text())
    registry = NodeRegistry()
    register_lora_nodes(registry, services)
    for name in ("LoraLoader", "LoraLoaderModelOnly"):
        info = json.loads(json.dumps(node_object_info(registry.get(name))))
        lora_name = info["input"]["required"]["lora_name"]
        assert lora_name[0] == ["styles/style.safetensors"]
        lora_name[0] = []
        want = reference[name]
        if name == "LoraLoaderModelOnly":
            assert want.pop("output_tooltips")[0] == info.pop("output_tooltips")[0]
        assert info == want, name


def test_server_lists_loras(services: Services) -> None:
    from sd35.server.routes_info import model_folders

    assert model_folders(services)["loras"] == ["styles/style.safetensors"]

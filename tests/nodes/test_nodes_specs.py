"""Node schemas: names, input order, types, defaults, ranges and outputs equal ComfyUI's /object_info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nodes_support import OBJECT_INFO, load_json

from sd35.nodes import ModelFolders, Services, build_registry

ISSUE_NODES = {
    "CheckpointLoaderSimple", "TripleCLIPLoader", "DualCLIPLoader", "CLIPLoader", "VAELoader", "UNETLoader",
    "CLIPTextEncode", "CLIPTextEncodeSD3", "ConditioningZeroOut", "ConditioningSetTimestepRange",
    "ConditioningCombine", "ConditioningConcat", "ConditioningAverage", "EmptySD3LatentImage", "EmptyLatentImage",
    "LatentUpscale", "LatentUpscaleBy", "ModelSamplingSD3", "SkipLayerGuidanceSD3", "KSampler", "KSamplerAdvanced",
    "VAEDecode", "VAEDecodeTiled", "VAEEncode", "LoadImage", "ImageScale", "SaveImage", "PreviewImage",
}  # fmt: skip
FILE_INPUTS = {"ckpt_name", "clip_name", "clip_name1", "clip_name2", "clip_name3", "vae_name", "unet_name", "image"}

# Nodes missing from the /object_info sample: their input order, types and ranges as in ComfyUI v0.3.64 nodes.py
EXTRA = {
    "ConditioningConcat": (
        {"conditioning_to": ["CONDITIONING"], "conditioning_from": ["CONDITIONING"]},
        ["CONDITIONING"],
    ),
    "ConditioningAverage": (
        {
            "conditioning_to": ["CONDITIONING"],
            "conditioning_from": ["CONDITIONING"],
            "conditioning_to_strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
        },
        ["CONDITIONING"],
    ),
    "LatentUpscale": (
        {
            "samples": ["LATENT"],
            "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]],
            "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 8}],
            "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 8}],
            "crop": [["disabled", "center"]],
        },
        ["LATENT"],
    ),
    "LatentUpscaleBy": (
        {
            "samples": ["LATENT"],
            "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]],
            "scale_by": ["FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}],
        },
        ["LATENT"],
    ),
    "ImageScale": (
        {
            "image": ["IMAGE"],
            "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
            "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
            "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
            "crop": [["disabled", "center"]],
        },
        ["IMAGE"],
    ),
    "VAEDecodeTiled": (
        {
            "samples": ["LATENT"],
            "vae": ["VAE"],
            "tile_size": ["INT", {"default": 512, "min": 64, "max": 4096, "step": 32}],
            "overlap": ["INT", {"default": 64, "min": 0, "max": 4096, "step": 32}],
            "temporal_size": ["INT", {"default": 64, "min": 8, "max": 4096, "step": 4}],
            "temporal_overlap": ["INT", {"default": 8, "min": 4, "max": 4096, "step": 4}],
        },
        ["IMAGE"],
    ),
}


def _normalized(info: dict[str, Any]) -> dict[str, Any]:
    """Drop what only differs in form: False flags of v3 nodes, all-None tooltips, empty option dicts,
    and the model-file lists (the sample has them blanked)."""
    info = json.loads(json.dumps(info))
    for key in ("deprecated", "experimental", "api_node"):
        if info.get(key) is False:
            del info[key]
    if all(t is None for t in info.get("output_tooltips") or [None]):
        info.pop("output_tooltips", None)
    if len(info.get("output_tooltips") or info["output"]) != len(info["output"]):
        # ComfyUI's LoraLoaderModelOnly inherits LoraLoader's two tooltips for its one output
        info.pop("output_tooltips", None)
    for section in info["input"].values():
        for name, entry in section.items():
            if isinstance(entry, list) and len(entry) == 2 and entry[1] == {}:
                section[name] = entry = entry[:1]
            if name in FILE_INPUTS and isinstance(entry, list):
                if isinstance(entry[0], list):
                    entry[0] = []
                elif entry[0] == "COMBO":
                    entry[1]["options"] = []
    return info


def _registry(tmp_path: Path):
    return build_registry(Services(ModelFolders(), tmp_path / "out"))


def test_every_issue_node_is_registered(tmp_path: Path) -> None:
    assert set(_registry(tmp_path).class_types()) >= ISSUE_NODES


def test_object_info_equals_comfyuis_for_every_sampled_node(tmp_path: Path, shared_dir: Path) -> None:
    reference = load_json(OBJECT_INFO)
    registry = _registry(tmp_path)
    compared = [name for name in registry.class_types() if name in reference]
    assert len(compared) == 25  # the sample's 23 SD3 nodes + LoraLoader, LoraLoaderModelOnly
    for name in compared:
        ours, theirs = _normalized(registry.object_info_for(name)), _normalized(reference[name])
        if name == "LoraLoaderModelOnly":  # the sample's tooltips don't fit its one output (see _normalized)
            ours.pop("output_tooltips", None)
        assert ours == theirs, name


def test_nodes_outside_the_sample_have_comfyuis_inputs(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    for name, (inputs, outputs) in EXTRA.items():
        info = registry.object_info_for(name)
        got = {
            k: [v[0], {o: x for o, x in v[1].items() if o != "tooltip"}] if len(v) > 1 else v
            for k, v in info["input"]["required"].items()
        }
        assert got == inputs, name
        assert info["input_order"]["required"] == list(inputs) and info["output"] == outputs, name


def test_model_choices_are_listed_from_the_folders_at_request_time(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "checkpoints" / "sub").mkdir(parents=True)
    (root / "clip").mkdir()
    registry = build_registry(Services(ModelFolders((root,)), tmp_path / "out"))

    def choices(node: str, name: str) -> list[str]:
        entry = registry.object_info_for(node)["input"]["required"][name]
        return entry[0] if isinstance(entry[0], list) else entry[1]["options"]

    assert choices("CheckpointLoaderSimple", "ckpt_name") == []
    (root / "checkpoints" / "b.safetensors").write_bytes(b"")
    (root / "checkpoints" / "sub" / "a.safetensors").write_bytes(b"")
    (root / "checkpoints" / "notes.txt").write_text("not a model")
    (root / "clip" / "clip_l.safetensors").write_bytes(b"")  # the legacy clip/ folder counts as text_encoders/
    assert choices("CheckpointLoaderSimple", "ckpt_name") == ["b.safetensors", "sub/a.safetensors"]
    assert choices("TripleCLIPLoader", "clip_name1") == ["clip_l.safetensors"]
    assert choices("VAELoader", "vae_name") == ["pixel_space"]

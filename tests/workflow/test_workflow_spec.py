"""NodeSpec / NodeRegistry / object_info: the /object_info JSON matches ComfyUI's real schemas."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from wf_toys import SAMPLES, load_json

from sd35.workflow import InputSpec, NodeRegistry, NodeSpec, OutputSpec, node_object_info, spec_from_object_info

OBJECT_INFO = load_json(SAMPLES / "object_info_sd3_subset.json")


def _normalize(info: dict[str, Any]) -> dict[str, Any]:
    """Differences ComfyUI itself is inconsistent about: ["IMAGE"] vs ["IMAGE", {}], V3-only keys
    that are False, output_tooltips that are all null or longer than the outputs."""
    info = copy.deepcopy(info)
    for section in ("required", "optional"):
        for name, entry in info["input"].get(section, {}).items():
            info["input"][section][name] = [entry[0], entry[1] if len(entry) > 1 else {}]
    for key in ("deprecated", "experimental", "api_node"):
        if info.get(key) is False:
            del info[key]
    if "output_tooltips" in info:  # LoraLoaderModelOnly inherits LoraLoader's 2 tooltips for 1 output
        info["output_tooltips"] = info["output_tooltips"][: len(info["output"])]
    if all(t is None for t in info.get("output_tooltips", [None])):
        info.pop("output_tooltips", None)
    return info


def _noop(**kwargs: Any) -> tuple:
    return ()


@pytest.mark.parametrize("class_type", sorted(OBJECT_INFO))
def test_object_info_round_trips_every_real_node(class_type: str) -> None:
    spec = spec_from_object_info(OBJECT_INFO[class_type], _noop)
    assert [i.name for i in spec.ordered_inputs] == OBJECT_INFO[class_type]["input_order"]["required"] + (
        OBJECT_INFO[class_type]["input_order"].get("optional", [])
    )
    assert _normalize(node_object_info(spec)) == _normalize(OBJECT_INFO[class_type])


def test_hand_written_ksampler_spec_matches_comfyui() -> None:
    samplers = tuple(OBJECT_INFO["KSampler"]["input"]["required"]["sampler_name"][0])
    schedulers = tuple(OBJECT_INFO["KSampler"]["input"]["required"]["scheduler"][0])
    tips = {k: v[1]["tooltip"] for k, v in OBJECT_INFO["KSampler"]["input"]["required"].items()}
    spec = NodeSpec(
        "KSampler",
        (
            InputSpec("model", "MODEL", tooltip=tips["model"]),
            InputSpec(
                "seed", "INT", default=0, min=0, max=2**64 - 1, control_after_generate=True, tooltip=tips["seed"]
            ),
            InputSpec("steps", "INT", default=20, min=1, max=10000, tooltip=tips["steps"]),
            InputSpec("cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=tips["cfg"]),
            InputSpec("sampler_name", "COMBO", choices=samplers, tooltip=tips["sampler_name"]),
            InputSpec("scheduler", "COMBO", choices_fn=lambda: list(schedulers), tooltip=tips["scheduler"]),
            InputSpec("positive", "CONDITIONING", tooltip=tips["positive"]),
            InputSpec("negative", "CONDITIONING", tooltip=tips["negative"]),
            InputSpec("latent_image", "LATENT", tooltip=tips["latent_image"]),
            InputSpec("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=tips["denoise"]),
        ),
        (OutputSpec("LATENT", tooltip="The denoised latent."),),
        _noop,
        category="sampling",
        display_name="KSampler",
        description=OBJECT_INFO["KSampler"]["description"],
    )
    registry = NodeRegistry([spec])
    assert registry.object_info_for("KSampler") == OBJECT_INFO["KSampler"]
    assert registry.object_info() == {"KSampler": OBJECT_INFO["KSampler"]}


def test_hidden_inputs_and_output_node_shape() -> None:
    spec = NodeSpec(
        "PreviewImage",
        (InputSpec("images", "IMAGE"),),
        (),
        _noop,
        output_node=True,
        category="image",
        display_name="Preview Image",
        description=OBJECT_INFO["PreviewImage"]["description"],
        hidden=("prompt", "extra_pnginfo"),
    )
    assert node_object_info(spec) == OBJECT_INFO["PreviewImage"]


def test_dynamic_choices_are_resolved_at_request_time() -> None:
    files = ["a.safetensors"]
    spec = NodeSpec("Loader", (InputSpec("name", "COMBO", choices_fn=lambda: files),), (OutputSpec("MODEL"),), _noop)
    registry = NodeRegistry([spec])
    assert registry.object_info_for("Loader")["input"]["required"]["name"] == [["a.safetensors"]]
    files.append("b.safetensors")
    assert registry.object_info_for("Loader")["input"]["required"]["name"] == [["a.safetensors", "b.safetensors"]]
    v3 = NodeSpec("L3", (InputSpec("name", "COMBO", choices_fn=lambda: files, combo_style="v3"),), (), _noop)
    assert node_object_info(v3)["input"]["required"]["name"] == [
        "COMBO",
        {"multiselect": False, "options": ["a.safetensors", "b.safetensors"]},
    ]


def test_registry_rules() -> None:
    spec = NodeSpec("A", (), (), _noop)
    registry = NodeRegistry([spec])
    assert "A" in registry and "B" not in registry and 3 not in registry
    assert registry.get("A") is spec and registry.find("B") is None and len(registry) == 1
    with pytest.raises(ValueError, match="already registered"):
        registry.register(NodeSpec("A", (), (), _noop))
    with pytest.raises(KeyError, match="unknown node type 'B'"):
        registry.get("B")
    assert NodeRegistry().object_info() == {}  # registries are separate objects, no global table


def test_spec_rejects_inconsistent_definitions() -> None:
    with pytest.raises(ValueError, match="choices need type COMBO"):
        InputSpec("x", "INT", choices=("a",))
    with pytest.raises(ValueError, match="duplicate input names"):
        NodeSpec("A", (InputSpec("x", "INT"), InputSpec("x", "FLOAT")), (), _noop)
    with pytest.raises(ValueError, match="unknown hidden inputs"):
        NodeSpec("A", (), (), _noop, hidden=("secret",))


def test_widget_order_is_required_then_optional_and_counts_hidden_slots() -> None:
    spec = NodeSpec(
        "W",
        (
            InputSpec("opt", "INT", required=False),
            InputSpec("model", "MODEL"),
            InputSpec("seed", "INT", control_after_generate=True),
            InputSpec("forced", "FLOAT", force_input=True),
            InputSpec("image", "COMBO", choices=(), image_upload=True),
        ),
        (),
        _noop,
    )
    assert [i.name for i in spec.widget_inputs] == ["seed", "image", "opt"]
    assert [i.extra_widget_slots for i in spec.widget_inputs] == [1, 1, 0]

"""The shared workflows through the engine with the real nodes on tiny weights: equality with the library
call written by hand, UI format == API format, and caching across runs (loaders are not re-run)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from nodes_support import (
    LARGE_TEMPLATE,
    OFFICIAL_API,
    OFFICIAL_UI,
    cached_nodes,
    executed_nodes,
    load_json,
    run_prompt,
    small,
)

from sd35.nodes import Services
from sd35.nodes.loaders import text_stack
from sd35.pipeline.components import VAE, DiffusionModel
from sd35.pipeline.conditioning import negative_for_request, single
from sd35.pipeline.generate import SamplingSettings, decode_latents, encode_prompt, sample_latents
from sd35.sampling.schedule import ModelSampling
from sd35.workflow import OutputCache, ui_to_api

STEPS = 10


def test_official_workflow_equals_the_library_call_by_hand(
    shared_dir: Path, registry, services: Services, tiny_model_paths: dict[str, Path]
) -> None:
    """Same seed, conditioning with its timestep ranges, sampler, scheduler, shift; size and steps are made
    small here (the negative still switches to zeros mid-schedule); the full 1280×768, 40-step comparison
    is tests/integration/test_run_workflows.py::test_official_workflow_full_size_equals_library (slow)."""
    prompt = small(load_json(OFFICIAL_API), size=(128, 96), steps=STEPS)
    result, _ = run_prompt(prompt, registry)
    from_workflow = result.outputs["8"][0]

    from sd35.loading.load import load_component

    policy = services.policy
    text = text_stack(
        services,
        {
            "clip_l": tiny_model_paths["clip_l"],
            "clip_g": tiny_model_paths["clip_g"],
            "t5xxl": tiny_model_paths["t5xxl"],
        },
    )
    network = load_component(tiny_model_paths["checkpoint"], "mmditx")
    vae = VAE(load_component(tiny_model_paths["checkpoint"], "vae"))
    positive, _ = encode_prompt(text, "beautiful scenery nature glass bottle landscape, purple galaxy bottle,", policy)
    empty, _ = encode_prompt(text, "", policy)
    model = DiffusionModel(network=network, model_sampling=ModelSampling(shift=3.0))
    settings = SamplingSettings(seed=193277626003815, steps=STEPS, cfg=5.5, sampler="dpmpp_2m", scheduler="sgm_uniform")
    latent = sample_latents(
        model, single(positive), negative_for_request(empty, 0.2), torch.zeros(1, 16, 12, 16), settings, policy
    )
    by_hand = decode_latents(vae, latent, policy)
    assert from_workflow.shape == by_hand.shape == (1, 96, 128, 3)
    assert torch.equal(from_workflow, by_hand), float((from_workflow - by_hand).abs().max())
    # and the negative really is two ranged entries: the zeroed one changes the result
    plain = sample_latents(model, single(positive), single(empty), torch.zeros(1, 16, 12, 16), settings, policy)
    assert float((decode_latents(vae, plain, policy) - by_hand).abs().max()) > 1e-3


def test_ui_workflow_and_its_api_conversion_give_identical_images(shared_dir: Path, registry) -> None:
    api = load_json(OFFICIAL_API)
    converted = ui_to_api(load_json(OFFICIAL_UI), registry)
    assert {k: (v["class_type"], v["inputs"]) for k, v in converted.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in api.items()
    }
    a, _ = run_prompt(small(api), registry)
    b, _ = run_prompt(small(converted), registry)
    assert torch.equal(a.outputs["8"][0], b.outputs["8"][0])


def test_prompt_change_does_not_rerun_loaders(shared_dir: Path, registry) -> None:
    cache = OutputCache()
    prompt = small(load_json(OFFICIAL_API), steps=2)
    _, first = run_prompt(prompt, registry, cache)
    assert {"4", "11", "13", "71", "6"} <= set(executed_nodes(first))
    changed = copy.deepcopy(prompt)
    changed["6"]["inputs"]["text"] = "a red fox in the snow"
    _, second = run_prompt(changed, registry, cache)
    assert executed_nodes(second) == ["6", "294", "8", "50"]  # the loaders and the negative branch are cached
    assert {"4", "11", "13", "67", "68", "69", "70", "71", "135"} == set(cached_nodes(second))


def test_sd35_large_template_runs_on_an_all_in_one_fp8_checkpoint(shared_dir: Path, registry, services) -> None:
    """The ComfyUI template's checkpoint holds the text encoders (and fp8 weights): its CLIP output is used."""
    prompt = small(ui_to_api(load_json(LARGE_TEMPLATE), registry), steps=2)
    result, _ = run_prompt(prompt, registry)
    images = result.ui_outputs["9"]["images"]
    assert [i["type"] for i in images] == ["output"] and images[0]["filename"] == "ComfyUI_00001_.png"
    assert (services.output_dir / images[0]["filename"]).is_file()
    clip = result.outputs["4"][1]
    assert clip is not None and clip.stack.encoders.t5 is not None


@pytest.mark.parametrize(
    "name", ["SD3.5M_example.json", "SD3.5M_example_workflow.json", "SD3.5M_example_workflow_api.json"]
)
def test_shared_medium_workflows_run(shared_dir: Path, registry, name: str) -> None:
    data = load_json(shared_dir / "workflows" / name)
    prompt = ui_to_api(data, registry) if "nodes" in data else data
    result, _ = run_prompt(small(prompt, steps=2), registry)
    image = result.outputs["8"][0]
    assert image.shape == (1, 64, 64, 3) and float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert result.ui_outputs["50"]["images"][0]["type"] == "temp"

"""Sampling nodes: model patches return new values, SLG's sigma window (pinned at node time, as ComfyUI),
KSampler/KSamplerAdvanced on tiny weights (progress, cancel, split runs, empty 4-channel latents), and
samplers sd35 lacks refused at validation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from nodes_support import run_prompt

from sd35.nodes.sampling import (
    check_rescaling,
    model_sampling_sd3,
    parse_layers,
    skip_layer_guidance_dit,
    skip_layer_guidance_sd3,
)
from sd35.pipeline.components import DiffusionModel
from sd35.sampling.schedule import ModelSampling, get_sigmas
from sd35.workflow import CancelToken, OutputCache, Progress, WorkflowCancelled, execute, validate


def _prompt(sampler: dict[str, Any] | None = None, latent: str = "EmptySD3LatentImage") -> dict[str, Any]:
    """checkpoint + text encoders → KSampler (32×32, 4 steps, euler) → VAEDecode → PreviewImage."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.5_medium.safetensors"}},
        "2": {
            "class_type": "TripleCLIPLoader",
            "inputs": {
                "clip_name1": "clip_l.safetensors",
                "clip_name2": "clip_g.safetensors",
                "clip_name3": "t5xxl_fp16.safetensors",
            },
        },
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "5": {"class_type": latent, "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "6": sampler
        or {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 7,
                "steps": 4,
                "cfg": 4.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["3", 0],
                "negative": ["4", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }


def _advanced(start: int, end: int, add_noise: str, leftover: str, latent: list) -> dict[str, Any]:
    return {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            "model": ["1", 0],
            "add_noise": add_noise,
            "noise_seed": 7,
            "steps": 4,
            "cfg": 4.0,
            "sampler_name": "euler",
            "scheduler": "simple",
            "positive": ["3", 0],
            "negative": ["4", 0],
            "latent_image": latent,
            "start_at_step": start,
            "end_at_step": end,
            "return_with_leftover_noise": leftover,
        },
    }


def _model() -> DiffusionModel:
    return DiffusionModel(network=torch.nn.Identity())  # type: ignore[arg-type]


def test_model_sampling_sd3_returns_a_new_model() -> None:
    model = _model()
    (patched,) = model_sampling_sd3(model, 6.0)
    assert patched.model_sampling == ModelSampling(shift=6.0) and model.model_sampling == ModelSampling(shift=3.0)
    assert patched.network is model.network


def test_skip_layer_guidance_window_and_layers() -> None:
    assert parse_layers("7, 8, 9") == (7, 8, 9) and parse_layers(" 7;9x10") == (7, 9, 10)
    model = _model()
    assert skip_layer_guidance_sd3(model, "none", 3.0, 0.01, 0.15)[0] is model  # no layers: unchanged
    (slg_model,) = skip_layer_guidance_sd3(model, "7, 8, 9", 3.0, 0.01, 0.15)
    assert model.slg is None and slg_model.slg.layers == (7, 8, 9) and slg_model.slg.rule == "sigma"
    ms = ModelSampling(shift=3.0)
    sigmas = get_sigmas("sgm_uniform", 40, ms)[:-1].tolist()
    active = [i for i, s in enumerate(sigmas) if slg_model.slg.active(i, 40, s, ms)]
    assert active == [1, 2, 3, 4, 5, 6]  # ComfyUI measured: steps 1–6 (docs comfyui.md §3)
    # the window was fixed with the shift the node saw; a later ModelSamplingSD3 does not move it (ComfyUI)
    (shifted,) = model_sampling_sd3(slg_model, 6.0)
    assert shifted.slg.sigma_window(shifted.model_sampling) == slg_model.slg.sigma_window(ms)
    (dit,) = skip_layer_guidance_dit(model, "7, 8, 9", "1, 2", 3.0, 0.01, 0.15, 0.0)
    assert dit.slg == slg_model.slg  # SD3 has no single blocks: SkipLayerGuidanceDiT = the SD3 node
    assert skip_layer_guidance_dit(model, "", "1, 2", 3.0, 0.01, 0.15, 0.0)[0] is model
    assert isinstance(check_rescaling(0.5), str) and check_rescaling(0.0) is True


def test_unimplemented_sampler_is_refused_at_validation(registry) -> None:
    prompt = _prompt()
    prompt["6"]["inputs"]["sampler_name"] = "euler_cfg_pp"  # a ComfyUI name sd35 does not implement
    result = validate(prompt, registry)
    (error,) = result.node_errors["6"]["errors"]
    assert error["type"] == "custom_validation_failed" and "euler_cfg_pp" in error["details"]


def test_ksampler_reports_progress_and_can_be_cancelled(registry) -> None:
    result, events = run_prompt(_prompt(), registry)
    steps = [(e.value, e.max) for e in events if isinstance(e, Progress) and e.node == "6"]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.outputs["6"][0].samples.shape == (1, 16, 4, 4)
    token = CancelToken()
    prompt = copy.deepcopy(_prompt())
    prompt["6"]["inputs"]["seed"] = 8

    def sink(event: Any) -> None:
        if isinstance(event, Progress) and event.value == 2:
            token.cancel()  # as POST /interrupt would, from another thread

    with pytest.raises(WorkflowCancelled) as err:
        execute(prompt, registry, cache=OutputCache(), events=sink, cancel=token)
    assert err.value.node_id == "6" and "7" not in err.value.executed


def test_advanced_split_run_equals_one_run_and_empty_latent_is_widened(registry) -> None:
    """euler over steps 0–2 (leftover noise kept) then 2–4 (no new noise) = one 4-step KSampler run."""
    whole, _ = run_prompt(_prompt(), registry)
    split = _prompt(_advanced(0, 2, "enable", "enable", ["5", 0]))
    split["9"] = _advanced(2, 10000, "disable", "disable", ["6", 0])
    split["7"]["inputs"]["samples"] = ["9", 0]
    two, _ = run_prompt(split, registry)
    a, b = whole.outputs["6"][0].samples, two.outputs["9"][0].samples
    assert float((a - b).abs().max()) < 1e-4
    sd1, _ = run_prompt(_prompt(latent="EmptyLatentImage"), registry)  # 4 zero channels → 16, as ComfyUI
    assert torch.equal(sd1.outputs["6"][0].samples, a)

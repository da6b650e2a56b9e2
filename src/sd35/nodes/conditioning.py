"""Conditioning nodes: CLIPTextEncode, CLIPTextEncodeSD3, ConditioningZeroOut, ConditioningSetTimestepRange,
ConditioningCombine, ConditioningConcat, ConditioningAverage (ComfyUI `nodes.py`, `comfy_extras/nodes_sd3.py`).

A CONDITIONING is a tuple of `CondEntry` (context [1, L, C], pooled [1, P], start/end percent). Combining
keeps every entry; the sampler averages the predictions of the entries active at each sigma, so the
official workflow's negative (empty prompt for 0–20 % of the schedule, zeros after) behaves as in ComfyUI.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import Any

import torch

from sd35.nodes.values import Clip, require
from sd35.pipeline.conditioning import CondEntry, CondList, set_range, single, zero_out
from sd35.pipeline.generate import encode_prompt
from sd35.runtime.devices import on_device
from sd35.text.prompt import tokenize_sd3
from sd35.types import Conditioning
from sd35.workflow import InputSpec, NodeSpec, OutputSpec

log = logging.getLogger(__name__)

CLIP_SOURCE = "clip or text encoder model"


def _on_cpu(cond: Conditioning) -> Conditioning:
    return Conditioning(cond.context.float().cpu(), cond.pooled.float().cpu())


def clip_text_encode(clip: Clip | None, text: str, **_: Any) -> tuple[CondList]:
    """Prompt → one entry (ComfyUI CLIPTextEncode; prompt weights and chunking as ComfyUI's tokenizer)."""
    require(clip, "clip", CLIP_SOURCE)
    cond, _warnings = encode_prompt(clip.stack, text, clip.policy)
    return (single(_on_cpu(cond)),)


def clip_text_encode_sd3(
    clip: Clip | None, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str, **_: Any
) -> tuple[CondList]:
    """One text per encoder (ComfyUI CLIPTextEncodeSD3); "none" padding sends empty fields as no tokens."""
    require(clip, "clip", CLIP_SOURCE)
    stack = clip.stack
    tokens = tokenize_sd3(stack.tokenizers, clip_l, clip_g, t5xxl, empty_padding)  # type: ignore[arg-type]
    with contextlib.ExitStack() as placed:
        for module in stack.encoders.modules():
            placed.enter_context(on_device(module, clip.policy))
        result = stack.cache.encode_tokens(stack.encoders, tokens)
    for warning in result.warnings:
        log.warning("%s", warning)
    return (single(_on_cpu(result.conditioning)),)


def conditioning_zero_out(conditioning: CondList, **_: Any) -> tuple[CondList]:
    """Context and pooled zeroed, ranges kept (ComfyUI ConditioningZeroOut)."""
    return (zero_out(conditioning),)


def conditioning_set_timestep_range(conditioning: CondList, start: float, end: float, **_: Any) -> tuple[CondList]:
    return (set_range(conditioning, start, end),)


def conditioning_combine(conditioning_1: CondList, conditioning_2: CondList, **_: Any) -> tuple[CondList]:
    """Both lists' entries; their predictions are averaged at sampling time (ComfyUI ConditioningCombine)."""
    return (tuple(conditioning_1) + tuple(conditioning_2),)


def _first_from(conditioning_from: CondList, node: str) -> CondEntry:
    if len(conditioning_from) > 1:
        log.warning(
            "Warning: %s conditioning_from contains more than 1 cond, only the first one will actually be "
            "applied to conditioning_to.",
            node,
        )
    return conditioning_from[0]


def conditioning_concat(conditioning_to: CondList, conditioning_from: CondList, **_: Any) -> tuple[CondList]:
    """Each `to` entry's context gets the first `from` context appended on the token axis (ComfyUI
    ConditioningConcat); pooled and ranges stay those of `to`."""
    source = _first_from(conditioning_from, "ConditioningConcat").conditioning.context
    out = []
    for entry in conditioning_to:
        context = torch.cat([entry.conditioning.context, source.to(entry.conditioning.context)], dim=1)
        out.append(replace(entry, conditioning=Conditioning(context, entry.conditioning.pooled)))
    return (tuple(out),)


def conditioning_average(
    conditioning_to: CondList, conditioning_from: CondList, conditioning_to_strength: float, **_: Any
) -> tuple[CondList]:
    """to·w + from·(1 − w), the first `from` context cut or zero-padded to each `to` length; pooled blended
    the same way (ComfyUI ConditioningAverage `addWeighted`)."""
    w = conditioning_to_strength
    source = _first_from(conditioning_from, "ConditioningAverage").conditioning
    out = []
    for entry in conditioning_to:
        target = entry.conditioning.context
        blended_from = source.context[:, : target.shape[1]].to(target)
        if blended_from.shape[1] < target.shape[1]:
            pad = target.new_zeros(1, target.shape[1] - blended_from.shape[1], target.shape[2])
            blended_from = torch.cat([blended_from, pad], dim=1)
        context = torch.mul(target, w) + torch.mul(blended_from, 1.0 - w)
        pooled = torch.mul(entry.conditioning.pooled, w) + torch.mul(source.pooled.to(target), 1.0 - w)
        out.append(replace(entry, conditioning=Conditioning(context, pooled)))
    return (tuple(out),)


def conditioning_specs() -> list[NodeSpec]:
    return [*_encode_specs(), *_list_specs()]


def _encode_specs() -> list[NodeSpec]:
    cond = OutputSpec("CONDITIONING")
    text = {"multiline": True, "dynamic_prompts": True}
    return [
        NodeSpec(
            "CLIPTextEncode",
            inputs=(
                InputSpec("text", "STRING", tooltip="The text to be encoded.", **text),
                InputSpec("clip", "CLIP", tooltip="The CLIP model used for encoding the text."),
            ),
            outputs=(
                OutputSpec(
                    "CONDITIONING",
                    tooltip="A conditioning containing the embedded text used to guide the diffusion model.",
                ),
            ),
            function=clip_text_encode,
            category="conditioning",
            display_name="CLIP Text Encode (Prompt)",
            description="Encodes a text prompt using a CLIP model into an embedding that can be used to guide "
            "the diffusion model towards generating specific images.",
        ),
        NodeSpec(
            "CLIPTextEncodeSD3",
            inputs=(
                InputSpec("clip", "CLIP"),
                InputSpec("clip_l", "STRING", **text),
                InputSpec("clip_g", "STRING", **text),
                InputSpec("t5xxl", "STRING", **text),
                InputSpec("empty_padding", "COMBO", choices=("none", "empty_prompt"), combo_style="v3"),
            ),
            outputs=(cond,),
            function=clip_text_encode_sd3,
            category="advanced/conditioning",
            python_module="comfy_extras.nodes_sd3",
        ),
    ]


def _list_specs() -> list[NodeSpec]:
    cond = OutputSpec("CONDITIONING")

    def plain(name: str, **kw: Any) -> InputSpec:
        return InputSpec(name, "CONDITIONING", **kw)

    return [
        NodeSpec(
            "ConditioningZeroOut",
            inputs=(plain("conditioning"),),
            outputs=(cond,),
            function=conditioning_zero_out,
            category="advanced/conditioning",
            display_name="ConditioningZeroOut",
        ),
        NodeSpec(
            "ConditioningSetTimestepRange",
            inputs=(
                plain("conditioning"),
                InputSpec("start", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001),
                InputSpec("end", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.001),
            ),
            outputs=(cond,),
            function=conditioning_set_timestep_range,
            category="advanced/conditioning",
            display_name="ConditioningSetTimestepRange",
        ),
        NodeSpec(
            "ConditioningCombine",
            inputs=(plain("conditioning_1"), plain("conditioning_2")),
            outputs=(cond,),
            function=conditioning_combine,
            category="conditioning",
            display_name="Conditioning (Combine)",
        ),
        NodeSpec(
            "ConditioningConcat",
            inputs=(plain("conditioning_to"), plain("conditioning_from")),
            outputs=(cond,),
            function=conditioning_concat,
            category="conditioning",
            display_name="Conditioning (Concat)",
        ),
        NodeSpec(
            "ConditioningAverage",
            inputs=(
                plain("conditioning_to"),
                plain("conditioning_from"),
                InputSpec("conditioning_to_strength", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
            ),
            outputs=(cond,),
            function=conditioning_average,
            category="conditioning",
            # ComfyUI's display-name table has the key "ConditioningAverage " (trailing space), so its
            # /object_info shows the class name
            display_name="ConditioningAverage",
        ),
    ]

"""What a generated PNG says about itself: an A1111-style `parameters` text and a ComfyUI API `prompt` graph.

The graph mirrors the official SD3.5 Medium workflow (`SD3.5M_example_workflow_api.json`) with the request's
values, plus a SkipLayerGuidanceSD3 node when SLG is on, so ComfyUI (and `sd35 run`) can load the image.
Note: sd35 generate's default SLG window counts steps (Stability's reference); the ComfyUI node gates by
sigma, so re-running the graph may differ slightly on the steps at the window's edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sd35.pipeline.request import GenerationRequest

LoraUse = tuple[str, float, float]  # (file name, model strength, text-encoder strength)


def a1111_parameters(request: GenerationRequest, model_name: str, loras: Sequence[LoraUse] = ()) -> str:
    """The `parameters` text chunk A1111/Forge/Civitai read: prompt, negative, then `Key: value` pairs."""
    pairs = [
        ("Steps", request.steps),
        ("Sampler", request.sampler),
        ("Schedule type", request.scheduler),
        ("CFG scale", request.cfg),
        ("Seed", request.seed),
        ("Size", f"{request.width}x{request.height}"),
        ("Model", model_name),
        ("Shift", request.shift),
    ]
    if request.slg is not None:
        layers = ",".join(str(i) for i in request.slg.layers)
        pairs.append(("SLG", f"layers {layers} scale {request.slg.scale} {request.slg.start}-{request.slg.end}"))
    if request.negative_zero_after is not None:
        pairs.append(("Negative zeroed after", request.negative_zero_after))
    if request.init_image is not None:
        pairs.append(("Denoising strength", request.denoise))
    if loras:
        pairs.append(("LoRA", "; ".join(f"{name}:{sm:g}/{sc:g}" for name, sm, sc in loras)))
    pairs.append(("Version", "sd35"))
    text = request.prompt + "\n"
    if request.negative_prompt:
        text += f"Negative prompt: {request.negative_prompt}\n"
    return text + ", ".join(f"{k}: {v}" for k, v in pairs)


def _node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"inputs": inputs, "class_type": class_type, "_meta": {"title": class_type}}


def comfy_prompt(request: GenerationRequest, names: dict[str, str], loras: Sequence[LoraUse] = ()) -> dict[str, Any]:
    """ComfyUI API-format graph for a request; `names` gives model/clip_l/clip_g/t5xxl (and init_image) file
    names; LoRAs become a chain of LoraLoader nodes between the loaders and their users."""
    model_link = ["13", 0]
    graph: dict[str, Any] = {
        "4": _node("CheckpointLoaderSimple", ckpt_name=names.get("model", "sd3.5_medium.safetensors")),
        "11": _node(
            "TripleCLIPLoader",
            clip_name1=names.get("clip_g", "clip_g.safetensors"),
            clip_name2=names.get("clip_l", "clip_l.safetensors"),
            clip_name3=names.get("t5xxl", "t5xxl_fp16.safetensors"),
        ),
        "6": _node("CLIPTextEncode", text=request.prompt, clip=["11", 0]),
        "71": _node("CLIPTextEncode", text=request.negative_prompt, clip=["11", 0]),
        "135": _node("EmptySD3LatentImage", width=request.width, height=request.height, batch_size=request.batch_size),
        "13": _node("ModelSamplingSD3", model=["4", 0], shift=request.shift),
        "8": _node("VAEDecode", samples=["294", 0], vae=["4", 2]),
        "9": _node("SaveImage", images=["8", 0], filename_prefix="sd35"),
    }
    base_model, clip = ["4", 0], ["11", 0]
    for i, (name, strength_model, strength_clip) in enumerate(loras):
        node = str(400 + i)
        graph[node] = _node(
            "LoraLoader", model=base_model, clip=clip, lora_name=name,
            strength_model=strength_model, strength_clip=strength_clip,
        )  # fmt: skip
        base_model, clip = [node, 0], [node, 1]
    graph["13"]["inputs"]["model"] = base_model
    graph["6"]["inputs"]["clip"] = clip
    graph["71"]["inputs"]["clip"] = clip
    negative_link: list[Any] = ["71", 0]
    if request.negative_zero_after is not None:
        z = request.negative_zero_after
        graph["67"] = _node("ConditioningZeroOut", conditioning=["71", 0])
        graph["68"] = _node("ConditioningSetTimestepRange", conditioning=["67", 0], start=z, end=1.0)
        graph["70"] = _node("ConditioningSetTimestepRange", conditioning=["71", 0], start=0.0, end=z)
        graph["69"] = _node("ConditioningCombine", conditioning_1=["68", 0], conditioning_2=["70", 0])
        negative_link = ["69", 0]
    if "init_image" in names:  # img2img: the init image is VAE-encoded instead of an empty latent
        graph["10"] = _node("LoadImage", image=names["init_image"])
        graph["12"] = _node("VAEEncode", pixels=["10", 0], vae=["4", 2])
        del graph["135"]
    if request.slg is not None:
        slg = request.slg
        graph["300"] = _node(
            "SkipLayerGuidanceSD3",
            model=["13", 0],
            layers=", ".join(str(i) for i in slg.layers),
            scale=slg.scale,
            start_percent=slg.start,
            end_percent=slg.end,
        )
        model_link = ["300", 0]
    graph["294"] = _node(
        "KSampler",
        model=model_link,
        seed=request.seed,
        steps=request.steps,
        cfg=request.cfg,
        sampler_name=request.sampler,
        scheduler=request.scheduler,
        positive=["6", 0],
        negative=negative_link,
        latent_image=["12", 0] if "init_image" in names else ["135", 0],
        denoise=request.denoise,
    )
    return graph

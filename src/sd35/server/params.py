"""The settings a person sees (prompt, size, steps, cfg, seed, sampler, SLG...) read back from an API prompt,
for the page's gallery and for loading a dropped workflow or PNG. Pure dict walking, no engine calls."""

from __future__ import annotations

import json
from typing import Any

from sd35.errors import UserInputError
from sd35.workflow import NodeRegistry, WorkflowValidationError, load_prompt

SAMPLER_TYPES = ("KSampler", "KSamplerAdvanced")
TEXT_TYPES = ("CLIPTextEncode", "CLIPTextEncodeSD3")
PASS_THROUGH = ("ConditioningSetTimestepRange", "ConditioningZeroOut", "ConditioningCombine")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _node(prompt: dict[str, Any], value: Any) -> tuple[str, dict[str, Any]] | None:
    """The node a link [id, slot] points to, or None."""
    if isinstance(value, list) and len(value) == 2 and isinstance(prompt.get(str(value[0])), dict):
        return str(value[0]), prompt[str(value[0])]
    return None


def _inputs(node: dict[str, Any]) -> dict[str, Any]:
    inputs = node.get("inputs")
    return inputs if isinstance(inputs, dict) else {}


def _text(prompt: dict[str, Any], link: Any, seen: set[str], zeroed: bool = False) -> tuple[str | None, bool]:
    """(text, zeroed): follow conditioning links back to the text encoder. For a combine, prefer the
    branch that is not zeroed out (the official negative = empty text ‖ zeroed empty text)."""
    found = _node(prompt, link)
    if found is None or found[0] in seen:
        return None, zeroed
    node_id, node = found
    seen.add(node_id)
    kind, inputs = node.get("class_type"), _inputs(node)
    if kind == "CLIPTextEncode":
        return (inputs["text"] if isinstance(inputs.get("text"), str) else None), zeroed
    if kind == "CLIPTextEncodeSD3":
        for key in ("t5xxl", "clip_l", "clip_g"):
            if isinstance(inputs.get(key), str):
                return inputs[key], zeroed
        return None, zeroed
    if kind == "ConditioningCombine":
        options = [_text(prompt, inputs.get(k), seen, zeroed) for k in ("conditioning_1", "conditioning_2")]
        options = [o for o in options if o[0] is not None]
        options.sort(key=lambda o: o[1])  # un-zeroed first
        return options[0] if options else (None, zeroed)
    if kind in PASS_THROUGH:
        return _text(prompt, inputs.get("conditioning"), seen, zeroed or kind == "ConditioningZeroOut")
    return None, zeroed


def _model_chain(prompt: dict[str, Any], link: Any, out: dict[str, Any]) -> None:
    seen: set[str] = set()
    found = _node(prompt, link)
    while found is not None and found[0] not in seen:
        seen.add(found[0])
        kind, inputs = found[1].get("class_type"), _inputs(found[1])
        if kind == "SkipLayerGuidanceSD3":
            out["slg"] = True
            out["slg_layers"] = inputs.get("layers")
            out["slg_scale"] = inputs.get("scale")
        elif kind == "ModelSamplingSD3":
            out.setdefault("shift", inputs.get("shift"))
        elif kind in ("CheckpointLoaderSimple", "UNETLoader"):
            out["model"] = inputs.get("ckpt_name", inputs.get("unet_name"))
        found = _node(prompt, inputs.get("model"))


def _latent(prompt: dict[str, Any], link: Any, out: dict[str, Any]) -> None:
    found = _node(prompt, link)
    if found is None:
        return
    kind, inputs = found[1].get("class_type"), _inputs(found[1])
    if kind in ("EmptySD3LatentImage", "EmptyLatentImage"):
        for key in ("width", "height", "batch_size"):
            if isinstance(inputs.get(key), (int, float)):
                out[key] = int(inputs[key])
    elif kind == "VAEEncode":
        out["img2img"] = True
        image = _node(prompt, inputs.get("pixels"))
        if image is not None and isinstance(_inputs(image[1]).get("image"), str):
            out["image"] = _inputs(image[1])["image"]


def params_from_prompt(prompt: Any) -> dict[str, Any]:
    """Settings of the first sampler in an API prompt; {} if there is none.

    Keys (each only when found): positive, negative, width, height, batch_size, steps, cfg, seed,
    sampler_name, scheduler, denoise, shift, slg (bool), slg_layers, slg_scale, model, img2img, image."""
    if not isinstance(prompt, dict):
        return {}
    samplers = [(k, v) for k, v in prompt.items() if isinstance(v, dict) and v.get("class_type") in SAMPLER_TYPES]
    if not samplers:
        return {}
    _, sampler = samplers[0]
    inputs = _inputs(sampler)
    out: dict[str, Any] = {"slg": False}
    for key in ("steps", "cfg", "sampler_name", "scheduler", "denoise"):
        if isinstance(inputs.get(key), (int, float, str)):
            out[key] = inputs[key]
    seed = inputs.get("seed", inputs.get("noise_seed"))
    if isinstance(seed, int):
        out["seed"] = seed
    for key in ("positive", "negative"):
        text, _ = _text(prompt, inputs.get(key), set())
        if text is not None:
            out[key] = text
    _latent(prompt, inputs.get("latent_image"), out)
    _model_chain(prompt, inputs.get("model"), out)
    return out


def _png_text(data: bytes) -> dict[str, str]:
    """tEXt chunks of a PNG (uncompressed text only, as ComfyUI and sd35 write them)."""
    out: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt" and b"\x00" in body:
            key, _, value = body.partition(b"\x00")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt" and b"\x00" in body:
            key, _, rest = body.partition(b"\x00")
            if rest[:1] == b"\x00":  # uncompressed: flag, method, language\0, translated\0, text
                parts = rest[2:].split(b"\x00", 2)
                if len(parts) == 3:
                    out[key.decode("latin-1")] = parts[2].decode("utf-8", "replace")
        elif kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return out


def workflow_from_upload(data: bytes, registry: NodeRegistry) -> dict[str, Any]:
    """{"prompt", "params", "source"} from a dropped file: a PNG with a "prompt" or "workflow" text chunk
    (ComfyUI and sd35 write them), or workflow JSON in API or UI format. Raises UserInputError."""
    if data.startswith(PNG_SIGNATURE):
        chunks = _png_text(data)
        if "prompt" in chunks:
            text, source = chunks["prompt"], "png:prompt"
        elif "workflow" in chunks:
            text, source = chunks["workflow"], "png:workflow"
        else:
            raise UserInputError("this PNG carries no workflow (no 'prompt' or 'workflow' text chunk)")
    else:
        try:
            text, source = data.decode("utf-8-sig"), "json"
        except UnicodeDecodeError:
            raise UserInputError("not a PNG and not UTF-8 JSON") from None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        raise UserInputError("the workflow is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise UserInputError("the workflow JSON is not an object")
    try:
        prompt = load_prompt(parsed, registry)
    except WorkflowValidationError as exc:
        raise UserInputError(str(exc)) from None
    return {"prompt": prompt, "params": params_from_prompt(prompt), "source": source}

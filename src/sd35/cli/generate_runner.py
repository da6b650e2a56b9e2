"""The heavy half of `sd35 generate`: resolve files, check them, load, sample with a progress bar, save."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from sd35.errors import UserInputError
from sd35.imageio.images import load_image, resize_image, save_png, to_uint8
from sd35.nodes.lora_nodes import parse_lora_arg
from sd35.pipeline.fastpath import FastPath
from sd35.pipeline.files import (
    ModelFiles,
    Preflight,
    ensure_tiny_models,
    find_model_files,
    preflight,
)
from sd35.pipeline.metadata import a1111_parameters, comfy_prompt
from sd35.pipeline.oneshot import generate_from_files
from sd35.pipeline.request import GenerationRequest
from sd35.runtime.devices import DevicePolicy

log = logging.getLogger(__name__)

TINY_NOTICE = (
    "no model files configured: using the built-in tiny random-weight model, whose images are noise. "
    "Point sd35 at the real SD3.5 Medium files with --models DIR (or $SD35_MODELS), or --model/--clip-l/"
    "--clip-g/--t5xxl; see the README for where to get them."
)


def resolve_files(args: argparse.Namespace) -> ModelFiles:
    """Explicit flags win over --models; nothing at all means the embedded tiny model."""
    explicit = any(getattr(args, k) for k in ("model", "vae", "clip_l", "clip_g", "t5xxl"))
    if args.models is None and not explicit:
        log.warning(TINY_NOTICE)
        files = ensure_tiny_models()
    elif args.models is not None:
        files = find_model_files(args.models)
    else:
        if args.model is None:
            from sd35.errors import UserInputError

            raise UserInputError("--model is required when text encoders are given without --models")
        files = ModelFiles(model=args.model)
    overrides = {k: getattr(args, k) for k in ("model", "vae", "clip_l", "clip_g", "t5xxl") if getattr(args, k)}
    files = replace(files, **overrides)
    if args.no_t5:
        files = replace(files, t5xxl=None)
    return files


def check_inputs(args: argparse.Namespace, request: GenerationRequest) -> tuple[Preflight, GenerationRequest]:
    """Everything that can be refused without reading tensor data: files, sizes vs the model, init image."""
    pre = preflight(resolve_files(args), use_t5=not args.no_t5)
    request.validate(pre.max_image_side)
    if request.init_image is not None:
        pixels = resize_image(load_image(request.init_image), request.width, request.height)
        request = replace(request, init_image=pixels)
    return pre, request


def run_generation(args: argparse.Namespace, request: GenerationRequest, paths: list[Path]) -> list[Path]:
    init_name = Path(request.init_image).name if request.init_image else None
    pre, request = check_inputs(args, request)
    loras = [parse_lora_arg(text) for text in getattr(args, "lora", None) or []]
    for spec in loras:
        if not spec.path.is_file():
            raise UserInputError(f"LoRA file not found: {spec.path}")
    fast = FastPath(
        step_cache=args.step_cache, compile=args.compile, int8=args.int8, fp8=args.fp8, threads=args.threads
    )
    fast.validate()
    policy = DevicePolicy.create(
        args.device, args.dtype, lowvram=args.lowvram, t5_on_cpu=args.t5_cpu, t5_fp8=args.t5_fp8
    )
    with tqdm(total=request.steps, desc="sampling", unit="step", dynamic_ncols=True) as bar:

        def on_step(info) -> None:  # noqa: ANN001
            bar.total = info.total
            bar.update(1)

        result = generate_from_files(
            pre, request, policy, tokenizer_dir=args.tokenizers, loras=loras, fast=fast, on_step=on_step
        )
    names = {slot: info.path.name for slot, info in pre.components.items() if slot != "mmditx"}
    names["model"] = pre.files.model.name
    if init_name:
        names["init_image"] = init_name
    lora_uses = [(spec.path.name, spec.strength_model, spec.strength_clip) for spec in loras]
    text = {
        "parameters": a1111_parameters(request, pre.files.model.name, lora_uses),
        "prompt": json.dumps(comfy_prompt(request, names, lora_uses)),
    }
    pixels = to_uint8(result.images.numpy())
    return [save_png(path, image, text) for path, image in zip(paths, pixels, strict=True)]

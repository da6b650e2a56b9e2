"""`sd35 generate "PROMPT"`: one request in, PNGs out. Every input is checked before any weights load."""

from __future__ import annotations

import argparse
import logging
import os
import random
from pathlib import Path

from sd35.errors import UserInputError
from sd35.pipeline.request import DEFAULT_SLG, GenerationRequest, SkipLayerGuidance

log = logging.getLogger(__name__)

DEFAULT_OUTPUT = "output/sd35_{seed}_{n}.png"
HELP_SOURCE = "official SD3.5M ComfyUI workflow"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate images from a prompt",
        description="Text-to-image (and image-to-image) with SD3.5 Medium. Defaults follow the official "
        "SD3.5 Medium ComfyUI workflow, with Skip Layer Guidance on as the model card recommends. With no "
        "model files configured, a tiny random-weight model is used (its images are noise).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("prompt", help="the prompt; (word:1.2) weights as in ComfyUI")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--width", type=int, default=1024, help=f"image width, multiple of 16 ({HELP_SOURCE})")
    p.add_argument("--height", type=int, default=1024, help=f"image height, multiple of 16 ({HELP_SOURCE})")
    p.add_argument("--steps", type=int, default=40, help=f"sampling steps ({HELP_SOURCE})")
    p.add_argument("--cfg", type=float, default=5.5, help=f"classifier-free guidance scale ({HELP_SOURCE})")
    p.add_argument("--sampler", default="dpmpp_2m", help=f"ComfyUI sampler name ({HELP_SOURCE})")
    p.add_argument("--scheduler", default="sgm_uniform", help=f"ComfyUI scheduler name ({HELP_SOURCE})")
    p.add_argument("--shift", type=float, default=3.0, help=f"flow shift, ModelSamplingSD3 ({HELP_SOURCE})")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: random, printed and stored)")
    p.add_argument("--batch", type=int, default=1, help="images per run (one noise tensor, as ComfyUI)")
    p.add_argument(
        "--negative-zero-after",
        type=float,
        default=0.2,
        help=f"the negative prompt applies to this first fraction of the schedule, zeroed after ({HELP_SOURCE}); "
        "1 = the whole schedule",
    )
    g = p.add_argument_group("Skip Layer Guidance (model card; sd3.5 reference CONFIGS['sd3.5_medium'])")
    g.add_argument("--slg-layers", default="7,8,9", help="joint blocks skipped in the guidance pass")
    g.add_argument("--slg-scale", type=float, default=DEFAULT_SLG.scale, help="guidance scale")
    g.add_argument("--slg-start", type=float, default=DEFAULT_SLG.start, help="window start (fraction)")
    g.add_argument("--slg-end", type=float, default=DEFAULT_SLG.end, help="window end (fraction)")
    g.add_argument(
        "--slg-window",
        choices=("steps", "sigma"),
        default="steps",
        help="steps: active while start·N < i < end·N (Stability's reference); sigma: as ComfyUI's "
        "SkipLayerGuidanceSD3 node (σ(end) ≤ σ ≤ σ(start))",
    )
    g.add_argument("--no-slg", action="store_true", help="turn Skip Layer Guidance off")
    i = p.add_argument_group("image to image")
    i.add_argument("--init-image", type=Path, help="start from this image (resized to --width x --height)")
    i.add_argument(
        "--denoise",
        type=float,
        default=None,
        help="fraction of the schedule to run (default 1, or 0.8 with --init-image as in Stability's reference)",
    )
    m = p.add_argument_group("model files")
    m.add_argument(
        "--models",
        type=Path,
        default=os.environ.get("SD35_MODELS"),
        help="folder with the usual file names, ComfyUI models/ layout or a diffusers folder (default $SD35_MODELS)",
    )
    m.add_argument("--model", type=Path, help="the SD3.5 checkpoint (MMDiT + VAE) or a diffusers folder")
    m.add_argument("--vae", type=Path, help="a separate VAE file")
    m.add_argument("--clip-l", type=Path, help="clip_l.safetensors")
    m.add_argument("--clip-g", type=Path, help="clip_g.safetensors")
    m.add_argument("--t5xxl", type=Path, help="t5xxl_fp16.safetensors (or fp8)")
    m.add_argument("--no-t5", action="store_true", help="run without T5-XXL (saves ~9 GB; prompts follow less)")
    m.add_argument("--tokenizers", type=Path, help="diffusers-style tokenizer folder overriding the built-in ones")
    m.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:STRENGTH]",
        help="apply a LoRA (kohya, ComfyUI, diffusers/PEFT, LyCORIS) to the MMDiT and text encoders at this "
        "strength (default 1); repeat for several",
    )
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    r.add_argument(
        "--dtype",
        default="auto",
        help="auto (bf16 on GPUs and on CPUs with native bf16, else fp16 / fp32), fp32, bf16, fp16",
    )
    r.add_argument("--lowvram", action="store_true", help="stream MMDiT blocks to the GPU one at a time")
    r.add_argument("--t5-cpu", action="store_true", help="keep and run T5-XXL on the CPU (saves ~9.5 GB of VRAM)")
    r.add_argument(
        "--t5-fp8", action="store_true", help="hold T5-XXL's weights in fp8 (~4.8 GB instead of ~9.5; small drift)"
    )
    f = p.add_argument_group("speed (BENCHMARKS.md lists the measured effect of each)")
    f.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    f.add_argument("--compile", action="store_true", help="torch.compile the MMDiT blocks (one-time warm-up)")
    f.add_argument(
        "--step-cache",
        type=float,
        default=0.0,
        metavar="THRESHOLD",
        help="reuse the MMDiT blocks on steps where the first block's output changes by less than THRESHOLD "
        "(relative L1; approximate; 0 = off)",
    )
    f.add_argument(
        "--int8", action="store_true", help="int8 dynamic quantization of the MMDiT (CPU, fp32; approximate)"
    )
    f.add_argument("--fp8", action="store_true", help="fp8 MMDiT weights, fp8 matmuls on Ada/Hopper GPUs (approximate)")
    p.add_argument(
        "-o",
        "--output",
        default=DEFAULT_OUTPUT,
        help="PNG path; {seed} and {n} (index in the batch) are replaced",
    )
    p.set_defaults(func=run)


def _parse_layers(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise UserInputError(f"--slg-layers must be comma-separated block numbers, got {text!r}") from None
    if not layers:
        raise UserInputError("--slg-layers is empty; use --no-slg to turn SLG off")
    return layers


def build_request(args: argparse.Namespace) -> GenerationRequest:
    slg = None
    if not args.no_slg:
        slg = SkipLayerGuidance(
            layers=_parse_layers(args.slg_layers),
            scale=args.slg_scale,
            start=args.slg_start,
            end=args.slg_end,
            rule=args.slg_window,
        )
    denoise = args.denoise if args.denoise is not None else (0.8 if args.init_image else 1.0)
    zero_after = None if args.negative_zero_after >= 1.0 else args.negative_zero_after
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**50)
    return GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative,
        width=args.width,
        height=args.height,
        steps=args.steps,
        cfg=args.cfg,
        sampler=args.sampler,
        scheduler=args.scheduler,
        shift=args.shift,
        seed=seed,
        batch_size=args.batch,
        slg=slg,
        negative_zero_after=zero_after,
        init_image=str(args.init_image) if args.init_image else None,
        denoise=denoise,
    )


def output_paths(pattern: str, seed: int, batch: int) -> list[Path]:
    if batch > 1 and "{n}" not in pattern:
        stem, dot, ext = pattern.rpartition(".")
        pattern = f"{stem}_{{n}}.{ext}" if dot else f"{pattern}_{{n}}"
    try:
        return [Path(pattern.format(seed=seed, n=n)) for n in range(batch)]
    except (KeyError, IndexError, ValueError) as exc:
        raise UserInputError(f"bad --output pattern {pattern!r}: only {{seed}} and {{n}} are known ({exc})") from None


def run(args: argparse.Namespace) -> int:
    from sd35.cli.generate_runner import run_generation

    request = build_request(args)
    request.validate()  # cheap checks first: nothing is read before these pass
    paths = output_paths(args.output, request.seed, request.batch_size)
    for path in run_generation(args, request, paths):
        print(path)
    log.info("seed %d", request.seed)
    return 0

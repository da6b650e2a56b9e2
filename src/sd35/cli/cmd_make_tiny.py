"""`sd35 make-tiny DIR`: write deterministic tiny random-weight SD3.5 files (for tests and demos)."""

from __future__ import annotations

import argparse

DTYPES = ("fp32", "fp16", "bf16")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-tiny",
        help="write tiny random-weight SD3.5 model files (official layout + diffusers folder)",
        description=(
            "Write sd3.5_medium.safetensors (MMDiT-X + VAE), clip_l.safetensors, clip_g.safetensors and "
            "t5xxl_fp16.safetensors with small random weights that follow the real models' shape rules, "
            "plus the same weights as a diffusers folder in DIR/diffusers. Same seed, same bytes."
        ),
    )
    parser.add_argument("out_dir", metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="stored dtype (default fp32)")
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from sd35.loading.tiny import make_tiny

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    paths = make_tiny(args.out_dir, seed=args.seed, diffusers=not args.no_diffusers, dtype=dtype)
    for name, path in paths.items():
        print(f"{name:<10} {path}")
    return 0

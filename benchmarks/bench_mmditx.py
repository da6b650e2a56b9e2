"""Per-forward time of sd35's MMDiTX vs diffusers' SD3Transformer2DModel on the same random weights.

Real SD3.5 Medium width (hidden 1536, 24 heads, qk RMSNorm), reduced depth, attn2 on the first blocks,
512x512 image (64x64 latent), context 154 tokens, fp32 on the CPU. The two models run alternately (warm-up,
then N timed runs each, swapping which goes first) and the medians are compared. Writes a markdown table to
benchmarks/results/mmditx.md.

    .venv/bin/python benchmarks/bench_mmditx.py [--depth 4] [--runs 9] [--warmup 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
import sys
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel

from sd35.models.configs import SD35_MEDIUM
from sd35.models.mmditx import MMDiTX
from sd35.nn.init import randomize_

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, cpu_model, diffusers_transformer, mmditx_call  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "mmditx.md"


def build(depth: int, attn2: int) -> tuple[MMDiTX, SD3Transformer2DModel]:
    # Table of 96x96 patches instead of 384x384 only to save memory; the forward crops 32x32 either way.
    config = dataclasses.replace(
        SD35_MEDIUM, depth=depth, pos_embed_max_size=96, x_block_self_attn_layers=tuple(range(attn2))
    )
    ours = randomize_(MMDiTX(config, device="meta").to_empty(device="cpu"), seed=0).eval()
    return ours, diffusers_transformer(ours)


def machine() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads (os.cpu_count() = {os.cpu_count()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--attn2", type=int, default=2, help="number of leading blocks with attn2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--latent", type=int, default=64, help="latent side (image side / 8)")
    parser.add_argument("--context", type=int, default=154)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--no-write", action="store_true", help="print only, do not write the results file")
    args = parser.parse_args()

    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    ours, theirs = build(args.depth, args.attn2)
    cfg = ours.config
    x = torch.randn(args.batch, 16, args.latent, args.latent)
    t = torch.rand(args.batch) * 1000
    pooled = torch.randn(args.batch, cfg.adm_in_channels)
    context = torch.randn(args.batch, args.context, cfg.context_in_dim)
    twin = mmditx_call(theirs)
    calls = {
        "sd35 MMDiTX": lambda: ours(x, t, pooled, context),
        "diffusers SD3Transformer2DModel": lambda: twin(x, t, pooled, context),
    }
    outputs: dict = {}
    with torch.inference_mode():
        times = alternate(calls, args.runs, args.warmup, outputs=outputs)
    load_after = os.getloadavg()[0]
    diff = (outputs["sd35 MMDiTX"] - outputs["diffusers SD3Transformer2DModel"]).abs().max().item()

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = medians["diffusers SD3Transformer2DModel"]
    base_min = min(times["diffusers SD3Transformer2DModel"])
    lines = [
        "# MMDiTX forward benchmark (CPU, fp32)",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine()}",
        f"- 1-min load average {load_before:.2f} before, {load_after:.2f} after (the CPU is shared: other "
        "processes inflate the max column; the medians of alternating runs are the comparison)",
        f"- torch {torch.__version__}, diffusers {__import__('diffusers').__version__}",
        f"- model: hidden {cfg.hidden_size}, {cfg.num_heads} heads, depth {cfg.depth}, attn2 on "
        f"{list(cfg.x_block_self_attn_layers)}, qk RMSNorm; same random weights in both",
        f"- input: batch {args.batch}, latent {args.latent}x{args.latent} ({args.latent * 8}² image, "
        f"{(args.latent // 2) ** 2} image tokens), context {args.context} tokens",
        f"- {args.warmup} warm-up + {args.runs} timed runs each, alternating; max abs diff of outputs {diff:.2e}",
        "",
        "| implementation | median s/forward | min | max | median vs diffusers | min vs diffusers |",
        "|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        lines.append(
            f"| {name} | {medians[name]:.3f} | {min(ts):.3f} | {max(ts):.3f} | {medians[name] / base:.2f}x "
            f"| {min(ts) / base_min:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()

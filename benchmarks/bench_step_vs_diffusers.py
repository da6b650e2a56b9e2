"""Seconds per sampling step: sd35's sample_latents vs diffusers' StableDiffusion3Pipeline, same run.

Same random MMDiT weights (real width: hidden 1536, 24 heads; reduced depth), same embeddings and initial
noise, Euler on the shift-3 flow schedule (diffusers' FlowMatchEulerDiscreteScheduler = sd35 euler/normal),
CFG 4.5, with Skip Layer Guidance on layer 1 over the same step window in both (reference rule). Latents only
(no VAE), fp32, CPU. Runs alternate; the median per-step time of each is reported with the latents' diff.

    .venv/bin/python benchmarks/bench_step_vs_diffusers.py [--depth 3] [--size 512] [--steps 6] [--reps 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from sd35.models.configs import MMDiTXConfig
from sd35.models.mmditx import MMDiTX
from sd35.nn.init import randomize_
from sd35.pipeline.components import DiffusionModel
from sd35.pipeline.conditioning import single
from sd35.pipeline.generate import SamplingSettings, sample_latents
from sd35.runtime.devices import DevicePolicy
from sd35.sampling.guidance import SkipLayerGuidance
from sd35.sampling.noise import seeded_noise
from sd35.sampling.schedule import ModelSampling
from sd35.types import Conditioning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import diffusers_pipeline, diffusers_transformer, slg_kwargs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    latent_side = args.size // 8
    config = MMDiTXConfig(
        depth=args.depth, hidden_size=1536, pos_embed_max_size=latent_side // 2, x_block_self_attn_layers=(0,)
    )
    ours = randomize_(MMDiTX(config), seed=0).eval()
    theirs = diffusers_transformer(ours)
    g = torch.Generator().manual_seed(1)
    cond = Conditioning(torch.randn(1, 154, 4096, generator=g), torch.randn(1, 2048, generator=g))
    uncond = Conditioning(torch.randn(1, 154, 4096, generator=g), torch.randn(1, 2048, generator=g))
    noise = seeded_noise((1, 16, latent_side, latent_side), 7)
    slg = SkipLayerGuidance(layers=(1,), scale=2.5, start=0.01, end=0.5, rule="steps")
    pipe = diffusers_pipeline(theirs)

    def run_diffusers() -> torch.Tensor:
        with torch.no_grad():
            return pipe(
                prompt_embeds=cond.context, pooled_prompt_embeds=cond.pooled, negative_prompt_embeds=uncond.context,
                negative_pooled_prompt_embeds=uncond.pooled, latents=noise.clone(), num_inference_steps=args.steps,
                guidance_scale=4.5, height=args.size, width=args.size, output_type="latent", **slg_kwargs(slg),
            ).images  # fmt: skip

    diffusion = DiffusionModel(network=ours, model_sampling=ModelSampling(shift=3.0), slg=slg)
    settings = SamplingSettings(seed=7, steps=args.steps, cfg=4.5, sampler="euler", scheduler="normal")

    def run_sd35() -> torch.Tensor:
        latent = torch.zeros(1, 16, latent_side, latent_side)
        out = sample_latents(diffusion, single(cond), single(uncond), latent, settings, DevicePolicy())
        return diffusion.latent_format.to_model(out)

    times: dict[str, list[float]] = {"sd35": [], "diffusers": []}
    results = {}
    for _ in range(args.reps):
        for name, fn in (("sd35", run_sd35), ("diffusers", run_diffusers)):
            start = time.perf_counter()
            results[name] = fn()
            times[name].append((time.perf_counter() - start) / args.steps)
    diff = (results["sd35"] - results["diffusers"]).abs().max().item()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"- {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"- depth {args.depth}, hidden 1536, {args.size}² image, batch 1 with CFG + SLG, {args.steps} Euler steps, "
          f"{args.reps} alternating runs each; final latents max abs diff {diff:.2e}")  # fmt: skip
    print("\n| implementation | median s/step | all runs (s/step) |\n|---|---|---|")
    for name in ("sd35", "diffusers"):
        print(f"| {name} | {med[name]:.3f} | {', '.join(f'{t:.3f}' for t in times[name])} |")
    print(f"\nratio sd35 / diffusers (median): {med['sd35'] / med['diffusers']:.2f}")


if __name__ == "__main__":
    main()

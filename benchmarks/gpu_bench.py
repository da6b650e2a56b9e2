"""One prepared GPU benchmark: sd35 vs diffusers at the real SD3.5 Medium size, plus fp8 and step caching.

Random bf16 weights are made directly on the GPU (no files, no downloads): the full MMDiT-X (24 blocks,
hidden 1536, attn2 on 0-12) and the real VAE; diffusers' SD3Transformer2DModel / AutoencoderKL get the same
tensors through diffusers' own single-file converter. Prompt embeddings are random (154 context tokens for
both: 77 CLIP + 77 T5, diffusers' max_sequence_length=77). Each row is one image at 1024² with CFG 5,
Euler on the shift-3 schedule (the same maths in both), timed with CUDA synchronisation; peak VRAM is
torch.cuda.max_memory_allocated over the row. Budget: under 8 minutes on one H100 (about 1 GB/s of
random-number generation, then 2-3 s per 28-step image).

Rows: diffusers and sd35 at 28 and 40 steps; sd35 with SLG batched vs diffusers' separate SLG pass (its
'vs diffusers' is against the diffusers SLG row); sd35
step cache at a few thresholds (speed-up, PSNR of the decoded image vs uncached); sd35 --lowvram (blocks
streamed from pinned CPU memory: its peak VRAM is the 8 GB mode's); sd35 with fp8 weights
(torch._scaled_mm when the GPU has fp8 tensor cores); optionally --compile (warm-up reported).

    python benchmarks/gpu_bench.py            # on a CUDA machine; prints a markdown table
    python benchmarks/gpu_bench.py --tiny     # same code path on the CPU with tiny models (a smoke test)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

from sd35.models.autoencoder import AutoencoderKL
from sd35.models.configs import SD35_MEDIUM, TINY_MMDITX, TINY_VAE, AutoencoderConfig
from sd35.models.mmditx import MMDiTX
from sd35.pipeline.components import VAE, DiffusionModel
from sd35.pipeline.conditioning import single
from sd35.pipeline.fastpath import FastPath
from sd35.pipeline.generate import SamplingSettings, decode_latents, sample_latents
from sd35.runtime.devices import DevicePolicy
from sd35.sampling.guidance import SkipLayerGuidance
from sd35.sampling.noise import seeded_noise
from sd35.sampling.schedule import ModelSampling
from sd35.types import Conditioning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import diffusers_pipeline, diffusers_transformer, psnr, slg_kwargs  # noqa: E402

SEED, CFG = 7, 5.0


@torch.no_grad()
def randomize_on_device(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """sd35.nn.init.randomize_'s distributions (N(0, 1/fan_in) matrices, small biases, norm scales ~1,
    tables N(0, 0.5²)) drawn with a generator on the module's device, in the module's dtype."""
    device = next(module.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    for name, p in sorted(module.named_parameters()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "pos_embed" or "embedding" in name:
            p.normal_(0.0, 0.5, generator=g)
        elif p.ndim >= 2:
            p.normal_(0.0, 1.0 / math.sqrt(math.prod(p.shape[1:])), generator=g)
        elif leaf == "weight":
            p.normal_(1.0, 0.1, generator=g)
        else:
            p.normal_(0.0, 0.02, generator=g)
    return module


def build(tiny: bool, device: torch.device, dtype: torch.dtype):  # noqa: ANN201
    from diffusers import AutoencoderKL as DiffusersVAE

    from sd35.loading.diffusers_format import official_to_diffusers_state, vae_config

    mm_config = TINY_MMDITX if tiny else SD35_MEDIUM
    vae_cfg = TINY_VAE if tiny else AutoencoderConfig()
    ours = randomize_on_device(MMDiTX(mm_config, device="meta").to_empty(device=device).to(dtype), SEED).eval()
    vae = randomize_on_device(AutoencoderKL(vae_cfg, device="meta").to_empty(device=device).to(dtype), SEED + 1).eval()
    theirs = diffusers_transformer(ours, copy=False)  # shares the weights' memory where it can
    vcfg = {k: v for k, v in vae_config(vae_cfg).items() if not k.startswith("_")}
    their_vae = DiffusersVAE(**vcfg).to(device=device, dtype=dtype)
    their_vae.load_state_dict(official_to_diffusers_state("vae", vae.state_dict()), strict=True)
    return ours, vae, theirs, their_vae.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def conds(device: torch.device, dtype: torch.dtype, config) -> tuple[Conditioning, Conditioning]:  # noqa: ANN001
    g = torch.Generator().manual_seed(1)
    make = lambda: Conditioning(  # noqa: E731
        torch.randn(1, 154, config.context_in_dim, generator=g), torch.randn(1, config.adm_in_channels, generator=g)
    )
    return make(), make()


def run_sd35(network, vae, cond, policy, size, steps, fast, slg=None):  # noqa: ANN001, ANN201
    diffusion = DiffusionModel(network=network, model_sampling=ModelSampling(shift=3.0), slg=slg)
    settings = SamplingSettings(seed=SEED, steps=steps, cfg=CFG, sampler="euler", scheduler="normal")
    latent = torch.zeros(1, 16, size // 8, size // 8)
    sync(policy.device)
    start = time.perf_counter()
    latents = sample_latents(diffusion, single(cond[0]), single(cond[1]), latent, settings, policy, None, fast)
    sync(policy.device)
    sample_s = time.perf_counter() - start
    images = decode_latents(VAE(vae), latents, policy)
    sync(policy.device)
    return images, sample_s, time.perf_counter() - start


def run_diffusers(pipe, their_vae, cond, device, dtype, size, steps, slg=None):  # noqa: ANN001, ANN201
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        latents = pipe(
            prompt_embeds=cond[0].context.to(device, dtype),
            pooled_prompt_embeds=cond[0].pooled.to(device, dtype),
            negative_prompt_embeds=cond[1].context.to(device, dtype),
            negative_pooled_prompt_embeds=cond[1].pooled.to(device, dtype),
            latents=seeded_noise((1, 16, size // 8, size // 8), SEED).to(device, dtype),
            num_inference_steps=steps,
            guidance_scale=CFG,
            height=size,
            width=size,
            output_type="latent",
            **slg_kwargs(slg),
        ).images
        sync(device)
        sample_s = time.perf_counter() - start
        z = latents / their_vae.config.scaling_factor + their_vae.config.shift_factor
        images = (their_vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()
    sync(device)
    return images, sample_s, time.perf_counter() - start


def main() -> None:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (checks the script runs)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024, tiny 128)")
    parser.add_argument("--steps", default=None, help="comma-separated step counts (default 28,40; tiny 4,6)")
    parser.add_argument("--cache", default="0.05,0.1,0.2", help="step-cache thresholds to measure")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (warm-up included)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type != "cuda" and not args.tiny:
        sys.exit("no CUDA device: run with --tiny for the CPU smoke test")
    dtype = torch.bfloat16
    size = args.size or (128 if args.tiny else 1024)
    step_counts = [int(s) for s in (args.steps or ("4,6" if args.tiny else "28,40")).split(",")]
    policy = DevicePolicy(device=device, dtype=dtype, vae_dtype=dtype, text_dtype=dtype)
    t0 = time.perf_counter()
    ours, vae, theirs, their_vae = build(args.tiny, device, dtype)
    pipe = diffusers_pipeline(theirs)
    cond = conds(device, dtype, ours.config)
    build_s = time.perf_counter() - t0
    rows: list[tuple] = []
    reference: dict[int, torch.Tensor] = {}
    # warm-up (kernels, cuBLAS handles, allocator) for both, not reported
    run_sd35(ours, vae, cond, policy, size, 2, FastPath())
    run_diffusers(pipe, their_vae, cond, device, dtype, size, 2)

    def row(name, steps, fn):  # noqa: ANN001, ANN202
        reset_peak(device)
        images, sample_s, total_s = fn()
        rows.append((name, steps, sample_s, total_s, peak_gib(device), images))
        print(f"{name} {steps}: {sample_s:.2f} s sampling, {total_s:.2f} s with decode", file=sys.stderr)
        return images

    for steps in step_counts:
        row("diffusers", steps, lambda s=steps: run_diffusers(pipe, their_vae, cond, device, dtype, size, s))
        reference[steps] = row("sd35", steps, lambda s=steps: run_sd35(ours, vae, cond, policy, size, s, FastPath()))
    steps = step_counts[0]
    slg = SkipLayerGuidance(layers=(7, 8, 9), scale=2.5, start=0.01, end=0.2, rule="steps")
    if args.tiny:
        slg = dataclasses.replace(slg, layers=(1,), end=0.5)
    row(
        "diffusers + SLG (separate pass)",
        steps,
        lambda: run_diffusers(pipe, their_vae, cond, device, dtype, size, steps, slg),
    )
    row("sd35 + SLG (batched)", steps, lambda: run_sd35(ours, vae, cond, policy, size, steps, FastPath(), slg))
    for threshold in [float(t) for t in args.cache.split(",") if t]:
        fast = FastPath(step_cache=threshold)
        row(f"sd35 step cache {threshold}", steps, lambda f=fast: run_sd35(ours, vae, cond, policy, size, steps, f))
    if args.compile:
        from sd35.runtime.compile import compile_blocks

        compile_blocks(ours.joint_blocks)
        row(
            "sd35 compile (first run, incl. warm-up)",
            steps,
            lambda: run_sd35(ours, vae, cond, policy, size, steps, FastPath()),
        )
        row("sd35 compile", steps, lambda: run_sd35(ours, vae, cond, policy, size, steps, FastPath()))
        torch._dynamo.reset()
    # --lowvram: the blocks wait in (pinned) CPU memory, two at most on the device; peak VRAM is the 8 GB mode's
    for block in ours.joint_blocks:
        block.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    low = dataclasses.replace(policy, lowvram=True)
    row("sd35 --lowvram", steps, lambda: run_sd35(ours, vae, cond, low, size, steps, FastPath()))
    ours.to(device)
    from sd35.runtime.quant import fp8_matmul_supported, quantize_fp8_

    quantize_fp8_(ours.joint_blocks)  # last: changes the model in place
    label = "torch._scaled_mm" if fp8_matmul_supported(device) else "dequantized fallback"
    row(f"sd35 fp8 ({label})", steps, lambda: run_sd35(ours, vae, cond, policy, size, steps, FastPath()))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--tiny smoke test)"
    print(f"\n## GPU benchmark: {name}, {size}², bf16, cfg {CFG}, euler\n")
    print(f"- torch {torch.__version__}; built random weights in {build_s:.1f} s; MMDiT {ours.config.depth} blocks")
    columns = (
        "run | steps | s/step | s/image (sample) | s/image (+ decode) | peak VRAM GiB | vs diffusers | PSNR vs sd35 dB"
    )
    print(f"\n| {columns} |")
    print("|---|---|---|---|---|---|---|---|")
    base = {(r[1], "SLG" in r[0]): r[2] for r in rows if r[0].startswith("diffusers")}
    for name, steps, sample_s, total_s, peak, images in rows:
        ref = reference.get(steps)
        quality = "" if ref is None or name == "sd35" else f"{psnr(ref, images, peak=1.0):.1f}"
        print(
            f"| {name} | {steps} | {sample_s / steps:.3f} | {sample_s:.2f} | {total_s:.2f} | {peak:.2f} | "
            f"{sample_s / base.get((steps, 'SLG' in name), base[(steps, False)]):.2f} | {quality} |"
        )
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""Each sd35 speed option against the plain fp32 path: time per image and the image difference (PSNR).

One process, the same weights, prompt embeddings, seed and settings for every row; each row is one full
sampling run (cfg 5, SLG, Euler) plus the VAE decode. The plain fp32 row runs first and last, so drift in
the machine's load shows as the spread of those two. PSNR is of the decoded image (values in [0, 1]) against
the first plain run; rows that change no maths show inf or float-rounding-level values.

Model: --model bench (real widths, reduced depth, the bench model set of bench_pipeline.py) or --model tiny
(the test-size random model, where step caching is measured as the issue asks: "on the tiny model").
Random weights: the first MMDiT block's output changes 50-80 % between steps, against a few % in trained
models, so step-cache thresholds that suit trained models (0.05-0.2) reuse nothing here; the larger ones
show the mechanism's speed/quality trade-off, not the trade-off on SD3.5 Medium itself.

    .venv/bin/python benchmarks/bench_fastpaths.py [--model bench|tiny] [--size 512] [--steps 10]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CLOCKS,
    bench_configs,
    clock_and_threads,
    emit,
    header,
    load_average,
    psnr,
    write_bench_models,
)

from sd35.models.autoencoder import AutoencoderKL  # noqa: E402
from sd35.models.configs import TINY_MMDITX, TINY_VAE  # noqa: E402
from sd35.models.mmditx import MMDiTX  # noqa: E402
from sd35.nn.init import randomize_  # noqa: E402
from sd35.pipeline.components import VAE, DiffusionModel  # noqa: E402
from sd35.pipeline.conditioning import single  # noqa: E402
from sd35.pipeline.fastpath import FastPath, apply_fast_path_to  # noqa: E402
from sd35.pipeline.generate import SamplingSettings, decode_latents, sample_latents  # noqa: E402
from sd35.runtime.cpu import tune_allocator  # noqa: E402
from sd35.runtime.devices import DevicePolicy  # noqa: E402
from sd35.runtime.quant import quantize_fp8_  # noqa: E402
from sd35.sampling.guidance import SkipLayerGuidance  # noqa: E402
from sd35.sampling.schedule import ModelSampling  # noqa: E402
from sd35.types import Conditioning  # noqa: E402


def load(kind: str, root: Path) -> tuple[MMDiTX, AutoencoderKL]:
    if kind == "tiny":
        return randomize_(MMDiTX(TINY_MMDITX), 5).eval(), randomize_(AutoencoderKL(TINY_VAE), 6).eval()
    from sd35.loading.load import load_component

    paths = write_bench_models(root / "depth6", bench_configs(6))
    return load_component(paths["checkpoint"], "mmditx"), load_component(paths["checkpoint"], "vae")


def run(network, vae, conds, size, steps, policy, fast, channels_last=None, clock=time.perf_counter):  # noqa: ANN001, ANN201
    layer = min(2, network.config.depth - 1)
    slg = SkipLayerGuidance(layers=(layer,), scale=2.5, start=0.01, end=0.2, rule="steps")
    diffusion = DiffusionModel(network=network, model_sampling=ModelSampling(shift=3.0), slg=slg)
    settings = SamplingSettings(seed=3, steps=steps, cfg=5.0, sampler="euler", scheduler="sgm_uniform")
    start = clock()
    latents = sample_latents(
        diffusion, single(conds[0]), single(conds[1]), torch.zeros(1, 16, size // 8, size // 8), settings, policy,
        None, fast,
    )  # fmt: skip
    sample_s = clock() - start
    start = clock()
    images = decode_latents(VAE(vae), latents, policy, channels_last=channels_last)
    return images, sample_s, clock() - start


def main() -> None:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("bench", "tiny"), default="bench")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cache", default="0.1,0.5,0.7,1.0", help="step-cache thresholds")
    parser.add_argument(
        "--skip", default="", help="comma-separated rows to skip: slg,nchw,threads,malloc,bf16,fp8,int8,compile"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--clock", choices=tuple(CLOCKS), default="wall", help="cpu: process CPU time (use --threads 1)"
    )
    parser.add_argument("--dir", default="/tmp/sd35-bench-models")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    clock = clock_and_threads(args)
    tune_allocator(True)
    network, vae = load(args.model, Path(args.dir))
    cfg = network.config
    g = torch.Generator().manual_seed(1)
    conds = [
        Conditioning(
            torch.randn(1, 154, cfg.context_in_dim, generator=g), torch.randn(1, cfg.adm_in_channels, generator=g)
        )
        for _ in range(2)
    ]
    fp32 = DevicePolicy()
    rows: list[tuple[str, float, float, float, str]] = []
    images_of: dict[str, torch.Tensor] = {}

    def row(name: str, net, policy=fp32, fast=None, vae_model=vae, channels_last=None, vs="") -> None:  # noqa: ANN001
        images, sample_s, decode_s = run(
            net, vae_model, conds, args.size, args.steps, policy, fast, channels_last, clock
        )
        reference = images_of.setdefault("plain", images)
        images_of[name] = images
        note = f"{psnr(images_of[vs], images, peak=1.0):.1f} dB vs {vs}" if vs in images_of else ""
        rows.append((name, sample_s, decode_s, psnr(reference, images, peak=1.0), note))
        print(f"{name}: {sample_s:.2f} s sampling, {decode_s:.2f} s decode", file=sys.stderr)

    skip = set(args.skip.split(","))
    row("plain fp32 (first)", network)
    if "slg" not in skip:
        row("fp32, SLG pass not batched", network, fast=FastPath(batch_slg=False))
    if "nchw" not in skip:
        row("fp32, NCHW decode (channels-last off)", network, channels_last=False)
    for threshold in [float(t) for t in args.cache.split(",") if t]:
        row(f"step cache {threshold}", network, fast=FastPath(step_cache=threshold))
    if "threads" not in skip and torch.get_num_threads() > 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        row("fp32, 1 thread", network)
        torch.set_num_threads(threads)
    if "malloc" not in skip and tune_allocator(False):
        row("glibc malloc defaults", network)
    tune_allocator(True)
    bf16 = DevicePolicy(dtype=torch.bfloat16, vae_dtype=torch.bfloat16, text_dtype=torch.bfloat16)
    vae_bf16 = copy.deepcopy(vae).to(torch.bfloat16)
    if "bf16" not in skip:
        row("bf16 MMDiT + VAE", copy.deepcopy(network).to(torch.bfloat16), bf16, vae_model=vae_bf16)
    if "fp8" not in skip:  # what --fp8 does where no fp8 GEMM exists: e4m3 weights, upcast to bf16 per call
        fp8 = copy.deepcopy(network).to(torch.bfloat16)
        quantize_fp8_(fp8.joint_blocks, fp8_compute=False)
        row("fp8 weights (joint blocks), bf16 compute", fp8, bf16, vae_model=vae_bf16, vs="bf16 MMDiT + VAE")
        del fp8
    if "int8" not in skip:
        quantized = copy.deepcopy(network)
        apply_fast_path_to(DiffusionModel(network=quantized), fp32, FastPath(int8=True))
        row("int8 dynamic (joint blocks)", quantized)
        del quantized
    if "compile" not in skip:
        compiled = copy.deepcopy(network)
        apply_fast_path_to(DiffusionModel(network=compiled), fp32, FastPath(compile=True))
        row("compile, first run incl. warm-up", compiled)
        row("compile", compiled)
        del compiled
        torch._dynamo.reset()
    row("plain fp32 (last)", network)

    command = "python benchmarks/bench_fastpaths.py " + " ".join(sys.argv[1:])
    lines = header(f"Fast paths vs plain fp32 ({args.model} model, {args.size}², {args.steps} steps)", command)
    lines += [
        f"- model: depth {cfg.depth}, hidden {cfg.hidden_size}; cfg 5, SLG, Euler; one run per row; {args.clock} clock",
        "",
        "| path | sample s | vs plain | decode s | PSNR vs plain (dB, image in [0,1]) | note |",
        "|---|---|---|---|---|---|",
    ]
    base = min(rows[0][1], rows[-1][1])
    for name, sample_s, decode_s, value, note in rows:
        lines.append(f"| {name} | {sample_s:.2f} | {sample_s / base:.2f} | {decode_s:.2f} | {value:.1f} | {note} |")
    lines.append(f"\n'vs plain' divides by the faster of the two plain runs. Load at end: {load_average()}")
    emit(lines, args.out)


if __name__ == "__main__":
    main()

"""Per-step A/B of sd35's denoiser against diffusers' pipeline step, alternating every single step.

On a shared CPU the load from other processes changes within seconds, so whole sampling runs of the two
pipelines (bench_pipeline.py) see different conditions. Here one "step" of each is timed alternately,
many times, in one process, on the same weights (the bench model set of bench_pipeline.py):

- sd35: the denoiser `sample_latents` uses (make_denoise_fn: cond+uncond batched, SLG batched into the same
  forward or, for the "separate" row, as its own forward) plus the Euler update.
- diffusers: the body of StableDiffusion3Pipeline.__call__'s loop for one step (diffusers 0.42.1
  pipeline_stable_diffusion_3.py): torch.cat([latents] * 2), transformer forward, chunk, CFG, the separate
  skip-layer forward on SLG steps, scheduler.step.

Steps are a plain CFG step and an SLG step (both passes). --clock cpu with --threads 1 times process CPU
time, which other processes cannot inflate (a preempted single thread accrues no CPU time).

    .venv/bin/python benchmarks/bench_steps.py [--depth 6] [--size 512] [--rounds 6] [--threads 1 --clock cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CLOCKS,
    add_model_set_args,
    alternate,
    bench_configs,
    clock_and_threads,
    emit,
    header,
    load_average,
    write_bench_models,
)

from sd35.runtime.devices import DTYPES  # noqa: E402

CFG, SLG_LAYER = 5.0, 2


def build(paths: dict, size: int, dtype: torch.dtype = torch.float32):  # noqa: ANN201
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from sd35.loading.load import load_component
    from sd35.pipeline.conditioning import single
    from sd35.pipeline.denoiser import Guidance, make_denoise_fn
    from sd35.sampling.guidance import SkipLayerGuidance
    from sd35.sampling.schedule import ModelSampling
    from sd35.types import Conditioning

    network = load_component(paths["checkpoint"], "mmditx", dtype=dtype)
    transformer = SD3Transformer2DModel.from_pretrained(Path(paths["diffusers"]) / "transformer").eval().to(dtype)
    g = torch.Generator().manual_seed(1)
    cond, uncond = (
        Conditioning(torch.randn(1, 154, 4096, generator=g), torch.randn(1, 2048, generator=g)) for _ in "ab"
    )
    slg = SkipLayerGuidance(layers=(SLG_LAYER,), scale=2.5, start=0.0, end=1.0, rule="steps")
    ms = ModelSampling(shift=3.0)
    fns = {
        name: make_denoise_fn(network, single(cond), single(uncond), Guidance(CFG, s, 10), ms, batch_slg=b)
        for name, s, b in (("plain", None, True), ("slg batched", slg, True), ("slg separate", slg, False))
    }
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    x = torch.randn(1, 16, size // 8, size // 8, generator=g)
    sigma, sigma_next = float(scheduler.sigmas[3]), float(scheduler.sigmas[4])

    def sd35_step(kind: str):  # noqa: ANN202
        def step() -> torch.Tensor:
            denoised = fns[kind](x, torch.tensor([sigma]), 3)
            return x + (x - denoised) / sigma * (sigma_next - sigma)

        return step

    pe = torch.cat([uncond.context, cond.context]).to(dtype)  # the pipeline encodes in the transformer dtype
    ppe = torch.cat([uncond.pooled, cond.pooled]).to(dtype)
    xd = x.to(dtype)  # and keeps its latents in it

    def diffusers_step(with_slg: bool):  # noqa: ANN202
        def step() -> torch.Tensor:  # pipeline_stable_diffusion_3.py __call__, one loop iteration
            t = scheduler.timesteps[3]
            with torch.no_grad():
                latent_model_input = torch.cat([xd] * 2)
                timestep = t.expand(latent_model_input.shape[0])
                noise_pred = transformer(
                    hidden_states=latent_model_input,
                    timestep=timestep,
                    encoder_hidden_states=pe,
                    pooled_projections=ppe,
                    return_dict=False,
                )[0]
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + CFG * (noise_pred_text - noise_pred_uncond)
                if with_slg:
                    skip = transformer(
                        hidden_states=xd,
                        timestep=t.expand(x.shape[0]),
                        encoder_hidden_states=cond.context.to(dtype),
                        pooled_projections=cond.pooled.to(dtype),
                        return_dict=False,
                        skip_layers=[SLG_LAYER],
                    )[0]
                    noise_pred = noise_pred + (noise_pred_text - skip) * 2.5
                scheduler._step_index = 3  # the pipeline's scheduler.step on step 3
                return scheduler.step(noise_pred, t, xd, return_dict=False)[0]

        return step

    plain = {"sd35": sd35_step("plain"), "diffusers": diffusers_step(False)}
    slg_calls = {
        "sd35 (SLG batched)": sd35_step("slg batched"),
        "sd35 (SLG separate)": sd35_step("slg separate"),
        "diffusers": diffusers_step(True),
    }
    return plain, slg_calls


def table(title: str, times: dict[str, list[float]], base: str) -> list[str]:
    lines = ["", f"| {title} | median s | min s | median vs diffusers | min vs diffusers |", "|---|---|---|---|---|"]
    b_med, b_min = statistics.median(times[base]), min(times[base])
    for name, ts in times.items():
        lines.append(
            f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} | {statistics.median(ts) / b_med:.2f} "
            f"| {min(ts) / b_min:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_set_args(parser, dtype_help="both implementations")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    parser.add_argument("--malloc", choices=("default", "tuned"), default="tuned")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    clock = clock_and_threads(args)
    from sd35.runtime.cpu import tune_allocator

    tune_allocator(args.malloc == "tuned")
    paths = write_bench_models(Path(args.dir) / f"depth{args.depth}", bench_configs(args.depth))
    plain, slg = build(paths, args.size, DTYPES[args.dtype])
    with torch.inference_mode():
        plain_out: dict = {}
        slg_out: dict = {}
        plain_times = alternate(plain, args.rounds, clock=clock, outputs=plain_out)
        slg_times = alternate(slg, args.rounds, clock=clock, outputs=slg_out)
    command = "python benchmarks/bench_steps.py " + " ".join(sys.argv[1:])
    lines = header(
        f"Per-step A/B, {args.size}², depth {args.depth}, {args.dtype}, {args.clock} clock, malloc {args.malloc}",
        command,
    )
    lines += table("CFG step (batch 2)", plain_times, "diffusers")
    lines += table("CFG + SLG step", slg_times, "diffusers")
    d1 = (plain_out["sd35"] - plain_out["diffusers"]).abs().max().item()
    d2 = (slg_out["sd35 (SLG batched)"] - slg_out["diffusers"]).abs().max().item()
    d3 = (slg_out["sd35 (SLG batched)"] - slg_out["sd35 (SLG separate)"]).abs().max().item()
    lines.append(
        f"\n{args.rounds} alternating rounds after one warm-up. Next latents, max abs diff: sd35 vs diffusers {d1:.1e} "
        f"(CFG), {d2:.1e} (SLG); batched vs separate SLG {d3:.1e} (latent std {plain_out['sd35'].std():.2f})."
    )
    lines.append(f"- load average at end: {load_average()}")
    emit(lines, args.out)


if __name__ == "__main__":
    main()

"""sd35 vs diffusers' StableDiffusion3Pipeline on the same random weights: per step, per image, memory.

Model set: benchmarks/common.py `bench_configs` (real widths, reduced depths), written once to --dir in the
official layout (sd35) and as a diffusers folder (diffusers). Same prompt embeddings length (77 CLIP + 77
T5 tokens: diffusers gets max_sequence_length=77, sd35's length for short prompts), same size, steps,
Euler on the shift-3 flow schedule (diffusers' FlowMatchEulerDiscreteScheduler = sd35's euler/"normal"),
CFG and Skip Layer Guidance with the same window rule.

Two parts:
1. latency (child processes, alternating sd35 / diffusers, --reps each): load + encode + sample + decode
   of the first image, seconds per step, peak RSS (VmHWM of the child). sd35 runs the stages of its CLI
   (text encoders loaded, used and freed before the MMDiT and VAE load; glibc malloc thresholds raised on
   CPUs); diffusers as its documentation shows (from_pretrained, then the pipeline call).
2. steps (one process, both MMDiTs loaded, the same embeddings and noise): sampling runs alternating
   sd35 / diffusers and, for both alike, glibc malloc at its defaults / tuned. Reports per-step times
   and the final latents' difference (same maths => small).

    .venv/bin/python benchmarks/bench_pipeline.py [--depth 6] [--size 512] [--steps 6] [--dir /tmp/sd35-bench]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_model_set_args,
    bench_configs,
    diffusers_pipeline,
    emit,
    header,
    load_average,
    med_min,
    peak_rss_mib,
    write_bench_models,
)

from sd35.runtime.devices import DTYPES  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
SEED, CFG, SLG_LAYER = 42, 5.0, 2


def _settings(steps: int):
    from sd35.pipeline.generate import SamplingSettings
    from sd35.sampling.guidance import SkipLayerGuidance

    slg = SkipLayerGuidance(layers=(SLG_LAYER,), scale=2.5, start=0.01, end=0.2, rule="steps")
    return SamplingSettings(seed=SEED, steps=steps, cfg=CFG, sampler="euler", scheduler="normal"), slg


def slg_steps(steps: int) -> list[int]:
    return [i for i in range(steps) if 0.01 * steps < i < 0.2 * steps]


def run_sd35(paths: dict, size: int, steps: int, marks: list[float], fast=None, network=None, conds=None):  # noqa: ANN001
    """sd35 stages; returns (latents, images or None, timings). `network`/`conds` skip loading/encoding."""
    from sd35.models.latent_format import SD3_LATENT_FORMAT
    from sd35.pipeline.components import DiffusionModel
    from sd35.pipeline.conditioning import single
    from sd35.pipeline.generate import decode_latents, encode_prompt, sample_latents
    from sd35.runtime.devices import DevicePolicy
    from sd35.sampling.schedule import ModelSampling

    policy = DevicePolicy.create("cpu", "fp32")
    timings, start = {}, time.perf_counter()
    components = None
    if network is None:
        from sd35.pipeline.fastpath import FastPath, apply_fast_path
        from sd35.pipeline.files import ModelFiles, load_components, preflight

        files = ModelFiles(
            model=paths["checkpoint"], clip_l=paths["clip_l"], clip_g=paths["clip_g"], t5xxl=paths["t5xxl"]
        )
        components, _ = apply_fast_path(load_components(preflight(files), policy), fast or FastPath())
        network = components.diffusion.network
        timings["load"] = time.perf_counter() - start
        start = time.perf_counter()
        conds = [encode_prompt(components.text, text, policy)[0] for text in (PROMPT, "")]
        timings["encode"] = time.perf_counter() - start
    settings, slg = _settings(steps)
    diffusion = DiffusionModel(network=network, model_sampling=ModelSampling(shift=3.0), slg=slg)
    latent = torch.zeros(1, 16, size // 8, size // 8)
    start = time.perf_counter()
    marks.append(start)
    latents = sample_latents(
        diffusion,
        single(conds[0]),
        single(conds[1]),
        latent,
        settings,
        policy,
        lambda _: marks.append(time.perf_counter()),
        fast,
    )
    timings["sample"] = time.perf_counter() - start
    images = None
    if components is not None:
        start = time.perf_counter()
        images = decode_latents(components.vae, latents, policy)
        timings["decode"] = time.perf_counter() - start
    return SD3_LATENT_FORMAT.to_model(latents), images, timings


def diffusers_tokenizers():
    from transformers import PreTrainedTokenizerFast

    from sd35.text.tokenizers import load_tokenizers

    tok = load_tokenizers()
    clip = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    return {
        "tokenizer": PreTrainedTokenizerFast(tokenizer_object=tok.clip_l, model_max_length=77, **clip),
        "tokenizer_2": PreTrainedTokenizerFast(tokenizer_object=tok.clip_g, model_max_length=77, **clip),
        "tokenizer_3": PreTrainedTokenizerFast(
            tokenizer_object=tok.t5, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=512
        ),
    }


def diffusers_pipe(transformer, folder: Path | None = None, dtype: torch.dtype = torch.float32):  # noqa: ANN001
    from diffusers import StableDiffusion3Pipeline

    if folder is not None:
        return StableDiffusion3Pipeline.from_pretrained(folder, torch_dtype=dtype, **diffusers_tokenizers())
    return diffusers_pipeline(transformer)


def run_diffusers(pipe, size: int, steps: int, marks: list[float], embeds=None):  # noqa: ANN001
    """diffusers stages; `embeds` = (cond, uncond) Conditionings skips encoding. Returns (latents, images, t)."""
    from sd35.sampling.noise import seeded_noise

    timings = {}
    if embeds is None:
        start = time.perf_counter()
        with torch.no_grad():
            pe, npe, ppe, nppe = pipe.encode_prompt(
                PROMPT, PROMPT, PROMPT, negative_prompt="", do_classifier_free_guidance=True, max_sequence_length=77
            )
        timings["encode"] = time.perf_counter() - start
    else:
        (pe, ppe), (npe, nppe) = (embeds[0].context, embeds[0].pooled), (embeds[1].context, embeds[1].pooled)

    def on_end(_pipe, _i, _t, _kwargs):  # noqa: ANN001, ANN202
        marks.append(time.perf_counter())
        return {}

    start = time.perf_counter()
    marks.append(start)
    with torch.no_grad():
        latents = pipe(
            prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe, negative_pooled_prompt_embeds=nppe,
            latents=seeded_noise((1, 16, size // 8, size // 8), SEED), num_inference_steps=steps, guidance_scale=CFG,
            height=size, width=size, output_type="latent", skip_guidance_layers=[SLG_LAYER],
            skip_layer_guidance_scale=2.5, skip_layer_guidance_start=0.01, skip_layer_guidance_stop=0.2,
            callback_on_step_end=on_end,
        ).images  # fmt: skip
    timings["sample"] = time.perf_counter() - start
    images = None
    if pipe.vae is not None:
        start = time.perf_counter()
        with torch.no_grad():
            z = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
            images = (pipe.vae.decode(z, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
        timings["decode"] = time.perf_counter() - start
    return latents, images, timings


def sd35_cli_path(
    paths: dict, size: int, steps: int, marks: list[float], threads: int | None, dtype: str = "fp32"
) -> dict:
    """The stages of `sd35 generate` (pipeline.oneshot.generate_from_files), timed: text encoders loaded,
    used and freed, then the MMDiT + VAE loaded, the CLI's CPU settings applied, sampled, decoded."""
    import gc

    from sd35.pipeline.fastpath import FastPath, apply_fast_path_to
    from sd35.pipeline.files import ModelFiles, load_image_stack, load_text_stack, preflight
    from sd35.pipeline.generate import encode_request, render
    from sd35.pipeline.request import GenerationRequest
    from sd35.runtime.devices import DevicePolicy

    settings, slg = _settings(steps)
    request = GenerationRequest(
        prompt=PROMPT, width=size, height=size, steps=steps, cfg=CFG, sampler="euler", scheduler="normal",
        seed=SEED, slg=slg, negative_zero_after=None,
    )  # fmt: skip
    policy = DevicePolicy.create("cpu", dtype)
    files = ModelFiles(model=paths["checkpoint"], clip_l=paths["clip_l"], clip_g=paths["clip_g"], t5xxl=paths["t5xxl"])
    timings, start = {}, time.perf_counter()
    pre = preflight(files)
    text = load_text_stack(pre, policy)
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    encoded = encode_request(text, request, policy)
    timings["encode"] = time.perf_counter() - start
    del text
    gc.collect()
    start = time.perf_counter()
    diffusion, vae = load_image_stack(pre, policy)
    fast = FastPath(threads=threads)
    diffusion, _ = apply_fast_path_to(diffusion, policy, fast)
    timings["load"] += time.perf_counter() - start
    start = time.perf_counter()
    marks.append(start)
    result = render(diffusion, vae, request, encoded, policy, lambda _: marks.append(time.perf_counter()), fast)
    timings["sample+decode"] = time.perf_counter() - start
    timings["decode"] = time.perf_counter() - marks[-1]  # after the last step's callback: last update + decode
    assert result.images.shape[1] == size
    return timings


def child(which: str, paths: dict, size: int, steps: int, threads: int | None, dtype: str = "fp32") -> None:
    """One first image in a fresh process; prints a JSON line."""
    if threads:
        torch.set_num_threads(threads)
    marks: list[float] = []
    t0 = time.perf_counter()
    if which == "sd35":
        timings = sd35_cli_path(paths, size, steps, marks, threads, dtype)
    else:
        start = time.perf_counter()
        pipe = diffusers_pipe(None, Path(paths["diffusers"]), DTYPES[dtype])
        timings = {"load": time.perf_counter() - start}
        _, _, more = run_diffusers(pipe, size, steps, marks)
        timings.update(more)
        timings["decode"] += timings["sample"] - (marks[-1] - marks[0])  # same split as sd35
    timings["total"] = time.perf_counter() - t0
    timings["steps"] = [b - a for a, b in zip(marks, marks[1:])]
    timings["sample"] = sum(timings["steps"])
    timings["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(timings))


def latency(args, paths: dict) -> list[str]:  # noqa: ANN001
    results: dict[str, list[dict]] = {"sd35": [], "diffusers": []}
    for rep in range(args.reps):
        for which in ("sd35", "diffusers")[:: 1 if rep % 2 == 0 else -1]:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                which,
                "--paths",
                json.dumps({k: str(v) for k, v in paths.items()}),
            ]
            cmd += ["--size", str(args.size), "--steps", str(args.steps), "--dtype", args.dtype] + (
                ["--threads", str(args.threads)] if args.threads else []
            )
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[which].append(json.loads(out.strip().splitlines()[-1]))
            print(which, results[which][-1], file=sys.stderr)
    plain = [i for i in range(1, args.steps) if i not in slg_steps(args.steps)]
    lines = [
        "",
        "| first image | load s | encode s | s/step (plain, median) | sample s | decode s | total s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    med = {}
    for which, runs in results.items():

        def m(key, runs=runs):  # noqa: ANN001, ANN202
            return statistics.median(r[key] for r in runs)

        step = statistics.median(s for r in runs for i, s in enumerate(r["steps"]) if i in plain)
        med[which] = (step, m("total"), m("peak_rss_mib"))
        lines.append(
            f"| {which} | {m('load'):.2f} | {m('encode'):.2f} | {step:.2f} | {m('sample'):.1f} | {m('decode'):.2f} "
            f"| {m('total'):.1f} | {m('peak_rss_mib'):.0f} |"
        )
    ratio = [med["sd35"][i] / med["diffusers"][i] for i in range(3)]
    lines.append(f"| ratio sd35 / diffusers | | | {ratio[0]:.2f} | | | {ratio[1]:.2f} | {ratio[2]:.2f} |")
    lines.append(
        f"\nMedians of {args.reps} child processes each, run alternately; plain steps exclude step 0 "
        f"(setup) and the SLG steps {slg_steps(args.steps)}."
    )
    return lines


def steps_ab(args, paths: dict) -> list[str]:  # noqa: ANN001
    from diffusers import SD3Transformer2DModel

    from sd35.loading.load import load_component
    from sd35.runtime.cpu import tune_allocator
    from sd35.types import Conditioning

    network = load_component(paths["checkpoint"], "mmditx", dtype=torch.float32)
    pipe = diffusers_pipe(SD3Transformer2DModel.from_pretrained(Path(paths["diffusers"]) / "transformer").eval())
    g = torch.Generator().manual_seed(1)
    conds = [Conditioning(torch.randn(1, 154, 4096, generator=g), torch.randn(1, 2048, generator=g)) for _ in range(2)]
    records: dict[tuple[str, bool], list[list[float]]] = {}
    outputs = {}
    for rep in range(args.runs):
        for tuned in (True, False)[:: 1 if rep % 2 == 0 else -1]:
            tune_allocator(tuned)
            for which in ("sd35", "diffusers")[:: 1 if rep % 2 == 0 else -1]:
                marks: list[float] = []
                if which == "sd35":
                    outputs[which] = run_sd35(paths, args.size, args.steps, marks, network=network, conds=conds)[0]
                else:
                    outputs[which] = run_diffusers(pipe, args.size, args.steps, marks, embeds=conds)[0]
                records.setdefault((which, tuned), []).append([b - a for a, b in zip(marks, marks[1:])])
                print(which, tuned, [f"{s:.2f}" for s in records[(which, tuned)][-1]], file=sys.stderr)
    tune_allocator(False)
    slg = slg_steps(args.steps)
    plain = [i for i in range(1, args.steps) if i not in slg]
    diff = (outputs["sd35"] - outputs["diffusers"]).abs().max().item()
    lines = [
        "",
        "| malloc | pipeline | s/step plain steps (median / min) | s/step SLG step (median / min) | s/image (median) |",
        "|---|---|---|---|---|",
    ]
    summary = {}
    for (which, tuned), runs in sorted(records.items(), key=lambda kv: (not kv[0][1], kv[0][0])):
        p = [r[i] for r in runs for i in plain]
        s = [r[i] for r in runs for i in slg]
        summary[(which, tuned)] = (statistics.median(p), min(p), statistics.median(s) if s else float("nan"))
        label = "tuned" if tuned else "glibc default"
        total = statistics.median(sum(r) for r in runs)
        lines.append(f"| {label} | {which} | {med_min(p)} | {med_min(s) if s else '-'} | {total:.1f} |")
    for tuned in (True, False):
        a, b = summary[("sd35", tuned)], summary[("diffusers", tuned)]
        label = "tuned" if tuned else "glibc default"
        lines.append(
            f"| {label} | **ratio sd35/diffusers** | {a[0] / b[0]:.2f} / {a[1] / b[1]:.2f} | {a[2] / b[2]:.2f} | |"
        )
    lines.append(
        f"\n{args.runs} runs of {args.steps} steps per row, alternating pipeline and malloc setting; "
        f"final latents sd35 vs diffusers: max abs diff {diff:.2e} (latent std {outputs['diffusers'].std():.2f})."
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_set_args(parser, dtype_help="latency part: both pipelines")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--reps", type=int, default=2, help="latency children per pipeline")
    parser.add_argument("--runs", type=int, default=2, help="sampling runs per pipeline and malloc setting")
    parser.add_argument("--parts", default="latency,steps")
    parser.add_argument("--out", default=None, help="also append the markdown to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paths", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        paths = {k: Path(v) for k, v in json.loads(args.paths).items()}
        child(args.child, paths, args.size, args.steps, args.threads, args.dtype)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = bench_configs(args.depth)
    paths = write_bench_models(Path(args.dir) / f"depth{args.depth}", configs)
    command = "python benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:])
    lines = header(f"Pipeline: sd35 vs diffusers, {args.size}², {args.steps} steps, {args.dtype} CPU", command)
    mm = configs["mmditx"]
    lines.append(
        f"- models: MMDiT depth {mm.depth} (attn2 on {list(mm.x_block_self_attn_layers)}), hidden 1536; CLIP-L/G "
        f"{configs['clip_l'].num_layers} layers, T5 {configs['t5xxl'].num_layers} layers at full width; real VAE; "
        f"cfg {CFG}, SLG layer {SLG_LAYER} scale 2.5 window 0.01-0.2 (active on steps {slg_steps(args.steps)})"
    )
    if "latency" in args.parts:
        lines += latency(args, paths)
    if "steps" in args.parts:
        lines += steps_ab(args, paths)
    lines.append(f"- load average at end: {load_average()}")
    emit(lines, args.out)


if __name__ == "__main__":
    main()

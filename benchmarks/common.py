"""Shared helpers of the benchmarks: machine description, timing, the bench model set on disk, PSNR.

The bench model set keeps the real SD3.5 Medium widths (MMDiT hidden 1536 / 24 heads / context 4096 /
pooled 2048, CLIP-L 768, CLIP-G 1280, T5-XXL 4096 / d_ff 10240, the real VAE) with fewer layers, so one
step costs what a real step costs per block. Weights are random (sd35.nn.init.randomize_), written once in
the official single-file layout (what sd35 loads) and as a diffusers pipeline folder (what diffusers loads):
the same numbers in both.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from sd35.loading import diffusers_format
from sd35.loading.keymaps import OFFICIAL_PREFIXES
from sd35.loading.load import build_model
from sd35.models.configs import CLIP_G, CLIP_L, SD35_MEDIUM, T5_XXL, AutoencoderConfig
from sd35.nn.init import randomize_

# diffusers' twin of an MMDiTX and the pipeline around it: the parity tests' helpers (tests/diffusers_twin.py)
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from diffusers_twin import diffusers_pipeline as diffusers_pipeline  # noqa: E402
from diffusers_twin import diffusers_transformer as diffusers_transformer  # noqa: E402
from diffusers_twin import mmditx_call as mmditx_call  # noqa: E402
from diffusers_twin import slg_kwargs as slg_kwargs  # noqa: E402

MIB = 2**20


def bench_configs(depth: int, clip_layers: int = 3, t5_layers: int = 2, table: int = 96) -> dict:
    """Real widths, reduced depths. attn2 on the first 13/24 of the blocks, as SD3.5 Medium (0..12 of 24)."""
    attn2 = tuple(range(round(depth * 13 / 24)))
    return {
        "mmditx": dataclasses.replace(
            SD35_MEDIUM, depth=depth, pos_embed_max_size=table, x_block_self_attn_layers=attn2
        ),
        "vae": AutoencoderConfig(),
        "clip_l": dataclasses.replace(CLIP_L, num_layers=clip_layers),
        "clip_g": dataclasses.replace(CLIP_G, num_layers=clip_layers),
        "t5xxl": dataclasses.replace(T5_XXL, num_layers=t5_layers),
    }


def write_bench_models(out: Path, configs: dict, seed: int = 0) -> dict[str, Path]:
    """Official files (checkpoint = MMDiT + VAE, clip_l, clip_g, t5xxl) + `diffusers/`; skips existing files."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "checkpoint": out / "sd3.5_bench.safetensors",
        "clip_l": out / "clip_l.safetensors",
        "clip_g": out / "clip_g.safetensors",
        "t5xxl": out / "t5xxl_bench.safetensors",
        "diffusers": out / "diffusers",
    }
    if all(p.exists() for p in paths.values()) and (out / "done").exists():
        return paths
    states = {}
    for i, (component, config) in enumerate(configs.items()):
        model = build_model(component, config, device="cpu", dtype=torch.float32)
        randomize_(model, seed + i)
        states[component] = {k: v.contiguous() for k, v in model.state_dict().items()}
        del model
    checkpoint = {OFFICIAL_PREFIXES[c] + k: v for c in ("mmditx", "vae") for k, v in states[c].items()}
    save_file(checkpoint, str(paths["checkpoint"]), metadata={"format": "pt"})
    del checkpoint
    for component in ("clip_l", "clip_g", "t5xxl"):
        save_file(states[component], str(paths[component]), metadata={"format": "pt"})
    diffusers_format.write_model_index(paths["diffusers"])
    for component, state in states.items():
        diffusers_format.write_component(paths["diffusers"], component, configs[component], state)
    (out / "done").write_text("ok\n")
    return paths


def cpu_model() -> str:
    """lscpu's "Model name" (platform.processor() where lscpu is missing)."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return model


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM"


def versions() -> str:
    import diffusers
    import transformers

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}"
    )


def header(title: str, command: str) -> list[str]:
    return [
        f"## {title}",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {machine()}; torch threads {torch.get_num_threads()}",
        f"- {versions()}",
        f"- command: `{command}`",
        f"- 1/5/15-min load average at start: {load_average()}",
    ]


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB: VmHWM, which (unlike ru_maxrss, inherited across fork
    and exec) starts afresh in an exec'd child; ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def alternate(
    calls: dict[str, Callable[[], object]],
    runs: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    outputs: dict[str, object] | None = None,
) -> dict[str, list[float]]:
    """Time each call `runs` times after `warmup` rounds, alternating the order every round so load from other
    processes hits all alike: seconds per call by name. `outputs`, when given, receives each call's latest
    result; otherwise a result is dropped as soon as its call returns, within the timed interval."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(warmup + runs):
        for name, call in list(calls.items())[:: 1 if i % 2 else -1]:
            start = clock()
            if outputs is None:
                call()
            else:
                outputs[name] = call()
            if i >= warmup:
                times[name].append(clock() - start)
    return times


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def add_model_set_args(parser: argparse.ArgumentParser, *, dtype_help: str) -> None:
    """The options of the benchmarks that run the bench model set (`bench_configs`) against diffusers:
    --depth, --size, --threads, --dir and --dtype (fp32 or bf16, a key of `sd35.runtime.devices.DTYPES`)."""
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dir", default="/tmp/sd35-bench-models")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help=dtype_help)


def clock_and_threads(args: argparse.Namespace) -> Callable[[], float]:
    """Applies --threads (torch's thread count) and returns the timer --clock names ("wall" or "cpu"); exits
    when --clock cpu comes without --threads 1."""
    if args.clock == "cpu" and args.threads != 1:
        sys.exit("--clock cpu needs --threads 1 (CPU time of several threads counts spin-waiting)")
    if args.threads:
        torch.set_num_threads(args.threads)
    return CLOCKS[args.clock]


def load_average() -> str:
    """The 1/5/15-minute load averages, "a, b, c"."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def emit(lines: list[str], out: str | None) -> None:
    """Print the report's markdown lines and, with --out, append them (and a blank line) to that file."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


def med_min(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} / {min(values):.3f}"


def psnr(reference: torch.Tensor, other: torch.Tensor, peak: float | None = None) -> float:
    """PSNR (dB) of `other` against `reference`; `peak` defaults to the reference's range."""
    peak = float(reference.max() - reference.min()) if peak is None else peak
    mse = float(((reference.float() - other.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)

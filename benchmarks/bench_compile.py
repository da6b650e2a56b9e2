"""torch.compile of the MMDiT-X joint blocks on the CPU: warm-up, steady per-forward time, memory.

The bench model set (real widths, depth 6; benchmarks/common.py), batch 2 at 512², fp32, one thread,
process CPU time; eager and compiled copies alternate. --freeze turns on inductor's weight freezing (a
library option, `compile_blocks(freeze=True)`; the CLI's --compile does not use it); VmHWM shows the extra
packed copy of the weights. --diffusers adds diffusers' SD3Transformer2DModel (eager, the bench set's
diffusers folder: the same weights) to the alternation, so both of sd35's forwards get a ratio against it.

    .venv/bin/python benchmarks/bench_compile.py [--freeze] [--diffusers] [--latent 64] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_configs, emit, header, mmditx_call, peak_rss_mib, write_bench_models  # noqa: E402

from sd35.loading.load import load_component  # noqa: E402
from sd35.runtime.compile import compile_blocks  # noqa: E402
from sd35.runtime.cpu import tune_allocator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--freeze", action="store_true")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--diffusers", action="store_true", help="also time diffusers' transformer (eager)")
    parser.add_argument("--dir", default="/tmp/sd35-bench-models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tune_allocator(True)
    paths = write_bench_models(Path(args.dir) / "depth6", bench_configs(6))
    eager = load_component(paths["checkpoint"], "mmditx", dtype=torch.float32)
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled.joint_blocks, freeze=args.freeze)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, args.latent, args.latent, generator=g)
    t, y, c = (
        torch.rand(2, generator=g) * 1000,
        torch.randn(2, 2048, generator=g),
        torch.randn(2, 154, 4096, generator=g),
    )
    forwards = {"eager": eager, "compiled": compiled}
    if args.diffusers:
        from diffusers import SD3Transformer2DModel

        twin = SD3Transformer2DModel.from_pretrained(Path(paths["diffusers"]) / "transformer").eval()
        forwards["diffusers"] = mmditx_call(twin)
    times: dict[str, list[float]] = {name: [] for name in forwards}
    with torch.inference_mode():
        start = time.perf_counter()
        out = compiled(x, t, y, c)
        warmup = time.perf_counter() - start
        diff = (out - eager(x, t, y, c)).abs().max().item()
        if args.diffusers:
            forwards["diffusers"](x, t, y, c)  # its warm-up
        for i in range(args.rounds):
            for name, model in list(forwards.items())[:: 1 if i % 2 else -1]:
                start = time.process_time()
                model(x, t * (1 + 0.01 * i), y, c)
                times[name].append(time.process_time() - start)
    lines = header("torch.compile of the joint blocks (CPU, fp32, 1 thread)", "python " + " ".join(sys.argv))
    lines += [
        f"- freezing {'on' if args.freeze else 'off'}; first compiled call (warm-up, wall) {warmup:.1f} s; "
        f"max |compiled - eager| {diff:.1e}; peak RSS {peak_rss_mib():.0f} MiB (two model copies of "
        f"{sum(p.numel() * 4 for p in eager.parameters()) / 2**20:.0f} MiB each)",
        "",
        "| forward | median s | min s | vs eager | vs diffusers |",
        "|---|---|---|---|---|",
    ]
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, v in times.items():
        versus = f"{med[name] / med['diffusers']:.3f}" if args.diffusers else "—"
        lines.append(f"| {name} | {med[name]:.3f} | {min(v):.3f} | {med[name] / med['eager']:.3f} | {versus} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()

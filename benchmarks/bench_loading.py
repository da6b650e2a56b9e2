"""Peak resident memory while loading a checkpoint (goal: <= 1.1 x tensor bytes + 300 MB).

Writes a random MMDiT-X checkpoint at the real SD3.5 Medium width (hidden 1536, the full 384² position
table) with fewer blocks, so the file is ~1.7 GB, then loads it in fresh subprocesses and reads each
child's peak RSS (resource.getrusage(RUSAGE_SELF).ru_maxrss) after every weight has been touched:

    python benchmarks/bench_loading.py [--depth 6] [--dir /tmp] [--keep]

Cases: stored dtype == compute dtype (zero-copy memory map), fp16 -> fp32 and fp16 -> bf16 (read, cast,
free per tensor), the same weights as a sharded diffusers folder (q/k/v concatenated on load), and a
baseline child that only imports torch and sd35.loading.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
from sd35.loading.load import load_component
path, dtype = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if dtype == "none":
    model, loaded = None, 0.0
else:
    model = load_component(path, "mmditx", dtype=getattr(torch, dtype))
    loaded = time.perf_counter() - start
    total = 0.0
    for p in model.parameters():  # touch every page of every weight (one element per 4 KiB page)
        total += float(p.reshape(-1)[:: max(1, 4096 // p.element_size())].float().sum())
nbytes = 0 if model is None else sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "tensor_bytes": nbytes, "load_s": loaded, "total_s": time.perf_counter() - start}))
"""


WRITER = r"""
import dataclasses, json, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from sd35.loading.diffusers_format import write_component
from sd35.loading.load import build_model
from sd35.models.configs import SD35_MEDIUM
folder, depth = Path(sys.argv[1]), int(sys.argv[2])
config = dataclasses.replace(SD35_MEDIUM, depth=depth, x_block_self_attn_layers=tuple(range(depth // 2)))
shapes = {k: v.shape for k, v in build_model("mmditx", config).state_dict().items()}
generator = torch.Generator().manual_seed(0)
state = {k: torch.empty(s, dtype=torch.float16).normal_(0, 0.02, generator=generator) for k, s in shapes.items()}
save_file({f"model.diffusion_model.{k}": v for k, v in state.items()}, str(folder / "reduced.safetensors"))
write_component(folder / "diffusers", "mmditx", config, state, shards=3)
print(json.dumps({"bytes": sum(v.numel() * 2 for v in state.values())}))
"""


def write_checkpoint(folder: Path, depth: int) -> tuple[Path, Path, int]:
    """Random fp16 official-layout file + the same weights as a sharded diffusers transformer folder,
    written by a child process so this parent stays small (Linux children inherit ru_maxrss at fork)."""
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(folder), str(depth)], capture_output=True, text=True, check=True
    )
    nbytes = json.loads(out.stdout.strip().splitlines()[-1])["bytes"]
    return folder / "reduced.safetensors", folder / "diffusers" / "transformer", nbytes


def measure(path: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), dtype], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=6, help="joint blocks (24 in the real model)")
    parser.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sd35-bench-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        single, diffusers, file_bytes = write_checkpoint(folder, args.depth)
        print(
            f"wrote {file_bytes / 2**30:.2f} GiB of fp16 tensors in {time.perf_counter() - t0:.1f} s", file=sys.stderr
        )
        base = measure(single, "none")["peak_rss"]
        rows = []
        for label, path, dtype in (
            ("single file, fp16 -> fp16 (mmap, zero copy)", single, "float16"),
            ("single file, fp16 -> fp32 (read + cast)", single, "float32"),
            ("single file, fp16 -> bf16 (read + cast)", single, "bfloat16"),
            ("diffusers folder, 3 shards, fp16 -> fp16", diffusers, "float16"),
        ):
            r = measure(path, dtype)
            goal = 1.1 * r["tensor_bytes"] + 300 * 2**20
            rows.append((label, r, goal))
        mib = 2**20
        print(
            f"file tensor bytes: {file_bytes / mib:.0f} MiB; baseline child (import torch + sd35.loading): "
            f"{base / mib:.0f} MiB peak RSS\n"
        )
        print("| case | model tensor bytes | peak RSS | goal (1.1x + 300 MB) | within goal | load | load + touch all |")
        print("|---|---|---|---|---|---|---|")
        for label, r, goal in rows:
            ok = "yes" if r["peak_rss"] <= goal else "NO"
            print(
                f"| {label} | {r['tensor_bytes'] / mib:.0f} MiB | {r['peak_rss'] / mib:.0f} MiB | "
                f"{goal / mib:.0f} MiB | {ok} | {r['load_s']:.2f} s | {r['total_s']:.2f} s |"
            )
    finally:
        if args.keep:
            print(f"files kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

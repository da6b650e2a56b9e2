"""Memory while loading T5-XXL for `--t5-fp8`: quantized while loading vs loaded in bf16 (then quantized).

Writes a random fp16 T5 encoder file at the real T5-XXL width (d_model 4096, d_ff 10240, 64 heads, the
32128-token embedding) with fewer layers, then loads it in fresh child processes, each sampling its own
/proc/self/status every 5 ms: anonymous memory (RssAnon: what the process must hold) and file-backed
resident pages (RssFile: clean pages of the memory-mapped file, which the kernel can drop and re-read),
plus ru_maxrss (their peak sum):

    python benchmarks/bench_t5_loading.py [--layers 4] [--dir /tmp]

Cases (each child calls sd35.pipeline.files.load_t5 with a bf16 text policy):
- bf16: T5 as `--dtype bf16` without `--t5-fp8`.
- fp8 while loading: `--t5-fp8` now (block Linears read from the mapped fp16 pages and quantized).
- fp8 after a bf16 load: what `--t5-fp8` did before (load bf16, then quantize_fp8_).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, threading, time
import torch
from sd35.loading.detect import detect_component
from sd35.pipeline.files import load_t5
from sd35.runtime.devices import DevicePolicy
from sd35.runtime.quant import quantize_fp8_
path, case = sys.argv[1], sys.argv[2]
peaks = {"RssAnon": 0, "RssFile": 0}
done = threading.Event()
def sample():
    while not done.is_set():
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in peaks:
                peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
        time.sleep(0.005)
thread = threading.Thread(target=sample); thread.start()
start = time.perf_counter()
info = detect_component(path, "t5xxl")
policy = DevicePolicy(text_dtype=torch.bfloat16, t5_fp8=case == "fp8-while-loading")
model = load_t5(info, policy)
if case == "fp8-after-bf16-load":
    quantize_fp8_(model.encoder.block)
seconds = time.perf_counter() - start
for p in model.parameters():  # touch every weight page
    float(p.reshape(-1)[:: max(1, 4096 // p.element_size())].float().sum())
time.sleep(0.05); done.set(); thread.join()
held = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({**peaks, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "held": held, "seconds": seconds}))
"""

WRITER = r"""
import dataclasses, sys
import torch
from safetensors.torch import save_file
from sd35.loading.load import build_model
from sd35.models.configs import T5_XXL
config = dataclasses.replace(T5_XXL, num_layers=int(sys.argv[2]))
shapes = {k: v.shape for k, v in build_model("t5xxl", config).state_dict().items()}
g = torch.Generator().manual_seed(0)
save_file({k: torch.empty(s, dtype=torch.float16).normal_(0, 0.02, generator=g) for k, s in shapes.items()},
          sys.argv[1])
"""


def run_child(path: Path, case: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), case], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="T5 layers (24 in T5-XXL)")
    parser.add_argument("--dir", default=None, help="where to write the file (default: a temp dir)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sd35-t5-", dir=args.dir))
    try:
        path = folder / "t5xxl_fp16.safetensors"
        subprocess.run([sys.executable, "-c", WRITER, str(path), str(args.layers)], check=True)
        mib = 2**20
        print(f"T5-XXL width, {args.layers} layers, fp16 file {path.stat().st_size / mib:.0f} MiB\n")
        print("| case | weights held | peak RssAnon | peak RssFile | ru_maxrss | load s |")
        print("|---|---|---|---|---|---|")
        for case in ("bf16", "fp8-while-loading", "fp8-after-bf16-load"):
            r = run_child(path, case)
            print(
                f"| {case} | {r['held'] / mib:.0f} MiB | {r['RssAnon'] / mib:.0f} MiB | {r['RssFile'] / mib:.0f} MiB "
                f"| {r['maxrss'] / mib:.0f} MiB | {r['seconds']:.2f} |"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

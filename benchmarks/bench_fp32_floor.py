"""How far can an fp32 MMDiT-X forward on this CPU go below diffusers'? The kernel floor, measured.

Both implementations must run the same fp32 GEMMs (the Linear layers) and the same attention at the same
shapes; only the rest (norms, modulation, GELU, residuals, copies) is theirs to shape. This script measures:

1. the CPU's fp32 FMA peak: a register-only AVX-512 (else AVX2) FMA loop, compiled with the system C
   compiler into a temporary folder, run with 1 thread and with the torch thread count (OpenMP);
2. the GEMM rate at the block shapes (MKL through F.linear) as a fraction of that peak;
3. a profiled forward of each, sd35's MMDiTX and diffusers' SD3Transformer2DModel on the same random weights
   (bench model set widths, --depth blocks, batch 2 = one CFG step, --size² image, 154 context tokens),
   alternating: wall time, and the time inside the shared kernels (aten::addmm / aten::mm /
   SDPA flash) vs the rest.

The floor: if sd35 spent nothing outside those kernels, its step would take sd35's kernel time; against
diffusers' whole step that is the best ratio the fp32 maths allows without a faster GEMM or attention.

    .venv/bin/python benchmarks/bench_fp32_floor.py [--depth 6] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, bench_configs, diffusers_transformer, emit, header, mmditx_call  # noqa: E402

from sd35.models.mmditx import MMDiTX  # noqa: E402
from sd35.nn.init import randomize_  # noqa: E402

KERNELS = ("aten::addmm", "aten::mm", "aten::_scaled_dot_product_flash_attention_for_cpu")
FMA_LOOP = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>
#ifdef __AVX512F__
typedef __m512 V; enum { LANES = 16 };
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 V; enum { LANES = 8 };
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define STORE _mm256_storeu_ps
#endif
int main(void) {
  const long iters = 100000000L;
  struct timespec a, b;
  float sink = 0;
  clock_gettime(CLOCK_MONOTONIC, &a);
#pragma omp parallel reduction(+ : sink)
  {
    V acc[12], m = SET1(1.0000001f), c = SET1(1e-7f);
    for (int i = 0; i < 12; i++) acc[i] = SET1((float)i);
    for (long n = 0; n < iters; n++) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; i++) acc[i] = FMA(acc[i], m, c); /* 12 independent chains, in registers */
    }
    float out[LANES];
    for (int i = 0; i < 12; i++) { STORE(out, acc[i]); sink += out[0]; }
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
  printf("%f %d\n", omp_get_max_threads() * iters * 12.0 * LANES * 2 / s / 1e9, sink > 0);
  return 0;
}
"""


def fma_peak(threads: list[int], runs: int = 3) -> dict[int, float] | str:
    """Best of `runs` FMA-loop GFLOP/s per thread count, or why it could not be measured."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "no C compiler"
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
        src.write_text(FMA_LOOP)
        built = subprocess.run([cc, "-O2", "-march=native", "-fopenmp", str(src), "-o", str(exe)], capture_output=True)
        if built.returncode != 0:
            return "compile failed: " + built.stderr.decode()[-200:]
        rates = {}
        for n in threads:
            env = {"OMP_NUM_THREADS": str(n), "PATH": "/usr/bin:/bin"}
            outs = [subprocess.run([str(exe)], capture_output=True, env=env, text=True).stdout for _ in range(runs)]
            rates[n] = max(float(out.split()[0]) for out in outs)
        return rates


def gemm_rates(rounds: int) -> dict[str, float]:
    """Best GFLOP/s of F.linear at the image stream's shapes (batch 2 × 1024 tokens, width 1536)."""
    g = torch.Generator().manual_seed(0)
    rates = {}
    for name, (k, n) in {
        "qkv 1536→4608": (1536, 4608),
        "fc1 1536→6144": (1536, 6144),
        "fc2 6144→1536": (6144, 1536),
    }.items():
        x, w, b = torch.randn(2048, k, generator=g), torch.randn(n, k, generator=g) * 0.02, torch.randn(n)
        times = alternate({name: lambda x=x, w=w, b=b: F.linear(x, w, b)}, rounds)[name]  # after one warm-up
        rates[name] = 2 * 2048 * k * n / min(times) / 1e9
    return rates


def profiled(fn) -> tuple[float, float]:  # noqa: ANN001
    """(wall seconds of one call, seconds of it inside KERNELS by the profiler's self times)."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - start
    # an op's self time is its duration on the calling thread (intra-op threads run inside it)
    kernel = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in KERNELS) / 1e6
    return wall, kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    lines = header(
        "fp32 kernel floor: sd35 vs diffusers", "python benchmarks/bench_fp32_floor.py " + " ".join(sys.argv[1:])
    )
    threads = sorted({1, torch.get_num_threads()})
    peak = fma_peak(threads)
    lines += ["", "| measure | value |", "|---|---|"]
    if isinstance(peak, str):
        lines.append(f"| FMA peak | not measured ({peak}) |")
        top = None
    else:
        lines += [f"| fp32 FMA peak, {n} thread(s) | {r:.0f} GFLOP/s |" for n, r in peak.items()]
        top = peak[max(peak)]
    with torch.inference_mode():
        for name, rate in gemm_rates(args.rounds).items():
            share = f" ({rate / top:.0%} of the FMA peak)" if top else ""
            lines.append(f"| F.linear {name}, 2048 rows | {rate:.0f} GFLOP/s{share} |")
        config = bench_configs(args.depth)["mmditx"]
        model = randomize_(MMDiTX(config, device="meta").to_empty(device="cpu"), 0).eval()
        twin = mmditx_call(diffusers_transformer(model))
        g = torch.Generator().manual_seed(1)
        side = args.size // 8
        x, ctx = torch.randn(2, 16, side, side, generator=g), torch.randn(2, 154, 4096, generator=g)
        t, y = torch.full((2,), 500.0), torch.randn(2, 2048, generator=g)
        calls = {
            "sd35": lambda: model(x, t, y, ctx),
            "diffusers": lambda: twin(x, t, y, ctx),
        }
        for call in calls.values():
            call()  # warm-up
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
        for i in range(args.rounds):
            for name, call in list(calls.items())[:: 1 if i % 2 else -1]:
                runs[name].append(profiled(call))
    lines += ["", "| forward (profiled) | wall s, median | in GEMM + SDPA s | outside s |", "|---|---|---|---|"]
    med = {name: (statistics.median(w for w, _ in r), statistics.median(k for _, k in r)) for name, r in runs.items()}
    for name, (wall, kernel) in med.items():
        lines.append(f"| {name} | {wall:.3f} | {kernel:.3f} | {wall - kernel:.3f} |")
    lines += [
        "",
        f"Measured ratio sd35 / diffusers (median wall): {med['sd35'][0] / med['diffusers'][0]:.3f}. "
        f"Floor (sd35's GEMM + SDPA time alone / diffusers' wall): {med['sd35'][1] / med['diffusers'][0]:.3f}.",
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()

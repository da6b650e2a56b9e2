"""Op-level measurements behind the MMDiT-X forward choices (CPU, fp32, shapes of a 512² CFG batch).

Each pair runs alternately in one process, one torch thread, timed with process CPU time (robust to other
processes on a shared machine). Shapes: batch 2, 154 context + 1024 image tokens, hidden 1536, 24 heads.

    .venv/bin/python benchmarks/bench_ops.py [--rounds 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, emit, header  # noqa: E402

from sd35.nn.attention import attention_heads, head_major, merge_heads  # noqa: E402
from sd35.nn.norms import rms_norm  # noqa: E402
from sd35.runtime.cpu import tune_allocator  # noqa: E402

B, LC, N, D, H = 2, 154, 1024, 1536, 24
L = LC + N


def vae_pair(latent: int) -> dict[str, dict]:
    from sd35.models.autoencoder import AutoencoderKL
    from sd35.models.configs import AutoencoderConfig
    from sd35.nn.init import randomize_

    vae = randomize_(AutoencoderKL(AutoencoderConfig()), 0).eval()
    z = torch.randn(1, 16, latent, latent, generator=torch.Generator().manual_seed(0))
    z_cl = z.contiguous(memory_format=torch.channels_last)
    return {
        f"real VAE decode, {latent * 8}² image": {
            "NCHW input": lambda: vae.decode(z),
            "channels-last input": lambda: vae.decode(z_cl),
        }
    }


def pairs() -> dict[str, dict]:
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, L, 3, H, 64, generator=g)
    q = qkv[:, :, 0]
    joint = torch.empty(B, L, H, 64)
    w = torch.randn(64, generator=g)
    hidden = torch.randn(B, N, 4 * D, generator=g)
    x = torch.randn(B * N, D, generator=g)
    wqkv, bqkv = torch.randn(3 * D, D, generator=g) / D**0.5, torch.randn(3 * D, generator=g)
    thirds = [(a.clone(), b.clone()) for a, b in zip(wqkv.chunk(3), bqkv.chunk(3), strict=True)]
    k, v = torch.randn(B, L, H, 64, generator=g), torch.randn(B, L, H, 64, generator=g)
    qj = torch.randn(B, L, H, 64, generator=g)

    def sdpa(qq: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(qq.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    heads = [head_major(x.view(B, N, D), L, 64).copy_(t) for t in (qj, k, v)]

    def image_rows(q_: torch.Tensor, k_: torch.Tensor, v_: torch.Tensor) -> torch.Tensor:
        return merge_heads(attention_heads(q_, k_, v_)[:, LC:])  # what the image stream's proj reads

    big = torch.randn(B, L, 3 * D, generator=g)
    return {
        "q/k RMSNorm [2,1178,24,64] strided": {
            "F.rms_norm (torch composite)": lambda: F.rms_norm(q, (64,), w, 1e-6),
            "sd35 rms_norm (vector_norm), new tensor": lambda: rms_norm(q, w, 1e-6),
            "sd35 rms_norm into the joint buffer (out=)": lambda: rms_norm(q, w, 1e-6, out=joint),
        },
        "GELU tanh [2,1024,6144]": {
            "F.gelu (new tensor)": lambda: F.gelu(hidden, approximate="tanh"),
            "aten.gelu_ (in place)": lambda: torch.ops.aten.gelu_(hidden, approximate="tanh"),
        },
        "qkv projection [2048,1536] x [1536,3x1536]": {
            "three Linear (diffusers to_q/to_k/to_v)": lambda: [F.linear(x, a, b) for a, b in thirds],
            "one fused Linear (checkpoint layout)": lambda: F.linear(x, wqkv, bqkv),
        },
        "joint attention, 1178 queries over 1178 keys": {
            "one SDPA call (all queries)": lambda: sdpa(qj),
            "two SDPA calls (context, image queries)": lambda: (sdpa(qj[:, :LC]), sdpa(qj[:, LC:])),
        },
        "joint attention + image rows to [B,N,D], q/k/v layout": {
            "token-major [B,L,H,64] views (diffusers)": lambda: image_rows(qj, k, v),
            "head-major [B,H,L,64] buffers (sd35.nn.attention.head_major)": lambda: image_rows(*heads),
        },
        "fresh 43 MiB buffer (clone), glibc malloc": {
            "glibc defaults (mmap per buffer)": lambda: (tune_allocator(False), big.clone()),
            "thresholds raised (heap reuse)": lambda: (tune_allocator(True), big.clone()),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--vae", type=int, default=0, help="also time the VAE decode at this latent side")
    parser.add_argument("--vae-rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = header("Op-level A/B (1 thread, CPU time)", "python benchmarks/bench_ops.py " + " ".join(sys.argv[1:]))
    lines += ["", "| operation | variant | median ms | min ms | vs first |", "|---|---|---|---|---|"]
    groups = [(title, calls, args.rounds) for title, calls in pairs().items()]
    if args.vae:
        groups += [(title, calls, args.vae_rounds) for title, calls in vae_pair(args.vae).items()]
    with torch.inference_mode():
        for title, calls, rounds in groups:
            times = alternate(calls, rounds, clock=time.process_time)
            first = statistics.median(next(iter(times.values())))
            for name, ts in times.items():
                med = statistics.median(ts)
                lines.append(f"| {title} | {name} | {med * 1e3:.1f} | {min(ts) * 1e3:.1f} | {med / first:.2f} |")
    tune_allocator(False)
    emit(lines, args.out)


if __name__ == "__main__":
    main()

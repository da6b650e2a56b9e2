"""CPU execution settings: threads, the glibc allocator, native bf16 detection. Nothing runs at import.

Why the allocator matters (measured in BENCHMARKS.md): PyTorch's CPU allocator takes every buffer from
malloc, and glibc serves blocks above its mmap threshold (128 kB, adapting up to 32 MB) with a fresh mmap
that is unmapped again on free. A diffusion step allocates and frees hundreds of 10-60 MB activations, so
every step page-faults all of them in again, and with several threads each munmap also costs a TLB
shootdown. Raising the thresholds makes malloc keep and reuse freed memory instead; peak RSS barely changes
(the same buffers are live at the peak), the resident size between stages stays at that peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
GLIBC_DEFAULT_THRESHOLD = 128 * 1024
TUNED_MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap and are reused
TUNED_TRIM_THRESHOLD = (1 << 31) - 1  # do not return free heap top to the OS between steps


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None or not hasattr(os, "confstr"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL(name)
    except (OSError, ValueError):
        return None


def tune_allocator(enable: bool = True) -> bool:
    """Make glibc malloc reuse large freed blocks (enable=True) or restore its defaults (False).

    Returns True when applied (glibc found and mallopt accepted both values), False elsewhere (musl,
    macOS, Windows), where it does nothing. Process-wide: call it from an application, not a library.
    """
    libc = _libc()
    if libc is None:
        return False
    mmap_value = TUNED_MMAP_THRESHOLD if enable else GLIBC_DEFAULT_THRESHOLD
    trim_value = TUNED_TRIM_THRESHOLD if enable else GLIBC_DEFAULT_THRESHOLD
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_value)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_value))
    if not enable:
        libc.malloc_trim(0)
    log.debug("glibc malloc thresholds %s: %s", "raised" if enable else "restored", ok)
    return ok


def set_threads(threads: int) -> None:
    """torch intra-op threads (the GEMM/SDPA thread pool); raises ValueError for threads < 1."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 dot products in hardware, so bf16 matmuls beat fp32 ones.

    x86: AVX512-BF16 or AMX-BF16 (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later), with
    oneDNN able to use them; Arm64: the BF16 extension (e.g. Graviton 3, Neoverse V1/V2, Apple M2).
    oneDNN's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) is not enough: it also accepts
    AVX-512 CPUs without BF16 instructions, where bf16 is emulated and slower than fp32.
    """
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        return False
    try:
        caps = get_capabilities()
    except (AttributeError, RuntimeError):
        return False
    if caps.get("architecture") == "x86_64":
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16")) and _onednn_bf16()
    return bool(caps.get("bf16") or caps.get("sve_bf16"))


def _onednn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class CpuSettings:
    """What `apply_cpu_settings` did, for logs and benchmark reports."""

    threads: int
    allocator_tuned: bool
    native_bf16: bool


def apply_cpu_settings(threads: int | None = None, *, tune_malloc: bool = True) -> CpuSettings:
    """Thread count (None keeps torch's default: one per core) and the allocator tuning above."""
    if threads is not None:
        set_threads(threads)
    tuned = tune_allocator() if tune_malloc else False
    return CpuSettings(threads=torch.get_num_threads(), allocator_tuned=tuned, native_bf16=cpu_has_native_bf16())

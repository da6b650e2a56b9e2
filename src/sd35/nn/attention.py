"""Multi-head attention helpers around torch's scaled_dot_product_attention (no weights here)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def split_qkv(qkv: Tensor, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split a fused projection into per-head q, k, v: [B, L, 3·H·Dh] -> 3 × [B, L, H, Dh] (views).

    The fused layout is (3, H, Dh) along the last dim, as in sd3.5 `mmditx.py split_qkv`.
    """
    b, length, _ = qkv.shape
    q, k, v = qkv.view(b, length, 3, -1, head_dim).unbind(2)
    return q, k, v


def head_major(like: Tensor, length: int, head_dim: int) -> Tensor:
    """An uninitialised [B, L, H, Dh] view of a contiguous [B, H, L, Dh] buffer; like: [B, *, H·Dh] gives
    B, H, dtype and device.

    Writing q, k and v into such buffers (normalising or copying into the view) hands SDPA contiguous
    [B, H, L, Dh] operands: torch's CPU flash kernel runs 11–13 % faster on them than on token-major
    [B, L, H, Dh] strides, with bit-identical output (benchmarks/bench_ops.py, BENCHMARKS.md).
    """
    return like.new_empty(like.shape[0], like.shape[-1] // head_dim, length, head_dim).transpose(1, 2)


def attention_heads(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Unmasked softmax attention with scale 1/sqrt(Dh): q, k, v [B, L, H, Dh] -> [B, L, H, Dh] (a view).

    Inputs may be strided views (SDPA reads them through a [B, H, L, Dh] transpose without a copy);
    `head_major` buffers are the fastest on CPUs.
    """
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, L, H, Dh] -> [B, L, H·Dh]: a view where the memory allows (e.g. token-major SDPA output, which
    may then be strided over the batch), otherwise one contiguous copy (a head-major output)."""
    b, length, heads, head_dim = x.shape
    return x.reshape(b, length, heads * head_dim)

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


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Unmasked softmax attention with scale 1/sqrt(Dh): q, k, v [B, L, H, Dh] -> [B, L, H·Dh].

    Inputs may be strided views; SDPA reads them through a [B, H, L, Dh] transpose without a copy.
    """
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    b, heads, length, head_dim = out.shape
    return out.transpose(1, 2).reshape(b, length, heads * head_dim)

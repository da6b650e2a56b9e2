"""Small frozen value types passed between layers. Shapes use einops notation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keep `import sd35.types` free of torch for the workflow layer
    import torch


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning for the MMDiT: context [B, L, C_ctx] (C_ctx = 4096 for SD3.x), pooled [B, 2048]."""

    context: torch.Tensor
    pooled: torch.Tensor

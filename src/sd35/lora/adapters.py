"""The weight-update maths of each LoRA kind, as frozen values holding the file's tensors.

Every adapter gives `delta()`, the fp32 update ΔW it adds to one weight at strength 1 (its own
alpha/rank scale included), in the file's layout; `fit_delta` shapes it to the target. Conventions
follow ComfyUI `comfy/weight_adapter/` (lora.py, loha.py, lokr.py) and LyCORIS:

- LoRA/LoCon: ΔW = (alpha/r)·up·down, r = down.shape[0]; conv factors are flattened to
  [out, r]·[r, in·k·k]; a Tucker `lora_mid` [r, r, k, k] gives ΔW[o,i] = Σ up[o,a]·mid[a,b]·down[b,i].
- LoHa: ΔW = (alpha/r)·(w1a·w1b) ⊙ (w2a·w2b), r = w1b.shape[0]; Tucker t1/t2 as LyCORIS.
- LoKr: ΔW = s·kron(w1, w2), each factor full or a product a·b (w2 optionally Tucker);
  s = alpha/r with r the rank of the decomposed factor (w2's if both), s = 1 when neither is.
- Full: ΔW given as is (ComfyUI `.diff` / `.diff_b`).
A missing alpha means scale 1 (ComfyUI, diffusers without metadata).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Shape = tuple[int, ...]


def _mm(a: Tensor, b: Tensor) -> Tensor:
    return a.float().flatten(1) @ b.float().flatten(1)


def _tucker(core: Tensor, b: Tensor, a: Tensor) -> Tensor:
    """LyCORIS Tucker rebuild: core [r, r, k, k], b [r, in], a [r, out] -> [out, in, k, k]."""
    return torch.einsum("i j k l, j r, i p -> p r k l", core.float(), b.float().flatten(1), a.float().flatten(1))


@dataclass(frozen=True, eq=False)
class LowRank:
    """LoRA (2-D factors) or LoCon (conv factors), optionally with a Tucker mid factor."""

    up: Tensor  # [out, r] or [out, r, 1, 1]
    down: Tensor  # [r, in] or [r, in, k, k]
    alpha: float | None = None
    mid: Tensor | None = None  # [r, r, k, k]

    @property
    def kind(self) -> str:
        return "locon" if self.down.ndim > 2 or self.mid is not None else "lora"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.alpha is not None else 1.0

    def check(self) -> str | None:
        """A description of inconsistent factor shapes, or None."""
        if self.up.ndim < 2 or self.down.ndim < 2:
            return f"lora_up {list(self.up.shape)} and lora_down {list(self.down.shape)} must be matrices"
        if self.up.shape[1] != self.rank:
            up = list(self.up.shape)
            return f"rank mismatch: lora_down has rank {self.rank} but lora_up {up} has rank {up[1]}"
        if self.mid is not None and tuple(self.mid.shape[:2]) != (self.up.shape[1], self.rank):
            return f"rank mismatch: lora_mid {list(self.mid.shape)} does not join rank {self.rank} factors"
        return None

    def shape(self) -> Shape:
        """Shape of `delta()` (computed from the factors' shapes only)."""
        if self.mid is None:
            return (self.up.shape[0], self.down.flatten(1).shape[1])
        return (self.up.shape[0], self.down.flatten(1).shape[1], *self.mid.shape[2:])

    def delta(self) -> Tensor:
        if self.mid is None:
            return _mm(self.up, self.down) * self.scale
        up, down, mid = self.up.float().flatten(1), self.down.float().flatten(1), self.mid.float()
        return torch.einsum("o a, a b h w, b i -> o i h w", up, mid, down) * self.scale

    def factors(self) -> tuple[Tensor, Tensor] | None:
        """(down [r, in], up·scale [out, r]) in fp32 for a Linear target, None where a dense ΔW is needed."""
        if self.kind != "lora":
            return None
        return self.down.float(), self.up.float() * self.scale


@dataclass(frozen=True, eq=False)
class LoHa:
    w1a: Tensor
    w1b: Tensor
    w2a: Tensor
    w2b: Tensor
    alpha: float | None = None
    t1: Tensor | None = None
    t2: Tensor | None = None
    kind = "loha"

    @property
    def rank(self) -> int:
        return self.w1b.shape[0]

    def check(self) -> str | None:
        if self.t1 is not None or self.t2 is not None:
            if self.t1 is None or self.t2 is None:
                return "LoHa Tucker form needs both hada_t1 and hada_t2"
            return None
        if self.w1a.shape[1] != self.w1b.shape[0] or self.w2a.shape[1] != self.w2b.shape[0]:
            return (
                f"rank mismatch: hada_w1 {list(self.w1a.shape)}·{list(self.w1b.shape)}, "
                f"hada_w2 {list(self.w2a.shape)}·{list(self.w2b.shape)}"
            )
        if self.w1a.shape[0] != self.w2a.shape[0] or self.w1b.flatten(1).shape[1] != self.w2b.flatten(1).shape[1]:
            return "hada_w1 and hada_w2 products have different shapes"
        return None

    def shape(self) -> Shape:
        if self.t1 is not None:
            return (self.w1a.shape[1], self.w1b.flatten(1).shape[1], *self.t1.shape[2:])
        return (self.w1a.shape[0], self.w1b.flatten(1).shape[1])

    def delta(self) -> Tensor:
        scale = self.alpha / self.rank if self.alpha is not None else 1.0
        if self.t1 is not None and self.t2 is not None:
            w1, w2 = _tucker(self.t1, self.w1b, self.w1a), _tucker(self.t2, self.w2b, self.w2a)
        else:
            w1, w2 = _mm(self.w1a, self.w1b), _mm(self.w2a, self.w2b)
        return w1 * w2 * scale

    def factors(self) -> None:
        return None


@dataclass(frozen=True, eq=False)
class LoKr:
    w1: Tensor | None = None
    w2: Tensor | None = None
    w1a: Tensor | None = None
    w1b: Tensor | None = None
    w2a: Tensor | None = None
    w2b: Tensor | None = None
    t2: Tensor | None = None
    alpha: float | None = None
    kind = "lokr"

    def check(self) -> str | None:
        if self.w1 is None and (self.w1a is None or self.w1b is None):
            return "LoKr needs lokr_w1 or both lokr_w1_a and lokr_w1_b"
        if self.w2 is None and (self.w2a is None or self.w2b is None):
            return "LoKr needs lokr_w2 or both lokr_w2_a and lokr_w2_b"
        if self.w1 is None and self.w1a.shape[1] != self.w1b.shape[0]:
            return f"rank mismatch: lokr_w1_a {list(self.w1a.shape)} · lokr_w1_b {list(self.w1b.shape)}"
        if self.w2 is None and self.t2 is None and self.w2a.shape[1] != self.w2b.shape[0]:
            return f"rank mismatch: lokr_w2_a {list(self.w2a.shape)} · lokr_w2_b {list(self.w2b.shape)}"
        return None

    def shape(self) -> Shape:
        w1 = tuple(self.w1.shape) if self.w1 is not None else (self.w1a.shape[0], self.w1b.shape[1])
        if self.w2 is not None:
            w2 = tuple(self.w2.shape)
        elif self.t2 is not None:
            w2 = (self.w2a.shape[1], self.w2b.shape[1], *self.t2.shape[2:])
        else:
            w2 = (self.w2a.shape[0], self.w2b.shape[1])
        w1 = w1 + (1,) * (len(w2) - len(w1))
        return tuple(a * b for a, b in zip(w1, w2)) + w2[len(w1) :]

    def delta(self) -> Tensor:
        rank = None
        if self.w1 is not None:
            w1 = self.w1.float()
        else:
            w1, rank = _mm(self.w1a, self.w1b), self.w1b.shape[0]
        if self.w2 is not None:
            w2 = self.w2.float()
        elif self.t2 is not None:
            w2, rank = _tucker(self.t2, self.w2b, self.w2a), self.w2b.shape[0]
        else:
            w2, rank = _mm(self.w2a, self.w2b), self.w2b.shape[0]
        while w1.ndim < w2.ndim:  # conv: w1 [a, b] acts as [a, b, 1, 1]
            w1 = w1.unsqueeze(-1)
        scale = self.alpha / rank if self.alpha is not None and rank else 1.0
        return torch.kron(w1, w2) * scale

    def factors(self) -> None:
        return None


@dataclass(frozen=True, eq=False)
class Full:
    """A full difference (ComfyUI `.diff` for a weight, `.diff_b` for a bias)."""

    diff: Tensor
    kind = "diff"

    def check(self) -> str | None:
        return None

    def shape(self) -> Shape:
        return tuple(self.diff.shape)

    def delta(self) -> Tensor:
        return self.diff.float()

    def factors(self) -> None:
        return None


Adapter = LowRank | LoHa | LoKr | Full


def fits(delta_shape: Shape, shape: Shape) -> bool:
    """A ΔW of `delta_shape` can be viewed as `shape`: same leading dim and element count (a conv
    ΔW may come flattened, as in ComfyUI's `reshape(weight.shape)`)."""
    if tuple(delta_shape) == tuple(shape):
        return True
    same_rows = bool(delta_shape) and bool(shape) and delta_shape[0] == shape[0]
    return same_rows and torch.Size(delta_shape).numel() == torch.Size(shape).numel()

"""Deterministic random initialisation for tiny test/demo checkpoints (not for training)."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter and floating buffer of `module` with seeded random values, in place.

    The values are reproducible on any machine (a CPU generator, parameters visited in name order) and
    keep activations of order one: matrices ~ N(0, 1/fan_in), biases ~ N(0, 0.02²), 1-D norm scales
    ~ 1 + N(0, 0.1²), embedding tables (token, position) ~ N(0, 0.5²). No parameter is left at a value
    (0 or 1) that would let a wrong implementation pass a parity test by accident.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    tensors = dict(module.named_parameters())
    tensors.update((n, b) for n, b in module.named_buffers() if b.is_floating_point())
    tables = {f"{n}.weight" for n, m in module.named_modules() if isinstance(m, nn.Embedding)}
    tables.update(n for n in tensors if n.rsplit(".", 1)[-1] == "pos_embed")
    for name in sorted(tensors):
        tensor = tensors[name]
        values = torch.empty(tensor.shape, dtype=torch.float32)
        leaf = name.rsplit(".", 1)[-1]
        if name in tables:
            values.normal_(0.0, 0.5, generator=generator)
        elif tensor.ndim >= 2:
            fan_in = math.prod(tensor.shape[1:])
            values.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        elif leaf == "weight":
            values.normal_(1.0, 0.1, generator=generator)
        else:
            values.normal_(0.0, 0.02, generator=generator)
        tensor.copy_(values.to(tensor.dtype))
    return module

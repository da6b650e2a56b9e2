"""Linear layers on the CPU in bf16: one oneDNN call with the bias (and GELU) in the GEMM's epilogue.

In bf16 on a CPU, `F.linear` runs as addmm: the bias is first broadcast-copied into the output, then the
oneDNN GEMM accumulates into it, and a GELU after it is one more pass over the largest activation of a
block. `torch.ops.mkldnn._linear_pointwise` (the op inductor emits for fused CPU linears) does the GEMM,
adds the bias and applies GELU on the fp32 accumulator before the single bf16 rounding. Measured on an AMX
CPU ([2048, 1536] x [1536, 6144], BENCHMARKS.md): 17.7 ms vs 23.4 ms for the linear, 24.4 ms vs 35.8 ms
with the GELU. It is not used in fp32 (there `F.linear` runs MKL's sgemm, faster than oneDNN's), under
autograd, under torch.compile (inductor fuses by itself), or for a layer that is not a plain
`nn.Linear` without hooks (quantized layers, LoRA on-the-fly hooks keep their own forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FUSED_DTYPES = (torch.bfloat16,)


def _fused_op_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def can_fuse(layer: nn.Module, x: Tensor) -> bool:
    """True when `linear(layer, x)` takes the oneDNN path (see the module docstring)."""
    return (
        type(layer) is nn.Linear
        and x.device.type == "cpu"
        and x.dtype in FUSED_DTYPES
        and layer.weight.dtype == x.dtype
        and layer.weight.device.type == "cpu"
        and (layer.bias is None or layer.bias.dtype == x.dtype)
        and not layer._forward_hooks
        and not layer._forward_pre_hooks
        and not (torch.is_grad_enabled() and layer.weight.requires_grad)
        and not torch.compiler.is_compiling()
        and _fused_op_available()
    )


def linear(layer: nn.Module, x: Tensor, *, gelu: bool = False) -> Tensor:
    """layer(x), then GELU (tanh approximation) when `gelu`: [..., in] -> [..., out].

    Equal to `F.gelu(layer(x), approximate="tanh")` up to the rounding of the output dtype (bf16 on the
    fused path: bias and GELU are applied before rounding instead of after).
    """
    if can_fuse(layer, x):
        attr, algorithm = ("gelu", "tanh") if gelu else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, attr, [], algorithm)
    out = layer(x)
    if not gelu:
        return out
    if out.requires_grad:
        return F.gelu(out, approximate="tanh")
    return torch.ops.aten.gelu_(out, approximate="tanh")  # in place on the largest activation of a block

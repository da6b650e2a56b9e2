"""Weight quantization of Linear layers: int8 dynamic (CPU) and fp8 with fp8 matmuls (Hopper/Ada GPUs).

Both replace `nn.Linear` children in place and are opt-in (`sd35 generate --int8 / --fp8`); both lose
accuracy (measured in BENCHMARKS.md). Apply LoRAs before quantizing: they patch the original layers.

- int8: PyTorch's own dynamic quantization (`torch.ao.quantization.quantize_dynamic`): weights int8 per
  tensor, activations quantized per call, int8 GEMMs through fbgemm/oneDNN (VNNI/AMX). CPU only.
- fp8: `Fp8Linear` keeps the weight in float8_e4m3fn with one fp32 scale (amax/448). On CUDA devices with
  fp8 tensor cores (compute capability ≥ 8.9: Ada, Hopper, Blackwell) the input is quantized per call with
  its own amax scale, computed on the device (no host sync), and `torch._scaled_mm` multiplies in fp8
  with bf16/fp16 output. Anywhere else (CPU, older GPUs, shapes not multiple of 16) the weight is
  dequantized to the input's dtype and `F.linear` runs: the same maths at fp8 weight precision, at
  higher-precision speed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn value
FP8_MIN_CAPABILITY = (8, 9)


def fp8_matmul_supported(device: torch.device | str) -> bool:
    """True where `torch._scaled_mm` runs fp8 GEMMs: CUDA devices of compute capability ≥ 8.9."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


QUANT_CHUNK_ELEMENTS = 1 << 22  # rows converted at a time: fp32 temporaries of ~16 MB, not of the whole weight


def quantize_fp8(tensor: Tensor) -> tuple[Tensor, Tensor]:
    """Per-tensor fp8: (q float8_e4m3fn, scale fp32 0-d) with tensor ≈ q·scale; stays on the tensor's device.

    amax from `aminmax` and the conversion in row chunks: no full-size temporary (a T5-XXL FF weight
    would need 168 MB of fp32), each element computed exactly as (x.float() / scale).clamp(±448).
    """
    tensor = tensor.detach()
    low, high = torch.aminmax(tensor)
    amax = torch.maximum(low.float().abs(), high.float().abs()).clamp_min(1e-12)
    scale = amax / FP8_MAX
    q = torch.empty(tensor.shape, dtype=FP8_DTYPE, device=tensor.device)
    rows = tensor.reshape(tensor.shape[0], -1) if tensor.ndim else tensor.reshape(1, 1)
    flat_q = q.view(rows.shape)
    step = max(1, QUANT_CHUNK_ELEMENTS // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        chunk = (rows[start : start + step].float() / scale).clamp_(-FP8_MAX, FP8_MAX)  # a new tensor: x untouched
        flat_q[start : start + step] = chunk.to(FP8_DTYPE)
    return q, scale


class Fp8Linear(nn.Module):
    """A Linear whose weight [out, in] is stored in fp8 with a per-tensor scale; see the module docstring.

    `fp8_compute=False` never takes the fp8 GEMM path: the weight is always upcast to the input's dtype, so
    the layer computes exactly what a layer holding the dequantized weight computes (fp8 storage only).
    """

    def __init__(self, weight: Tensor, scale: Tensor, bias: Tensor | None, *, fp8_compute: bool = True) -> None:
        super().__init__()
        self.fp8_compute = fp8_compute
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", scale.reshape(()).float())
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, fp8_compute: bool = True) -> Fp8Linear:
        """Quantize the layer's weight; a weight already in float8_e4m3fn (an fp8 file loaded as stored) is
        kept as it is, with scale 1: those are exactly the values the file holds."""
        if linear.weight.dtype == FP8_DTYPE:
            return cls(
                linear.weight.detach(), torch.ones((), dtype=torch.float32), linear.bias, fp8_compute=fp8_compute
            )
        weight, scale = quantize_fp8(linear.weight)
        return cls(weight, scale, linear.bias, fp8_compute=fp8_compute)

    def dequantized_weight(self, dtype: torch.dtype) -> Tensor:
        return (self.weight.float() * self.weight_scale).to(dtype)

    def uses_scaled_mm(self, x: Tensor) -> bool:
        """The fp8 GEMM path: a capable CUDA device, half-precision input, dims multiple of 16."""
        return (
            self.fp8_compute
            and x.dtype in (torch.bfloat16, torch.float16)
            and self.in_features % 16 == 0
            and self.out_features % 16 == 0
            and fp8_matmul_supported(x.device)
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.uses_scaled_mm(x):
            bias = self.bias.to(x.dtype) if self.bias is not None else None
            return F.linear(x, self.dequantized_weight(x.dtype), bias)
        flat = x.reshape(-1, self.in_features)
        x8, x_scale = quantize_fp8(flat)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        out = torch._scaled_mm(  # weight.t() is column-major [in, out], as _scaled_mm wants its second operand
            x8, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale, bias=bias, out_dtype=x.dtype
        )
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 per-tensor"


def _replace_linears(root: nn.Module, make: Callable[[nn.Linear], nn.Module], keep: Callable[[str], bool]) -> int:
    count = 0
    for name, module in list(root.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and keep(full):
                setattr(module, child_name, make(child))
                count += 1
    return count


def quantize_fp8_(root: nn.Module, keep: Callable[[str], bool] = lambda name: True, *, fp8_compute: bool = True) -> int:
    """Replace every `nn.Linear` under `root` whose qualified name passes `keep` with `Fp8Linear`, in place.

    Returns the number of layers replaced. The fp8 weights stay on the layer's device. `fp8_compute`: see
    `Fp8Linear` (False: fp8 storage, computation in the input's dtype).
    """
    with torch.no_grad():
        count = _replace_linears(root, lambda linear: Fp8Linear.from_linear(linear, fp8_compute=fp8_compute), keep)
    if count:  # 0 when the layers are fp8 already (quantized while loading)
        log.info("fp8: %d linear layers quantized", count)
    return count


def quantize_int8_dynamic_(root: nn.Module) -> nn.Module:
    """PyTorch dynamic int8 quantization of every `nn.Linear` under `root`, in place (CPU only)."""
    from torch.ao.quantization import quantize_dynamic

    if any(p.device.type != "cpu" for p in root.parameters()):
        raise ValueError("int8 dynamic quantization runs on the CPU only")
    if any(p.dtype != torch.float32 for p in root.parameters()):
        raise ValueError("int8 dynamic quantization needs fp32 weights (use --dtype fp32)")
    with warnings.catch_warnings():  # torch.ao deprecation notices: the API still works in torch 2.x
        warnings.simplefilter("ignore")
        quantize_dynamic(root, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return root

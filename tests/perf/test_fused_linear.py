"""sd35.nn.linear: the oneDNN bias(+GELU) epilogue path for bf16 on CPUs against the plain layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sd35.models.configs import TINY_MMDITX
from sd35.models.mmditx import MMDiTX
from sd35.nn import linear as linear_module
from sd35.nn.init import randomize_
from sd35.nn.linear import can_fuse, linear

pytestmark = pytest.mark.skipif(not linear_module._fused_op_available(), reason="torch built without oneDNN")


def _layer(dtype: torch.dtype, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(192, 768, bias=bias).to(dtype).requires_grad_(False)


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_bf16_linear_matches_the_fp32_computation(gelu: bool, bias: bool) -> None:
    layer = _layer(torch.bfloat16, bias)
    x = torch.randn(2, 77, 192, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    assert can_fuse(layer, x)
    with torch.no_grad():
        got = linear(layer, x, gelu=gelu)
        plain = layer(x)
        plain = F.gelu(plain, approximate="tanh") if gelu else plain
    w, b = layer.weight.float(), layer.bias.float() if bias else None
    exact = F.linear(x.float(), w, b)
    exact = F.gelu(exact, approximate="tanh") if gelu else exact
    scale = exact.abs().max().item()
    fused_err = (got.float() - exact).abs().max().item() / scale
    plain_err = (plain.float() - exact).abs().max().item() / scale
    print(f"bf16 relative error vs fp32: fused {fused_err:.2e}, plain {plain_err:.2e}")
    assert got.dtype == torch.bfloat16 and got.shape == plain.shape
    assert fused_err <= 8e-3  # one bf16 rounding of the output (2^-8 relative), accumulations aside
    assert fused_err <= plain_err * 1.5 + 1e-6  # never worse than the unfused bf16 path


def test_layers_that_must_keep_their_own_forward_do() -> None:
    x32 = torch.randn(3, 192)
    layer = _layer(torch.float32)
    assert not can_fuse(layer, x32)  # fp32: MKL's sgemm, faster than oneDNN's
    with torch.no_grad():
        assert torch.equal(linear(layer, x32, gelu=True), F.gelu(layer(x32), approximate="tanh"))
    bf = _layer(torch.bfloat16)
    xb = x32.to(torch.bfloat16)
    handle = bf.register_forward_hook(lambda _m, _i, out: out * 0)  # e.g. a LoRA on-the-fly term
    with torch.no_grad():
        assert not can_fuse(bf, xb) and linear(bf, xb).abs().max() == 0  # the hook ran
    handle.remove()
    bf.requires_grad_(True)
    assert not can_fuse(bf, xb)  # autograd: the fused op has no backward
    with torch.no_grad():
        assert can_fuse(bf, xb)


def test_bf16_mmditx_with_fused_linears_tracks_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole tiny MMDiT-X in bf16 (fused linears) against the same weights in fp32."""
    fused_calls = []
    check = linear_module.can_fuse
    monkeypatch.setattr(
        linear_module, "can_fuse", lambda layer, x: fused_calls.append(check(layer, x)) or fused_calls[-1]
    )
    model = randomize_(MMDiTX(TINY_MMDITX), seed=0).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([500.0, 250.0])
    pooled, context = torch.randn(2, 320, generator=g), torch.randn(2, 7, 384, generator=g)
    with torch.no_grad():
        ref = model(x, t, pooled, context)
        assert not any(fused_calls)  # fp32: plain layers
        fused = model.to(torch.bfloat16)(x, t, pooled, context).float()
    assert sum(fused_calls) >= 4 * TINY_MMDITX.depth  # qkv, proj, fc1+GELU, fc2 of the blocks
    rel = ((fused - ref).norm() / ref.norm()).item()
    print(f"bf16 (fused linears) vs fp32 MMDiT-X: relative L2 {rel:.4f}")
    assert rel < 0.02

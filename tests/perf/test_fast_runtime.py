"""Runtime fast paths against the plain path: tiled and channels-last VAE decode, torch.compile, int8 and fp8
Linear layers (the fp8 GEMM path runs on the CPU through torch._scaled_mm with the device check patched),
and the CPU settings helpers."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from sd35.models.autoencoder import AutoencoderKL
from sd35.models.configs import TINY_MMDITX, TINY_VAE
from sd35.models.mmditx import MMDiTX
from sd35.nn.init import randomize_
from sd35.pipeline import generate as generate_module
from sd35.pipeline.components import VAE
from sd35.pipeline.generate import decode_latents
from sd35.runtime import quant
from sd35.runtime.compile import compile_blocks
from sd35.runtime.cpu import apply_cpu_settings, cpu_has_native_bf16, set_threads, tune_allocator
from sd35.runtime.devices import DevicePolicy
from sd35.runtime.quant import Fp8Linear, fp8_matmul_supported, quantize_fp8_, quantize_int8_dynamic_


@pytest.fixture(scope="module")
def vae() -> VAE:
    return VAE(randomize_(AutoencoderKL(TINY_VAE), seed=3).eval())


def _latents(h: int = 12, w: int = 16) -> torch.Tensor:
    return torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(2))


def test_channels_last_decode_matches_nchw(vae: VAE) -> None:
    z = _latents()
    plain = decode_latents(vae, z, DevicePolicy(), tiled=False, channels_last=False)
    fast = decode_latents(vae, z, DevicePolicy(), tiled=False, channels_last=True)
    diff = (plain - fast).abs().max().item()
    print(f"channels-last vs NCHW decode: max diff {diff:.2e} (images in [0, 1])")
    assert diff <= 3e-5


def test_single_tile_decode_is_the_untiled_decode(vae: VAE) -> None:
    z = _latents()  # smaller than one 64-latent-px tile: one window of weight 1
    untiled = decode_latents(vae, z, DevicePolicy(), tiled=False, channels_last=False)
    tiled = decode_latents(vae, z, DevicePolicy(), tiled=True, channels_last=False)
    assert torch.equal(untiled, tiled)


def test_large_images_are_tiled_automatically(vae: VAE, monkeypatch: pytest.MonkeyPatch) -> None:
    """The auto rule (needs_tiling) routes to tiled_decode; tiles of 16 latent px stay within the bounds
    tests/models/test_vae_tiling.py establishes (mean |diff| ≤ 0.25 std of the untiled output)."""
    calls = []
    real = generate_module.tiled_decode

    def small_tiles(auto, z):  # noqa: ANN001, ANN202
        calls.append(tuple(z.shape))
        return real(auto, z, tile_size=16, overlap=6)

    z = _latents(28, 40)
    untiled = decode_latents(vae, z, DevicePolicy(), tiled=False)
    monkeypatch.setattr(generate_module, "needs_tiling", lambda h, w: True)
    monkeypatch.setattr(generate_module, "tiled_decode", small_tiles)
    tiled = decode_latents(vae, z, DevicePolicy())
    assert calls == [(1, 16, 28, 40)]
    rel_mean = ((tiled - untiled).abs().mean() / untiled.std()).item()
    print(f"tiled vs untiled decode: mean |diff| {rel_mean:.3f} std")
    assert rel_mean <= 0.25


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compiled_blocks_match_eager() -> None:
    torch._dynamo.reset()
    model = randomize_(MMDiTX(TINY_MMDITX), seed=4).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 8, 8, generator=g)
    t = torch.rand(2, generator=g) * 1000
    pooled = torch.randn(2, TINY_MMDITX.adm_in_channels, generator=g)
    context = torch.randn(2, 12, TINY_MMDITX.context_in_dim, generator=g)
    with torch.no_grad():
        eager = model(x, t, pooled, context)
        report = compile_blocks(model.joint_blocks)
        compiled = model(x, t, pooled, context)
    torch._dynamo.reset()
    assert report.blocks == TINY_MMDITX.depth
    diff = (eager - compiled).abs().max().item()
    print(f"compiled vs eager: max diff {diff:.2e}")
    assert diff <= 1e-5


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()


def test_int8_dynamic_quantization_is_close_and_replaces_linears() -> None:
    model = _mlp()
    x = torch.randn(16, 64)
    with torch.no_grad():
        reference = model(x)
        quantize_int8_dynamic_(model)
        out = model(x)
    assert not any(type(m) is nn.Linear for m in model.modules())
    relative = ((out - reference).norm() / reference.norm()).item()
    print(f"int8 dynamic vs fp32: relative error {relative:.4f}")
    assert relative < 0.04  # measured 0.022 (per-tensor int8 weights and activations)


def test_fp8_fallback_is_the_dequantized_linear() -> None:
    model = _mlp()
    x = torch.randn(16, 64)
    with torch.no_grad():
        reference = model(x)
        assert quantize_fp8_(model) == 2
        out = model(x)
        layer = model[0]
        assert isinstance(layer, Fp8Linear) and layer.weight.dtype == quant.FP8_DTYPE
        assert not layer.uses_scaled_mm(x) and not fp8_matmul_supported("cpu")
        manual = torch.nn.functional.linear(x, layer.weight.float() * layer.weight_scale, layer.bias)
        torch.testing.assert_close(layer(x), manual, rtol=0, atol=0)
    relative = ((out - reference).norm() / reference.norm()).item()
    print(f"fp8 weights (fallback) vs fp32: relative error {relative:.4f}")
    assert relative < 0.06


def test_fp8_scaled_mm_path_matches_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU branch (dynamic per-tensor input scale, torch._scaled_mm) run on the CPU kernel."""
    layer = Fp8Linear.from_linear(nn.Linear(64, 48))
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    fallback = layer(x)
    monkeypatch.setattr(quant, "fp8_matmul_supported", lambda device: True)
    assert layer.uses_scaled_mm(x)
    try:
        fast = layer(x)
    except (RuntimeError, NotImplementedError) as exc:  # a torch build without the CPU fp8 kernel
        pytest.skip(f"torch._scaled_mm has no CPU kernel here: {exc}")
    assert fast.shape == (3, 5, 48) and fast.dtype == torch.bfloat16
    relative = ((fast.float() - fallback.float()).norm() / fallback.float().norm()).item()
    print(f"fp8 GEMM vs dequantized fallback: relative difference {relative:.4f}")
    assert relative < 0.06  # the input is quantized to fp8 too


def test_cpu_settings_apply_and_restore() -> None:
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        settings = apply_cpu_settings(None)
        assert settings.threads == 1
        assert isinstance(settings.allocator_tuned, bool) and isinstance(cpu_has_native_bf16(), bool)
        with pytest.raises(ValueError):
            set_threads(0)
    finally:
        tune_allocator(False)
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("caps", "native"),
    [
        ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}, False),
        ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True, "amx_bf16": False}, True),
        ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}, True),
        ({"architecture": "x86_64", "avx2": True}, False),
        ({"architecture": "arm64", "neon": True, "bf16": True}, True),
        ({"architecture": "arm64", "neon": True}, False),
    ],
)
def test_auto_dtype_on_cpus_is_bf16_only_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, caps: dict, native: bool
) -> None:
    """The issue's rule: bf16 where the CPU computes it natively, fp32 where it would be emulated (an
    AVX-512 CPU without BF16, which oneDNN's own check accepts); text encoders never in fp16."""
    from sd35.runtime import cpu

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(cpu, "_onednn_bf16", lambda: True)
    assert cpu.cpu_has_native_bf16() is native
    policy = DevicePolicy.create("cpu", "auto")
    expected = torch.bfloat16 if native else torch.float32
    assert (policy.dtype, policy.vae_dtype, policy.text_dtype) == (expected, expected, expected)
    assert DevicePolicy.create("cpu", "fp32").dtype == torch.float32  # the explicit choice always wins
    assert DevicePolicy.create("cpu", "fp16").text_dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 53), (5,), (), (3, 4, 5)])
def test_chunked_fp8_quantization_is_the_one_shot_formula(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, shape: tuple
) -> None:
    """quantize_fp8 converts row chunks (no full fp32 copy of a weight): bit-identical to
    (x.float() / (amax/448)).clamp(±448) in one go, and the input is never modified (fp32's .float() is x)."""
    monkeypatch.setattr(quant, "QUANT_CHUNK_ELEMENTS", 100)  # many chunks, uneven last one
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    before = x.clone()
    q, scale = quant.quantize_fp8(x)
    expected_scale = x.abs().amax().float().clamp_min(1e-12) / quant.FP8_MAX
    expected = (x.float() / expected_scale).clamp(-quant.FP8_MAX, quant.FP8_MAX).to(quant.FP8_DTYPE)
    assert torch.equal(scale, expected_scale) and q.shape == x.shape
    assert torch.equal(q.view(torch.uint8), expected.view(torch.uint8))
    assert torch.equal(x, before)

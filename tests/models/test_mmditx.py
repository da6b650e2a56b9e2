"""MMDiTX parity with diffusers' SD3Transformer2DModel on identical random weights (CPU, fp32).

The diffusers model is loaded from our state dict in the official layout (`model.diffusion_model.` prefix)
through diffusers' own single-file converter, so the key mapping is checked too. Both models take
timestep = 1000·sigma: the diffusers SD3 pipeline passes `scheduler.timesteps` (= sigmas·1000) unchanged
(checked in `test_diffusers_timestep_convention_is_1000_sigma`).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_twin import diffusers_transformer
from sd35.errors import UserInputError
from sd35.models.configs import SD3_MEDIUM, SD35_MEDIUM, TINY_MMDITX, MMDiTXConfig
from sd35.models.mmditx import MMDiTX
from sd35.nn.init import randomize_

TOL = 1e-4
SD3_TINY = dataclasses.replace(TINY_MMDITX, qk_norm=False, x_block_self_attn_layers=())
REAL_WIDTH = dataclasses.replace(SD35_MEDIUM, depth=2, pos_embed_max_size=16, x_block_self_attn_layers=(0,))


def _ours(config: MMDiTXConfig, seed: int = 0) -> MMDiTX:
    model = MMDiTX(config, device="meta").to_empty(device="cpu")  # skip torch's default init
    return randomize_(model, seed).eval()


def _inputs(config: MMDiTXConfig, batch: int, height: int, width: int, ctx_len: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, height, width, generator=g)
    sigma = torch.rand(batch, generator=g)
    pooled = torch.randn(batch, config.adm_in_channels, generator=g)
    context = torch.randn(batch, ctx_len, config.context_in_dim, generator=g)
    return x, sigma * 1000, pooled, context


def _max_diff(config: MMDiTXConfig, shape: tuple[int, int, int, int], skip: tuple[int, ...] = ()) -> float:
    batch, height, width, ctx_len = shape
    model = _ours(config)
    twin = diffusers_transformer(model, copy=False)
    x, t, pooled, context = _inputs(config, batch, height, width, ctx_len)
    with torch.no_grad():
        ours = model(x, t, pooled, context, skip_layers=skip)
        theirs = twin(x, context, pooled, t, skip_layers=list(skip) or None, return_dict=False)[0]
    assert ours.shape == theirs.shape == x.shape
    assert theirs.abs().max() > 0.1  # a real signal, not a degenerate all-zero output
    return (ours - theirs).abs().max().item()


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        pytest.param(TINY_MMDITX, (2, 16, 16, 154), id="sd35-medium-layout"),
        pytest.param(SD3_TINY, (2, 16, 16, 154), id="sd3-medium-layout"),
        pytest.param(TINY_MMDITX, (1, 12, 20, 154), id="non-square-latent"),
        pytest.param(TINY_MMDITX, (2, 8, 8, 37), id="context-37"),
        pytest.param(SD3_TINY, (1, 8, 10, 231), id="sd3-context-231"),
        pytest.param(REAL_WIDTH, (1, 8, 12, 24), id="real-width-1536-depth-2"),
    ],
)
def test_matches_diffusers(config: MMDiTXConfig, shape: tuple[int, int, int, int]) -> None:
    assert _max_diff(config, shape) <= TOL


@pytest.mark.parametrize("skip", [(1,), (0, 2), (2,)], ids=str)
def test_skip_layers_match_diffusers(skip: tuple[int, ...]) -> None:
    assert _max_diff(TINY_MMDITX, (2, 16, 16, 77), skip) <= TOL


def test_odd_latent_is_padded_circularly_and_cropped() -> None:
    """A 9x11 latent equals diffusers on the circularly padded 10x12 latent, cropped (ComfyUI behaviour)."""
    model = _ours(TINY_MMDITX)
    twin = diffusers_transformer(model, copy=False)
    x, t, pooled, context = _inputs(TINY_MMDITX, 2, 9, 11, 20)
    with torch.no_grad():
        ours = model(x, t, pooled, context)
        padded = F.pad(x, (0, 1, 0, 1), mode="circular")
        theirs = twin(padded, context, pooled, t, return_dict=False)[0][..., :9, :11]
    assert ours.shape == x.shape
    assert (ours - theirs).abs().max().item() <= TOL


def test_diffusers_timestep_convention_is_1000_sigma() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    torch.testing.assert_close(scheduler.timesteps, scheduler.sigmas[:-1] * 1000)


def test_skip_layers_change_output_and_out_of_range_is_ignored() -> None:
    model = _ours(TINY_MMDITX)
    x, t, pooled, context = _inputs(TINY_MMDITX, 1, 8, 8, 10)
    with torch.no_grad():
        full = model(x, t, pooled, context)
        skipped = model(x, t, pooled, context, skip_layers=(1,))
        out_of_range = model(x, t, pooled, context, skip_layers=(7, 8, 9))
    assert (full - skipped).abs().max() > 1e-2
    torch.testing.assert_close(out_of_range, full, rtol=0, atol=0)


def test_latent_larger_than_position_table_raises() -> None:
    model = _ours(TINY_MMDITX)  # table of 96x96 patches: latents up to 192x192
    x, t, pooled, context = _inputs(TINY_MMDITX, 1, 194, 8, 4)
    with pytest.raises(UserInputError, match=r"194x8 \(97x4 patches\).*96x96 patches"):
        model(x, t, pooled, context)


def test_bad_input_shapes_raise_user_input_error() -> None:
    model = _ours(TINY_MMDITX)
    x, t, pooled, context = _inputs(TINY_MMDITX, 1, 8, 8, 4)
    with pytest.raises(UserInputError, match="context must be"):
        model(x, t, pooled, context[..., :-1])


def test_bf16_forward_is_close_to_fp32() -> None:
    model = _ours(TINY_MMDITX)
    x, t, pooled, context = _inputs(TINY_MMDITX, 2, 16, 16, 30)
    with torch.no_grad():
        reference = model(x, t, pooled, context)
        out = model.to(torch.bfloat16)(x, t, pooled, context)
    assert out.dtype == torch.float32  # returned in the input's dtype
    relative = (out - reference).norm() / reference.norm()
    assert relative < 0.05


@pytest.mark.parametrize("config", [SD35_MEDIUM, SD3_MEDIUM], ids=["sd35-medium", "sd3-medium"])
def test_state_dict_layout_matches_official_keys(config: MMDiTXConfig) -> None:
    shapes = {k: tuple(v.shape) for k, v in MMDiTX(config, device="meta").state_dict().items()}
    last = config.depth - 1
    assert shapes["pos_embed"] == (1, config.pos_embed_max_size**2, 1536)
    assert shapes["x_embedder.proj.weight"] == (1536, 16, 2, 2)
    assert shapes[f"joint_blocks.{last}.context_block.adaLN_modulation.1.weight"] == (3072, 1536)
    assert shapes["final_layer.linear.weight"] == (64, 1536)
    assert not any(k.startswith(f"joint_blocks.{last}.context_block.mlp") for k in shapes)
    if config.x_block_self_attn_layers:  # SD3.5 Medium: spec §2 counts 665 tensors
        assert len(shapes) == 665
        assert shapes["joint_blocks.12.x_block.adaLN_modulation.1.weight"] == (13824, 1536)
        assert shapes["joint_blocks.12.x_block.attn2.ln_k.weight"] == (64,)
        assert "joint_blocks.13.x_block.attn2.qkv.weight" not in shapes
    else:
        assert not any(".ln_q." in k or ".attn2." in k for k in shapes)

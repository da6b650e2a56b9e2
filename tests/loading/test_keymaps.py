"""The official <-> diffusers key map against diffusers' own single-file converters (names, shapes, values)."""

from __future__ import annotations

import pytest
import torch
from loading_helpers import fixture_shapes
from safetensors.torch import load_file

from sd35.loading import keymaps
from sd35.loading.diffusers_format import official_to_diffusers_state

single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")


def _meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _our_diffusers_shapes(component: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    keymap = keymaps.to_diffusers(component, shapes)
    assert not keymap.unmatched
    out = {}
    for m in keymap.mappings:
        for name in m.diffusers:
            out[name] = keymaps.mapped_shape(m.op, [shapes[m.official]], to_official=False)
    return out


def _vae_config(levels: int) -> dict:
    return {"down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels}


@pytest.mark.parametrize("fixture", ["sd35_medium_keys.json", "sd3_medium_keys.json", "sd35_large_keys.json"])
def test_mmditx_names_and_shapes_match_diffusers_converter(fixture: str) -> None:
    shapes = fixture_shapes(fixture, "model.diffusion_model.")
    theirs = single_file_utils.convert_sd3_transformer_checkpoint_to_diffusers(_meta_state(shapes))
    assert _our_diffusers_shapes("mmditx", shapes) == {k: tuple(v.shape) for k, v in theirs.items()}


def test_vae_names_and_shapes_match_diffusers_converter() -> None:
    shapes = fixture_shapes("sd35_medium_keys.json", "first_stage_model.")
    state = {
        k: torch.zeros(s) if len(s) == 4 and s[2:] == (1, 1) else torch.empty(s, device="meta")
        for k, s in shapes.items()
    }
    theirs = single_file_utils.convert_ldm_vae_checkpoint(state, _vae_config(4))
    assert _our_diffusers_shapes("vae", shapes) == {k: tuple(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize(
    ("fixture", "prefix", "component"),
    [
        ("sd35_medium_keys.json", "model.diffusion_model.", "mmditx"),
        ("sd35_large_keys.json", "model.diffusion_model.", "mmditx"),
        ("sd35_medium_keys.json", "first_stage_model.", "vae"),
    ],
)
def test_both_directions_are_inverse(fixture: str, prefix: str, component: str) -> None:
    shapes = fixture_shapes(fixture, prefix)
    forward = _our_diffusers_shapes(component, shapes)
    back = keymaps.from_diffusers(component, forward)
    assert not back.unmatched
    rebuilt = {
        m.official: keymaps.mapped_shape(m.op, [forward[d] for d in m.diffusers], to_official=True)
        for m in back.mappings
    }
    assert rebuilt == shapes
    assert {m.official: m for m in back.mappings} == {
        m.official: m for m in keymaps.to_diffusers(component, shapes).mappings
    }


def test_tensor_values_match_diffusers_converter(tiny_model_paths) -> None:
    """q/k/v splits, the (shift, scale) swaps and the 1x1-conv reshapes, on the tiny weights."""
    checkpoint = load_file(str(tiny_model_paths["checkpoint"]))
    mmdit = {k.removeprefix("model.diffusion_model."): v for k, v in checkpoint.items() if k.startswith("model.")}
    ours = official_to_diffusers_state("mmditx", mmdit)
    theirs = single_file_utils.convert_sd3_transformer_checkpoint_to_diffusers(dict(mmdit))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    vae = {k.removeprefix("first_stage_model."): v for k, v in checkpoint.items() if k.startswith("first_stage_model.")}
    ours = official_to_diffusers_state("vae", vae)
    theirs = single_file_utils.convert_ldm_vae_checkpoint(dict(vae), _vae_config(4))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_unknown_keys_are_reported() -> None:
    keymap = keymaps.from_diffusers("mmditx", ["transformer_blocks.0.attn.to_q.weight", "something.else"])
    assert keymap.unmatched == ("something.else",)
    assert keymap.mappings[0].official == "joint_blocks.0.x_block.attn.qkv.weight"

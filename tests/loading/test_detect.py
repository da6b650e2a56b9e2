"""Detection from shapes on the real SD3.x key layouts (metadata fixtures) and on the tiny files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from loading_helpers import fixture_shapes, fixture_tensors, write_header_only

from sd35.loading.detect import detect_component, detect_components
from sd35.loading.errors import WrongComponentError
from sd35.loading.shapes import (
    ShapeError,
    clip_role_from_shapes,
    mmditx_config_from_shapes,
    vae_config_from_shapes,
)
from sd35.models.configs import SD3_MEDIUM, SD3_VAE, SD35_LARGE, SD35_MEDIUM, TINY_CLIP_G, TINY_CLIP_L

MMDIT, VAE = "model.diffusion_model.", "first_stage_model."


def test_fixture_counts_match_the_spec() -> None:
    tensors = fixture_tensors("sd35_medium_keys.json")
    assert sum(k.startswith(MMDIT) for k in tensors) == 665
    assert sum(k.startswith(VAE) for k in tensors) == 244
    assert len(tensors) == 665 + 244


@pytest.mark.parametrize(
    ("fixture", "preset"),
    [
        ("sd35_medium_keys.json", SD35_MEDIUM),
        ("sd3_medium_keys.json", SD3_MEDIUM),
        ("sd35_large_keys.json", SD35_LARGE),
    ],
)
def test_mmditx_config_of_released_models(fixture: str, preset) -> None:
    config = mmditx_config_from_shapes(fixture_shapes(fixture, MMDIT))
    assert config == preset
    assert vae_config_from_shapes(fixture_shapes(fixture, VAE)) == SD3_VAE


def test_sd35_medium_values_spelled_out() -> None:
    config = mmditx_config_from_shapes(fixture_shapes("sd35_medium_keys.json", MMDIT))
    assert (config.depth, config.hidden_size, config.num_heads) == (24, 1536, 24)
    assert config.x_block_self_attn_layers == tuple(range(13))
    assert (config.pos_embed_max_size, config.adm_in_channels, config.context_in_dim) == (384, 2048, 4096)
    assert config.qk_norm
    sd3 = mmditx_config_from_shapes(fixture_shapes("sd3_medium_keys.json", MMDIT))
    assert (sd3.x_block_self_attn_layers, sd3.qk_norm, sd3.pos_embed_max_size) == ((), False, 192)
    large = mmditx_config_from_shapes(fixture_shapes("sd35_large_keys.json", MMDIT))
    assert (large.depth, large.hidden_size, large.pos_embed_max_size) == (38, 2432, 192)


def test_detect_on_a_header_only_real_size_file(tmp_path: Path) -> None:
    """The whole path (header parse, prefixes, summary) on a 4.9 GB-sized, data-less sd3.5_medium file."""
    path = write_header_only(tmp_path / "sd3.5_medium.safetensors", fixture_tensors("sd35_medium_keys.json"))
    infos = {i.component: i for i in detect_components(path)}
    assert set(infos) == {"mmditx", "vae"}
    mmdit, vae = infos["mmditx"], infos["vae"]
    assert mmdit.config == SD35_MEDIUM and vae.config == SD3_VAE
    assert (mmdit.prefix, mmdit.layout, mmdit.stored_dtype) == (MMDIT, "official", "float16")
    assert mmdit.n_params == 2_469_663_936 and mmdit.n_bytes == 2 * mmdit.n_params  # 2.243 B + 226 M pos_embed
    assert vae.n_params == 83_819_683


def test_clip_role_by_width() -> None:
    tok = "text_model.embeddings.token_embedding.weight"
    assert clip_role_from_shapes({tok: (49408, 768)}) == "clip_l"
    assert clip_role_from_shapes({tok: (49408, 1280)}) == "clip_g"
    assert clip_role_from_shapes({tok: (49408, 128)}) is None


def test_clip_role_by_prefix_name_folder_and_request(tiny_model_paths, tmp_path: Path) -> None:
    by_name = detect_components(tiny_model_paths["clip_g"])[0]
    assert (by_name.component, by_name.detected_by, by_name.config) == ("clip_g", "file name", TINY_CLIP_G)
    folder = detect_components(tiny_model_paths["diffusers"] / "text_encoder_2")[0]
    assert (folder.component, folder.config) == ("clip_g", TINY_CLIP_G)
    anonymous = shutil.copy(tiny_model_paths["clip_g"], tmp_path / "encoder.safetensors")
    guess = detect_components(anonymous)[0]
    assert guess.component == "clip_l" and guess.detected_by.startswith("guess")
    asked = detect_component(anonymous, "clip_g")  # the caller's role decides activation and projection
    assert asked.config == TINY_CLIP_G and asked.detected_by == "requested role"
    assert detect_component(tiny_model_paths["clip_l"], "clip_l").config == TINY_CLIP_L


def test_tiny_official_and_diffusers_detect_the_same_configs(tiny_model_paths) -> None:
    official = {
        i.component: i
        for p in ("checkpoint", "clip_l", "clip_g", "t5xxl")
        for i in detect_components(tiny_model_paths[p])
    }
    diffusers = {i.component: i for i in detect_components(tiny_model_paths["diffusers"])}
    assert set(official) == set(diffusers) == {"mmditx", "vae", "clip_l", "clip_g", "t5xxl"}
    for component, info in official.items():
        other = diffusers[component]
        assert other.config == info.config, component
        assert (other.n_params, other.layout) == (info.n_params, "diffusers"), component
    assert diffusers["mmditx"].path.name == "transformer" and len(diffusers["mmditx"].sources) == 2


def test_a_models_folder_lists_every_file(tiny_models_dir: Path) -> None:
    components = [i.component for i in detect_components(tiny_models_dir)]
    assert sorted(components) == sorted(["mmditx", "vae", "clip_l", "clip_g", "t5xxl"] * 2)


def test_shape_rule_errors() -> None:
    shapes = fixture_shapes("sd35_medium_keys.json", MMDIT)
    del shapes["joint_blocks.5.x_block.attn.qkv.weight"], shapes["joint_blocks.5.x_block.attn.qkv.bias"]
    broken = {k: v for k, v in shapes.items() if not k.startswith("joint_blocks.5.")}
    with pytest.raises(ShapeError, match="not contiguous"):
        mmditx_config_from_shapes(broken)
    with pytest.raises(ShapeError, match="missing x_embedder.proj.weight"):
        mmditx_config_from_shapes({k: v for k, v in shapes.items() if not k.startswith("x_embedder")})
    with pytest.raises(ShapeError, match="not a square table"):
        mmditx_config_from_shapes({**shapes, "pos_embed": (1, 1000, 1536)})


def test_foreign_models_are_named(tmp_path: Path) -> None:
    unet = {"model.diffusion_model.input_blocks.0.0.weight": {"dtype": "F16", "shape": [320, 4, 3, 3]}}
    with pytest.raises(WrongComponentError, match="UNet diffusion model"):
        detect_components(write_header_only(tmp_path / "sdxl.safetensors", unet))
    sd1_vae = {
        **{k[len(VAE) :]: v for k, v in fixture_tensors("sd3_medium_keys.json").items() if k.startswith(VAE)},
        "quant_conv.weight": {"dtype": "F16", "shape": [8, 8, 1, 1]},
    }
    with pytest.raises(WrongComponentError, match="SD1.x/SDXL-style VAE"):
        detect_components(write_header_only(tmp_path / "vae.safetensors", sd1_vae))
    junk = {"foo.weight": {"dtype": "F16", "shape": [2]}}
    with pytest.raises(WrongComponentError, match="does not look like any SD3 model component"):
        detect_components(write_header_only(tmp_path / "junk.safetensors", junk))

"""Strict loading: the diffusers folder loads to the same model as the single files; stored dtypes; errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from loading_helpers import edited_copy
from safetensors.torch import load_file, save_file

from sd35.errors import UserInputError
from sd35.loading.errors import LoadError, WrongComponentError
from sd35.loading.load import load_component

COMPONENTS = ("mmditx", "vae", "clip_l", "clip_g", "t5xxl")
SINGLE = {"mmditx": "checkpoint", "vae": "checkpoint", "clip_l": "clip_l", "clip_g": "clip_g", "t5xxl": "t5xxl"}


def _mmdit_inputs(config, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, 12, 20, generator=g)
    t = torch.tensor([700.0, 30.0][:batch])
    pooled = torch.randn(batch, config.adm_in_channels, generator=g)
    context = torch.randn(batch, 40, config.context_in_dim, generator=g)
    return x, t, pooled, context


@pytest.mark.parametrize("component", COMPONENTS)
def test_diffusers_folder_loads_to_the_same_weights(tiny_model_paths, component: str) -> None:
    single = load_component(tiny_model_paths[SINGLE[component]], component)
    folder = load_component(tiny_model_paths["diffusers"], component)
    a, b = single.state_dict(), folder.state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    assert not any(p.requires_grad for p in folder.parameters()) and not folder.training


def test_mmap_off_gives_the_same_weights(tiny_model_paths) -> None:
    mapped = load_component(tiny_model_paths["clip_l"], "clip_l").state_dict()
    copied = load_component(tiny_model_paths["clip_l"], "clip_l", mmap=False).state_dict()
    assert all(torch.equal(mapped[k], copied[k]) for k in mapped)


def test_diffusers_folder_gives_the_same_outputs(tiny_model_paths) -> None:
    single = load_component(tiny_model_paths["checkpoint"], "mmditx")
    folder = load_component(tiny_model_paths["diffusers"] / "transformer", "mmditx")
    inputs = _mmdit_inputs(single.config)
    with torch.no_grad():
        diff = (single(*inputs) - folder(*inputs)).abs().max().item()
    assert diff == 0.0
    vae_a = load_component(tiny_model_paths["checkpoint"], "vae")
    vae_b = load_component(tiny_model_paths["diffusers"], "vae")
    z = torch.randn(1, 16, 6, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (vae_a.decode(z) - vae_b.decode(z)).abs().max().item() == 0.0


def test_diffusers_and_transformers_load_the_folder(tiny_model_paths) -> None:
    """The folder is a real diffusers folder: their from_pretrained loads it, and their models compute what
    ours compute from the single files (this checks every rename, split and swap in the key map)."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    root = tiny_model_paths["diffusers"]
    theirs = diffusers.SD3Transformer2DModel.from_pretrained(root / "transformer")
    ours = load_component(tiny_model_paths["checkpoint"], "mmditx")
    x, t, pooled, context = _mmdit_inputs(ours.config)
    with torch.no_grad():
        expected = theirs(hidden_states=x, timestep=t, pooled_projections=pooled, encoder_hidden_states=context).sample
        assert (ours(x, t, pooled, context) - expected).abs().max().item() < 1e-4
    vae = diffusers.AutoencoderKL.from_pretrained(root / "vae")
    z = torch.randn(1, 16, 6, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours_vae = load_component(tiny_model_paths["checkpoint"], "vae")
        assert (ours_vae.decode(z) - vae.decode(z).sample).abs().max().item() < 1e-4
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [0] * 70])
    clip = transformers.CLIPTextModelWithProjection.from_pretrained(root / "text_encoder_2")
    with torch.no_grad():
        out = load_component(tiny_model_paths["clip_g"], "clip_g")(ids)
        ref = clip(ids, output_hidden_states=True)
        assert (out.hidden - ref.hidden_states[-2]).abs().max().item() < 1e-5
        assert (out.pooled - ref.text_embeds).abs().max().item() < 1e-5
    t5 = transformers.T5EncoderModel.from_pretrained(root / "text_encoder_3")
    ids = torch.tensor([[3, 9, 1202, 13, 3, 9, 1712, 1] + [0] * 69])
    with torch.no_grad():
        ours_t5 = load_component(tiny_model_paths["t5xxl"], "t5xxl")(ids)
        assert (ours_t5 - t5(ids).last_hidden_state).abs().max().item() < 1e-4


def _cast_file(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    return edited_copy(src, dst, lambda s: s.update({k: v.to(dtype) for k, v in s.items()}))


def _scaled_fp8(src: Path, dst: Path, prefix: str) -> Path:
    """A ComfyUI-style *_fp8_scaled file: 2-D weights as e4m3fn / (absmax/448) with `.scale_weight`,
    a `.scale_input`, and the `scaled_fp8` marker (comfy/model_detection.py, comfy/ops.py)."""
    state = load_file(str(src))
    out = {f"{prefix}scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if key.startswith(prefix) and key.endswith(".weight") and value.ndim == 2 and "embed" not in key:
            scale = value.abs().max() / 448.0
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
            out[key[: -len("weight")] + "scale_input"] = torch.tensor(1.0)
        else:
            out[key] = value
    save_file(out, str(dst))
    return dst


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2, "scaled"])
def test_stored_dtypes_load_and_run(tiny_model_paths, tmp_path: Path, stored) -> None:
    src = tiny_model_paths["checkpoint"]
    if stored == "scaled":
        path = _scaled_fp8(src, tmp_path / "sd3.5_medium_fp8_scaled.safetensors", "model.diffusion_model.")
    else:
        path = _cast_file(src, tmp_path / "cast.safetensors", stored)
    reference = load_component(src, "mmditx")
    inputs = _mmdit_inputs(reference.config)
    with torch.no_grad():
        expected = reference(*inputs)
        for dtype in (torch.float32, torch.bfloat16) if stored == torch.float16 else (torch.float32,):
            model = load_component(path, "mmditx", dtype=dtype)
            assert all(p.dtype == dtype for p in model.parameters())
            got = model(*inputs).float()
            rel = ((got - expected).norm() / expected.norm()).item()
            bound = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(stored, 0.25)
            assert rel < bound + (2e-2 if dtype == torch.bfloat16 else 0), (stored, dtype, rel)


def test_scaled_fp8_weights_are_dequantized_exactly(tiny_model_paths, tmp_path: Path) -> None:
    path = _scaled_fp8(tiny_model_paths["checkpoint"], tmp_path / "scaled.safetensors", "model.diffusion_model.")
    raw = load_file(str(path))
    model = load_component(path, "mmditx")
    key = "joint_blocks.1.x_block.mlp.fc1"
    expected = raw[f"model.diffusion_model.{key}.weight"].float() * raw[f"model.diffusion_model.{key}.scale_weight"]
    assert torch.equal(model.state_dict()[f"{key}.weight"], expected)
    exact = load_component(tiny_model_paths["checkpoint"], "mmditx").state_dict()[f"{key}.weight"]
    scale = raw[f"model.diffusion_model.{key}.scale_weight"]
    # e4m3 keeps 3 mantissa bits: relative rounding error <= 2^-4 in the normal range, spacing 2^-9 below it
    assert ((expected - exact).abs() <= exact.abs() * 2**-4 + scale * 2**-9).all()


def test_scaled_fp8_text_encoder_with_top_level_marker(tiny_model_paths, tmp_path: Path) -> None:
    """t5xxl_fp8_e4m3fn_scaled.safetensors carries its `scaled_fp8` marker at the top level."""
    path = _scaled_fp8(tiny_model_paths["t5xxl"], tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors", "")
    from sd35.loading.detect import detect_components

    info = detect_components(path)[0]
    assert (info.component, info.stored_dtype, info.quantization) == ("t5xxl", "float8_e4m3fn", "scaled_fp8")
    ids = torch.tensor([[3, 9, 1202, 1] + [0] * 10])
    with torch.no_grad():
        expected = load_component(tiny_model_paths["t5xxl"], "t5xxl")(ids)
        got = load_component(path, "t5xxl")(ids)
    assert ((got - expected).norm() / expected.norm()).item() < 0.25  # fp8 rounding, amplified by 2 layers


def test_missing_extra_and_misshaped_keys(tiny_model_paths, tmp_path: Path) -> None:
    src, p = tiny_model_paths["checkpoint"], "model.diffusion_model."
    missing = edited_copy(
        src, tmp_path / "missing.safetensors", lambda s: s.pop(f"{p}joint_blocks.1.x_block.mlp.fc2.bias")
    )
    with pytest.raises(LoadError) as info:
        load_component(missing, "mmditx")
    assert info.value.missing == ["joint_blocks.1.x_block.mlp.fc2.bias"] and not info.value.unexpected
    assert "cannot load mmditx" in str(info.value) and "missing 1 key(s): joint_blocks.1.x_block.mlp.fc2.bias" in str(
        info.value
    )
    extra = edited_copy(
        src,
        tmp_path / "extra.safetensors",
        lambda s: s.update({f"{p}joint_blocks.0.x_block.lora.weight": torch.zeros(2)}),
    )
    with pytest.raises(LoadError, match=r"unexpected 1 key\(s\): joint_blocks.0.x_block.lora.weight"):
        load_component(extra, "mmditx")
    load_component(extra, "vae")  # the VAE in the same file is fine
    bad = edited_copy(
        src,
        tmp_path / "shape.safetensors",
        lambda s: s.update({f"{p}joint_blocks.2.x_block.mlp.fc1.weight": torch.zeros(700, 192)}),
    )
    with pytest.raises(LoadError) as info:
        load_component(bad, "mmditx")
    assert info.value.mismatched == [("joint_blocks.2.x_block.mlp.fc1.weight", (700, 192), (768, 192))]
    assert "mis-shaped 1 tensor(s): joint_blocks.2.x_block.mlp.fc1.weight (file [700, 192], model [768, 192])" in str(
        info.value
    )


def test_diffusers_errors_name_diffusers_keys(tiny_model_paths, tmp_path: Path) -> None:
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_paths["diffusers"] / "vae" / "config.json").read_text())
    edited_copy(
        tiny_model_paths["diffusers"] / "vae" / "diffusion_pytorch_model.safetensors",
        folder / "diffusion_pytorch_model.safetensors",
        lambda s: s.pop("decoder.mid_block.attentions.0.to_k.weight"),
    )
    with pytest.raises(LoadError, match=r"missing 1 key\(s\): decoder.mid_block.attentions.0.to_k.weight"):
        load_component(folder, "vae")


def test_long_key_lists_are_truncated() -> None:
    error = LoadError("mmditx", "x.safetensors", missing=[f"k{i:03d}" for i in range(40)])
    assert "missing 40 key(s): k000, k001" in str(error) and "(+28 more)" in str(error) and "k039" not in str(error)


def test_wrong_component(tiny_model_paths) -> None:
    with pytest.raises(WrongComponentError, match=r"holds no mmditx \(it holds: clip_l\)"):
        load_component(tiny_model_paths["clip_l"], "mmditx")
    with pytest.raises(WrongComponentError, match="text encoders are separate files"):
        load_component(tiny_model_paths["checkpoint"], "t5xxl")
    with pytest.raises(UserInputError, match="unknown component 'unet'"):
        load_component(tiny_model_paths["checkpoint"], "unet")


def test_certain_clip_role_is_not_overridden(tiny_model_paths, tmp_path: Path) -> None:
    prefixed = edited_copy(
        tiny_model_paths["clip_l"],
        tmp_path / "bundle.safetensors",
        lambda s: s.update({f"text_encoders.clip_l.transformer.{k}": s.pop(k) for k in list(s)}),
    )
    assert load_component(prefixed, "clip_l").config.hidden_act == "quick_gelu"
    with pytest.raises(WrongComponentError, match="holds no clip_g"):
        load_component(prefixed, "clip_g")

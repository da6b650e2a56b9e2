"""Loader nodes on tiny files in ComfyUI's folder layout: key-based routing, CLIP None without text
encoders, all-in-one fp8 checkpoints, the shared model store, and errors that name the folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from nodes_support import LARGE_CKPT

from sd35.errors import UserInputError
from sd35.loading.load import load_component
from sd35.nodes import ModelFolders, Services
from sd35.nodes.conditioning import clip_text_encode
from sd35.nodes.loaders import (
    checkpoint_loader,
    clip_loader,
    dual_clip_loader,
    triple_clip_loader,
    unet_loader,
    vae_loader,
)

TEXT = "a glass bottle with a galaxy inside"


def _encode(clip) -> torch.Tensor:  # noqa: ANN001
    (cond,) = clip_text_encode(clip, TEXT)
    return cond[0].conditioning


def test_triple_clip_loader_routes_files_by_their_keys_in_any_order(services: Services) -> None:
    (a,) = triple_clip_loader(services, "clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors")
    (b,) = triple_clip_loader(services, "t5xxl_fp16.safetensors", "clip_g.safetensors", "clip_l.safetensors")
    enc = a.stack.encoders
    assert enc.clip_l.config.hidden_size < enc.clip_g.config.hidden_size and enc.t5 is not None
    assert enc.clip_l is b.stack.encoders.clip_l and enc.t5 is b.stack.encoders.t5  # one load, shared
    ca, cb = _encode(a), _encode(b)
    assert torch.equal(ca.context, cb.context) and torch.equal(ca.pooled, cb.pooled)


def test_checkpoint_without_text_encoders_gives_clip_none(services: Services, caplog) -> None:  # noqa: ANN001
    with caplog.at_level(logging.WARNING):
        model, clip, vae = checkpoint_loader(services, "sd3.5_medium.safetensors")
    assert clip is None and vae is not None and model.network is not None
    assert "no CLIP/text encoder weights in checkpoint" in caplog.text
    with pytest.raises(UserInputError, match="clip input is invalid: None"):
        clip_text_encode(clip, TEXT)


def test_all_in_one_fp8_checkpoint_gives_model_clip_and_vae(services: Services, tiny_model_paths) -> None:  # noqa: ANN001
    model, clip, vae = checkpoint_loader(services, LARGE_CKPT)
    assert clip is not None and vae is not None
    assert model.network.joint_blocks[0].x_block.attn.qkv.weight.dtype == torch.float32  # dequantized
    reference = load_component(tiny_model_paths["checkpoint"], "mmditx")
    for (name, got), (_, want) in zip(model.network.state_dict().items(), reference.state_dict().items()):
        assert torch.allclose(got, want, rtol=0.07, atol=1e-6), name  # fp8 e4m3 keeps ~3 mantissa bits
    (separate,) = triple_clip_loader(services, "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors")
    ours, theirs = _encode(clip), _encode(separate)
    assert ours.context.shape == theirs.context.shape
    # CLIP weights are stored exactly; only T5 went through fp8, so only the T5 rows differ
    assert torch.equal(ours.pooled, theirs.pooled) and torch.equal(ours.context[:, :77], theirs.context[:, :77])


def test_dual_and_single_clip_loaders(services: Services) -> None:
    (dual,) = dual_clip_loader(services, "clip_l.safetensors", "clip_g.safetensors", "sd3")
    cond = _encode(dual)
    assert cond.context.shape[1] == 77 and dual.stack.encoders.t5 is None  # no T5: no T5 rows, as ComfyUI
    (single,) = clip_loader(services, "t5xxl_fp16.safetensors", "sd3", "cpu")
    cond = _encode(single)
    assert cond.context.shape[1] == 77 and not cond.pooled.any()  # T5 rows only, zero pooled
    assert single.policy.device == torch.device("cpu")
    with pytest.raises(UserInputError, match="type 'flux' is not supported"):
        dual_clip_loader(services, "clip_l.safetensors", "t5xxl_fp16.safetensors", "flux")
    with pytest.raises(UserInputError, match="not found in text_encoders/"):  # no escaping the folder
        clip_loader(services, "../checkpoints/sd3.5_medium.safetensors", "sd3")


def test_a_file_without_text_encoders_is_refused(tmp_path: Path, tiny_model_paths) -> None:  # noqa: ANN001
    (tmp_path / "text_encoders").mkdir()
    (tmp_path / "text_encoders" / "model.safetensors").symlink_to(tiny_model_paths["checkpoint"])
    services = Services(ModelFolders((tmp_path,)), tmp_path / "out")
    with pytest.raises(UserInputError, match="model.safetensors holds no CLIP-L, CLIP-G or T5 text encoder"):
        clip_loader(services, "model.safetensors", "sd3")


def test_vae_and_unet_loaders(services: Services) -> None:
    (vae,) = vae_loader(services, "sd3.5_vae.safetensors")
    (model,) = unet_loader(services, "sd3.5_medium.safetensors", "fp8_e5m2")  # not supported: warned, ignored
    ckpt_model, _, ckpt_vae = checkpoint_loader(services, "sd3.5_medium.safetensors")
    assert vae.autoencoder is ckpt_vae.autoencoder and model.network is ckpt_model.network  # the store shares
    with pytest.raises(UserInputError, match="pixel_space"):
        vae_loader(services, "pixel_space")


def test_missing_file_error_names_the_folder(tmp_path: Path, comfy_models: Path) -> None:
    services = Services(ModelFolders((comfy_models,)), tmp_path)
    with pytest.raises(UserInputError) as err:
        checkpoint_loader(services, "nope.safetensors")
    assert "'nope.safetensors' not found in checkpoints/" in str(err.value)
    assert str(comfy_models / "checkpoints") in str(err.value)


def test_model_store_loads_each_file_once(tmp_path: Path, comfy_models: Path) -> None:
    services = Services(ModelFolders((comfy_models,)), tmp_path)
    first = checkpoint_loader(services, "sd3.5_medium.safetensors")
    loads = services.store.loads
    second = checkpoint_loader(services, "sd3.5_medium.safetensors")
    assert services.store.loads == loads == 2  # MMDiT + VAE, once
    assert first[0].network is second[0].network
    services.store.clear()
    third = checkpoint_loader(services, "sd3.5_medium.safetensors")
    assert third[0].network is not first[0].network and services.store.loads == 4


def test_triple_clip_loader_keeps_an_fp8_t5_file_in_fp8(tiny_model_paths: dict, tmp_path: Path) -> None:
    """TripleCLIPLoader loads T5 as `sd35 generate` does: a t5xxl_fp8_e4m3fn file's block weights stay the
    file's fp8 values (pipeline.files.load_t5), and the prompt encodes as with the fp32 file it came from."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "models" / "text_encoders"
    folder.mkdir(parents=True)
    for role in ("clip_l", "clip_g"):
        (folder / f"{role}.safetensors").symlink_to(tiny_model_paths[role])
    fp32 = load_file(tiny_model_paths["t5xxl"])
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in fp32.items()}
    save_file(fp8, folder / "t5xxl_fp8_e4m3fn.safetensors")
    save_file({k: v.float() for k, v in fp8.items()}, folder / "t5xxl_dequantized.safetensors")
    services = Services(ModelFolders((tmp_path / "models",)), tmp_path / "out", input_dir=tmp_path / "in")
    (clip8,) = triple_clip_loader(services, "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp8_e4m3fn.safetensors")
    (clip32,) = triple_clip_loader(
        services, "clip_l.safetensors", "clip_g.safetensors", "t5xxl_dequantized.safetensors"
    )
    t5 = clip8.stack.encoders.t5
    assert not any(type(m) is torch.nn.Linear for m in t5.encoder.block.modules())
    fp8_layers = [m for m in t5.encoder.block.modules() if hasattr(m, "weight_scale")]
    assert fp8_layers and all(m.weight.dtype == torch.float8_e4m3fn for m in fp8_layers)
    a, b = _encode(clip8), _encode(clip32)
    assert torch.equal(a.context, b.context) and torch.equal(a.pooled, b.pooled)


def test_unet_loader_weight_dtype_fp8_holds_the_block_linears_in_fp8(services: Services) -> None:
    """UNETLoader weight_dtype: fp8_e4m3fn = fp8 storage upcast per call, fp8_e4m3fn_fast = also fp8 GEMMs
    where a GPU has them; the model still predicts what the full-precision one does, within fp8 rounding."""
    (plain,) = unet_loader(services, "sd3.5_medium.safetensors", "default")
    (fp8,) = unet_loader(services, "sd3.5_medium.safetensors", "fp8_e4m3fn")
    (fast,) = unet_loader(services, "sd3.5_medium.safetensors", "fp8_e4m3fn_fast")
    for model, compute in ((fp8, False), (fast, True)):
        layers = [m for m in model.network.joint_blocks.modules() if hasattr(m, "weight_scale")]
        assert layers and not any(type(m) is torch.nn.Linear for m in model.network.joint_blocks.modules())
        assert all(m.weight.dtype == torch.float8_e4m3fn and m.fp8_compute is compute for m in layers)
    assert any(type(m) is torch.nn.Linear for m in plain.network.joint_blocks.modules())
    config = plain.network.config
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 16, 8, 8, generator=g), torch.tensor([600.0])
    y, ctx = torch.randn(1, config.adm_in_channels, generator=g), torch.randn(1, 9, config.context_in_dim, generator=g)
    with torch.no_grad():
        ref, got = plain.network(x, t, y, ctx), fp8.network(x, t, y, ctx)
    rel = ((got - ref).norm() / ref.norm()).item()
    print(f"UNETLoader fp8_e4m3fn vs default: relative L2 {rel:.4f}")
    assert 0 < rel < 0.1

"""Latent and image nodes: sizes, resize methods, VAE decode/encode (tiled and not), LoadImage, SaveImage and
PreviewImage files, names and PNG chunks as ComfyUI writes them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sd35.errors import UserInputError
from sd35.nodes import Services
from sd35.nodes.image import image_scale, load_image, preview_images, save_images
from sd35.nodes.latent import (
    empty_latent,
    empty_sd3_latent,
    latent_upscale,
    latent_upscale_by,
    vae_decode,
    vae_decode_tiled,
    vae_encode,
)
from sd35.nodes.loaders import vae_loader
from sd35.nodes.resize import bislerp, common_upscale
from sd35.nodes.values import Latent
from sd35.pipeline.generate import decode_latents, encode_images


def test_empty_latents() -> None:
    (sd3,) = empty_sd3_latent(1280, 768, 2)
    (sd1,) = empty_latent(512, 264, 1)
    assert sd3.samples.shape == (2, 16, 96, 160) and not sd3.samples.any()
    assert sd1.samples.shape == (1, 4, 33, 64)


def test_latent_upscale_sizes_follow_comfyui() -> None:
    x = Latent(torch.randn(1, 16, 12, 20))
    assert latent_upscale(x, "bilinear", 0, 0, "disabled")[0] is x
    assert latent_upscale(x, "bilinear", 320, 0, "disabled")[0].samples.shape[-2:] == (24, 40)
    assert latent_upscale(x, "bilinear", 0, 32, "disabled")[0].samples.shape[-2:] == (8, 13)  # min 64 px
    out = latent_upscale(x, "bilinear", 256, 128, "disabled")[0].samples
    assert torch.equal(out, F.interpolate(x.samples, size=(16, 32), mode="bilinear"))
    assert latent_upscale_by(x, "nearest-exact", 1.5)[0].samples.shape[-2:] == (18, 30)


def test_center_crop_then_resize() -> None:
    x = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(1, 2, 6, 8)
    out = common_upscale(x, 6, 6, "nearest-exact", "center")  # 8 wide → crop 1 column each side
    assert torch.equal(out, x[..., 1:7])


def _bislerp_reference(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Per-pixel loops: slerp the channel vectors of the two bilinear neighbours, norms linear."""

    def axis(t: torch.Tensor, size: int) -> torch.Tensor:  # resample the last axis
        old = t.shape[-1]
        out = torch.empty(*t.shape[:-1], size)
        for j in range(size):
            pos = max((j + 0.5) * old / size - 0.5, 0.0)
            left = min(int(math.floor(pos)), old - 1)
            right = min(left + 1, old - 1)
            r = pos - math.floor(pos)
            for idx in np.ndindex(t.shape[0], t.shape[2]):
                a, b = t[idx[0], :, idx[1], left], t[idx[0], :, idx[1], right]
                na, nb = a.norm(), b.norm()
                ua, ub = a / na, b / nb
                dot = float((ua * ub).sum())
                if dot > 1 - 1e-5:
                    v = a
                else:
                    omega = math.acos(dot)
                    v = (math.sin((1 - r) * omega) * ua + math.sin(r * omega) * ub) / math.sin(omega)
                    v = v * (na * (1 - r) + nb * r)
                out[idx[0], :, idx[1], j] = v
        return out

    return axis(axis(x, width).transpose(-1, -2), height).transpose(-1, -2)


def test_bislerp_matches_a_per_pixel_reference() -> None:
    x = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    out = bislerp(x, 8, 7)
    assert out.shape == (1, 4, 7, 8)
    assert torch.allclose(out, _bislerp_reference(x, 8, 7), atol=1e-5)
    assert torch.allclose(bislerp(x, 5, 3), x, atol=1e-6)  # same size: identity


def test_image_scale() -> None:
    image = torch.rand(1, 10, 20, 3, generator=torch.Generator().manual_seed(1))
    assert image_scale(image, "bilinear", 0, 0, "disabled")[0] is image
    assert image_scale(image, "bilinear", 0, 5, "disabled")[0].shape == (1, 5, 10, 3)
    (lanczos,) = image_scale(image, "lanczos", 7, 4, "disabled")
    pil = Image.fromarray((image[0].numpy() * 255).clip(0, 255).astype(np.uint8)).resize((7, 4), Image.LANCZOS)
    assert torch.equal(lanczos[0], torch.from_numpy(np.array(pil).astype(np.float32) / 255.0))


def test_vae_decode_encode_and_tiled_decode(services: Services) -> None:
    (vae,) = vae_loader(services, "sd3.5_vae.safetensors")
    z = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(2))
    (image,) = vae_decode(services, Latent(z), vae)
    assert torch.equal(image, decode_latents(vae, z, services.policy)) and image.shape == (1, 64, 96, 3)
    (one_tile,) = vae_decode_tiled(services, Latent(z), vae, tile_size=512, overlap=64)  # one tile: the plain decode
    assert torch.allclose(one_tile, image, atol=1e-5)
    (tiled,) = vae_decode_tiled(services, Latent(z), vae, tile_size=64, overlap=32)  # 8×8 latent tiles, 4 px overlap
    assert tiled.shape == image.shape and 0.0 < float((tiled - image).abs().mean()) < 0.1
    pixels = torch.rand(1, 36, 30, 4)  # cropped to 32×24 (centred), alpha ignored
    (latent,) = vae_encode(services, pixels, vae)
    assert latent.samples.shape == (1, 16, 4, 3)
    assert torch.equal(latent.samples, encode_images(vae, pixels[..., :3], services.policy))
    with pytest.raises(UserInputError, match="SD3 VAE needs"):
        vae_decode(services, empty_latent(64, 64, 1)[0], vae)
    with pytest.raises(UserInputError, match="vae input is invalid: None"):
        vae_decode(services, Latent(z), None)


def _save_rgba(path: Path, alpha: int) -> np.ndarray:
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = alpha
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


def test_load_image_mask_frames_and_names(services: Services) -> None:
    assert services.input_dir is not None
    _save_rgba(services.input_dir / "a.png", 51)
    Image.new("RGB", (4, 3), (0, 255, 0)).save(services.input_dir / "b.jpg")
    frames = [Image.new("RGB", (4, 4), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(services.input_dir / "c.gif", save_all=True, append_images=frames[1:])
    image, mask = load_image(services, "a.png")
    assert image.shape == (1, 6, 5, 3) and abs(float(image[0, 0, 0, 0]) - 200 / 255) < 1e-6
    assert torch.allclose(mask, torch.full((1, 6, 5), 1 - 51 / 255))
    image, mask = load_image(services, "b.jpg")
    assert image.shape == (1, 3, 4, 3) and mask.shape == (1, 64, 64) and not mask.any()
    image, _ = load_image(services, "c.gif")
    assert image.shape[0] == 3
    spec_choices = services.input_images()
    assert spec_choices == ["a.png", "b.jpg", "c.gif"]
    (services.output_dir).mkdir(parents=True, exist_ok=True)
    _save_rgba(services.output_dir / "o.png", 255)
    assert load_image(services, "o.png [output]")[0].shape == (1, 6, 5, 3)
    with pytest.raises(UserInputError, match="leaves the input folder"):
        load_image(services, "../output/o.png")


def test_save_image_names_chunks_and_truncation(services: Services) -> None:
    images = torch.full((2, 4, 6, 3), 0.999)  # 254.745 → 254 (truncated, not rounded)
    prompt = {"1": {"class_type": "SaveImage", "inputs": {}}}
    workflow = {"nodes": [], "links": [], "version": 0.4}
    out = save_images(services, images, "run/x_%width%x%height%", prompt, {"workflow": workflow})
    assert out["ui"]["images"] == [
        {"filename": "x_6x4_00001_.png", "subfolder": "run", "type": "output"},
        {"filename": "x_6x4_00002_.png", "subfolder": "run", "type": "output"},
    ]
    again = save_images(services, images[:1], "run/x_%width%x%height%")
    assert again["ui"]["images"][0]["filename"] == "x_6x4_00003_.png"
    path = services.output_dir / "run" / "x_6x4_00001_.png"
    with Image.open(path) as png:
        assert json.loads(png.text["prompt"]) == prompt and json.loads(png.text["workflow"]) == workflow
        assert np.array(png).max() == 254 and png.size == (6, 4)
    with pytest.raises(UserInputError, match="outside the output folder"):
        save_images(services, images, "../escape")


def test_preview_image_goes_to_temp(services: Services) -> None:
    out = preview_images(services, torch.zeros(1, 4, 4, 3), prompt={"a": 1}, extra_pnginfo=None)
    (item,) = out["ui"]["images"]
    assert item["type"] == "temp" and item["subfolder"] == ""
    assert item["filename"].startswith("ComfyUI_temp_") and item["filename"].endswith("_00001_.png")
    assert services.temp_dir is not None and (services.temp_dir / item["filename"]).is_file()

"""SD3 VAE: official key layout, parity with diffusers' AutoencoderKL on the same weights, latent format."""

from __future__ import annotations

import pytest
import torch

from sd35.models.autoencoder import AutoencoderKL
from sd35.models.configs import SD3_VAE, TINY_VAE, AutoencoderConfig
from sd35.models.latent_format import SD3_LATENT_FORMAT, LatentFormat
from sd35.nn.init import randomize_

PARITY_TOL = 1e-4
PREFIX = "first_stage_model."


def _diffusers_config(config: AutoencoderConfig) -> dict:
    """diffusers AutoencoderKL kwargs matching `config` (what its SD3 single-file loader builds)."""
    levels = len(config.ch_mult)
    return {
        "in_channels": config.in_channels,
        "out_channels": config.in_channels,
        "latent_channels": config.z_channels,
        "block_out_channels": [config.ch * m for m in config.ch_mult],
        "layers_per_block": config.num_res_blocks,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "norm_num_groups": 32,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "scaling_factor": 1.5305,
        "shift_factor": 0.0609,
    }


@pytest.fixture(scope="module")
def models() -> tuple[AutoencoderKL, torch.nn.Module]:
    """Our tiny random VAE, and diffusers' VAE loaded (strict) from the same official-layout dict."""
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ours = randomize_(AutoencoderKL(TINY_VAE), seed=1234).eval()
    checkpoint = {PREFIX + k: v.clone() for k, v in ours.state_dict().items()}
    config = _diffusers_config(TINY_VAE)
    theirs = DiffusersAutoencoderKL(**config).eval()
    theirs.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, config), strict=True)
    return ours, theirs


def test_full_size_key_layout_matches_spec() -> None:
    """The real config has the 244 official tensors (spec §2) with the documented shapes."""
    sd = AutoencoderKL(SD3_VAE, device="meta").state_dict()
    assert len(sd) == 244
    assert sum(t.numel() for t in sd.values()) == 83_819_683
    assert sd["encoder.conv_in.weight"].shape == (128, 3, 3, 3)
    assert sd["encoder.conv_out.weight"].shape == (32, 512, 3, 3)
    assert sd["decoder.conv_in.weight"].shape == (512, 16, 3, 3)
    assert sd["decoder.conv_out.weight"].shape == (3, 128, 3, 3)
    assert sd["decoder.up.1.block.0.nin_shortcut.weight"].shape == (256, 512, 1, 1)
    assert sd["decoder.mid.attn_1.proj_out.weight"].shape == (512, 512, 1, 1)
    assert "decoder.up.0.upsample.conv.weight" not in sd and "encoder.down.3.downsample.conv.weight" not in sd
    assert not any("quant_conv" in k for k in sd)


def test_decode_matches_diffusers(models) -> None:
    ours, theirs = models
    z = torch.randn(2, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = ours.decode(z)
        want = theirs.decode(z).sample
    diff = (got - want).abs().max().item()
    print(
        f"\ndecode [2,16,8,12] -> {tuple(got.shape)}: max abs diff vs diffusers {diff:.2e} "
        f"(output std {want.std():.3f})"
    )
    assert got.shape == (2, 3, 64, 96)
    assert diff <= PARITY_TOL


def test_encode_matches_diffusers(models) -> None:
    ours, theirs = models
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mean, logvar = ours.encode_moments(images)
        mode = ours.encode(images)
        dist = theirs.encode(images).latent_dist
    d_mean = (mean - dist.mean).abs().max().item()
    d_logvar = (logvar - dist.logvar).abs().max().item()
    print(f"\nencode [2,3,64,96]: max abs diff mean {d_mean:.2e}, logvar {d_logvar:.2e}")
    assert mean.shape == logvar.shape == (2, 16, 8, 12)
    assert torch.equal(mode, mean)
    assert d_mean <= PARITY_TOL and d_logvar <= PARITY_TOL


def test_logvar_is_clamped_like_the_reference(models) -> None:
    ours, _ = models
    with torch.no_grad():
        ours.encoder.conv_out.bias[TINY_VAE.z_channels :] += 100.0  # push logvar far above 20
        try:
            _, logvar = ours.encode_moments(torch.zeros(1, 3, 16, 16))
        finally:
            ours.encoder.conv_out.bias[TINY_VAE.z_channels :] -= 100.0
    assert torch.all(logvar == 20.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_in_module_dtype(models, dtype: torch.dtype) -> None:
    ours, _ = models
    half = AutoencoderKL(TINY_VAE, dtype=dtype)
    half.load_state_dict(ours.state_dict())
    z = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = half.decode(z)
        want = ours.decode(z)
        latent = half.encode(got)
    diff = (got.float() - want).abs().max().item()
    print(f"\n{dtype} decode max abs diff vs fp32 {diff:.2e}")
    assert got.dtype == latent.dtype == dtype
    assert diff < 0.1 * want.abs().max().item()


def test_width_not_divisible_by_groups_is_rejected() -> None:
    with pytest.raises(ValueError, match="GroupNorm"):
        AutoencoderKL(AutoencoderConfig(ch=48))


def test_latent_format_matches_reference_and_round_trips() -> None:
    fmt = SD3_LATENT_FORMAT
    assert fmt == LatentFormat(scale_factor=1.5305, shift_factor=0.0609)
    z = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(3))
    x = fmt.to_model(z)
    torch.testing.assert_close(x, (z - 0.0609) * 1.5305, rtol=0, atol=0)
    torch.testing.assert_close(fmt.to_vae(x), z, rtol=0, atol=1e-6)
    torch.testing.assert_close(fmt.to_model(fmt.to_vae(z)), z, rtol=0, atol=1e-6)
    with pytest.raises(AttributeError):
        fmt.scale_factor = 1.0  # type: ignore[misc]

"""The SD3 16-channel KL autoencoder (sd3.5 `sd3_impls.py SDVAE`), without quant convs.

Attribute names equal the official checkpoint keys minus `first_stage_model.`, so loading is a prefix strip
followed by a strict `load_state_dict`. Images are [B,3,H,W] in [-1,1]; latents are [B,16,H/8,W/8] in VAE
space (not scaled: see `latent_format.py` for the sampler's space).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import AutoencoderConfig

# Reference constants (sd3.5 `sd3_impls.py Normalize` and `SDVAE.encode`).
GROUPS = 32
NORM_EPS = 1e-6
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

_Factory = dict  # keyword arguments forwarded to every layer: device, dtype


def _norm(channels: int, factory: _Factory) -> nn.GroupNorm:
    """GroupNorm(32, C, eps 1e-6, affine): sd3.5 `Normalize`."""
    return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS, affine=True, **factory)


def _conv(c_in: int, c_out: int, kernel: int, factory: _Factory, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, **factory)


class ResnetBlock(nn.Module):
    """norm1-SiLU-conv1-norm2-SiLU-conv2 plus a 1x1 `nin_shortcut` when widths differ (sd3.5 `ResnetBlock`).

    [B,c_in,H,W] -> [B,c_out,H,W].
    """

    def __init__(self, c_in: int, c_out: int, factory: _Factory) -> None:
        super().__init__()
        self.norm1 = _norm(c_in, factory)
        self.conv1 = _conv(c_in, c_out, 3, factory, padding=1)
        self.norm2 = _norm(c_out, factory)
        self.conv2 = _conv(c_out, c_out, 3, factory, padding=1)
        # The key only exists when the widths differ (spec §2), so the attribute is absent otherwise.
        self.nin_shortcut = _conv(c_in, c_out, 1, factory) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h·w positions with 1x1-conv q/k/v/proj_out (sd3.5 `AttnBlock`).

    [B,C,H,W] -> [B,C,H,W]; SDPA's default scale 1/sqrt(C).
    """

    def __init__(self, channels: int, factory: _Factory) -> None:
        super().__init__()
        self.norm = _norm(channels, factory)
        self.q = _conv(channels, channels, 1, factory)
        self.k = _conv(channels, channels, 1, factory)
        self.v = _conv(channels, channels, 1, factory)
        self.proj_out = _conv(channels, channels, 1, factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hidden = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:  # b c h w -> b 1 (h w) c
            return t.reshape(b, 1, c, h * w).transpose(-1, -2)

        q, k, v = (tokens(proj(hidden)) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by 1, then conv3x3 stride 2 without padding (sd3.5 `Downsample`): H -> H//2."""

    def __init__(self, channels: int, factory: _Factory) -> None:
        super().__init__()
        self.conv = _conv(channels, channels, 3, factory, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest x2, then conv3x3 padding 1 (sd3.5 `Upsample`): H -> 2H."""

    def __init__(self, channels: int, factory: _Factory) -> None:
        super().__init__()
        self.conv = _conv(channels, channels, 3, factory, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """block_1 -> attn_1 -> block_2 at the lowest resolution (the only attention in the VAE)."""

    def __init__(self, channels: int, factory: _Factory) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, factory)
        self.attn_1 = AttnBlock(channels, factory)
        self.block_2 = ResnetBlock(channels, channels, factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: `block` (a ModuleList of ResnetBlocks) and an optional down/upsample."""

    def __init__(self, widths: list[tuple[int, int]], factory: _Factory) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in, c_out, factory) for c_in, c_out in widths)


class Encoder(nn.Module):
    """[B,3,H,W] -> [B,2·z,H/8,W/8] (mean ‖ logvar) (sd3.5 `VAEEncoder`)."""

    def __init__(self, config: AutoencoderConfig, factory: _Factory) -> None:
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        self.conv_in = _conv(config.in_channels, ch, 3, factory, padding=1)
        self.down = nn.ModuleList()
        c_in = ch
        for level, m in enumerate(mult):
            c_out = ch * m
            down = _Level([(c_in if j == 0 else c_out, c_out) for j in range(config.num_res_blocks)], factory)
            if level != len(mult) - 1:
                down.downsample = Downsample(c_out, factory)
            self.down.append(down)
            c_in = c_out
        self.mid = MidBlock(c_in, factory)
        self.norm_out = _norm(c_in, factory)
        self.conv_out = _conv(c_in, 2 * config.z_channels, 3, factory, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for down in self.down:
            for block in down.block:
                h = block(h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class Decoder(nn.Module):
    """[B,z,h,w] -> [B,3,8h,8w] (sd3.5 `VAEDecoder`); `up` is indexed by level, run from the last one."""

    def __init__(self, config: AutoencoderConfig, factory: _Factory, out_channels: int = 3) -> None:
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        c_in = ch * mult[-1]
        self.conv_in = _conv(config.z_channels, c_in, 3, factory, padding=1)
        self.mid = MidBlock(c_in, factory)
        levels: list[_Level] = []
        for level in reversed(range(len(mult))):
            c_out = ch * mult[level]
            n_blocks = config.num_res_blocks + 1  # the decoder has one more block per level
            up = _Level([(c_in if j == 0 else c_out, c_out) for j in range(n_blocks)], factory)
            if level != 0:
                up.upsample = Upsample(c_out, factory)
            levels.insert(0, up)
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c_in, factory)
        self.conv_out = _conv(c_in, out_channels, 3, factory, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for up in reversed(self.up):
            for block in up.block:
                h = block(h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class AutoencoderKL(nn.Module):
    """SD3 VAE: `encoder` and `decoder` with the official key names; no quant_conv / post_quant_conv.

    Every method runs in the module's dtype and device (inputs are cast to them) and returns that dtype.
    """

    def __init__(
        self,
        config: AutoencoderConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for width in (config.ch * m for m in config.ch_mult):
            if width % GROUPS:
                raise ValueError(f"VAE width {width} is not divisible by the {GROUPS} GroupNorm groups")
        self.config = config
        factory: _Factory = {"device": device, "dtype": dtype}
        self.encoder = Encoder(config, factory)
        self.decoder = Decoder(config, factory, out_channels=config.in_channels)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.encoder.conv_in.weight
        return x.to(device=weight.device, dtype=weight.dtype)

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,H,W] in [-1,1] -> (mean, logvar), each [B,16,H//8,W//8]; logvar clamped to [-30, 20].

        Matches sd3.5 `SDVAE.encode` up to (not including) the reparameterised sample.
        """
        moments = self.encoder(self._cast(images))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [-1,1] -> posterior mode (= mean) [B,16,H//8,W//8], as ComfyUI VAEEncode."""
        moments = self.encoder(self._cast(images))
        return moments[:, : self.config.z_channels]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B,16,h,w] (VAE space) -> images [B,3,8h,8w] ~[-1,1], unclamped (sd3.5 `SDVAE.decode`)."""
        return self.decoder(self._cast(z))

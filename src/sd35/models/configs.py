"""Frozen architecture configs for every network sd35 runs, with named presets.

Every field can be read off a checkpoint's tensor shapes (see `sd35.loading.detect`); the presets are the
released models' values (sources in ../shared/docs/sd35-spec.md §1–§3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HEAD_DIM = 64  # every SD3.x network uses 64-dim attention heads (MMDiT, CLIP-L/G, T5-XXL)


@dataclass(frozen=True)
class MMDiTXConfig:
    """MMDiT / MMDiT-X (sd3.5 `mmditx.py MMDiTX`).

    The released models have hidden = 64·depth and heads = depth; sd35 reads depth (number of joint blocks)
    and hidden (x_embedder width) separately, so reduced-depth test models at the real width work too.
    """

    depth: int
    hidden_size: int
    patch_size: int = 2
    in_channels: int = 16
    pos_embed_max_size: int = 384  # side of the square learned position table, in patches
    adm_in_channels: int = 2048  # pooled text vector width (CLIP-L 768 + CLIP-G 1280)
    context_in_dim: int = 4096  # context_embedder input width (T5-XXL d_model)
    qk_norm: bool = True  # RMSNorm on q and k per head (SD3.5); False for SD3 Medium
    x_block_self_attn_layers: tuple[int, ...] = ()  # blocks with the extra x-only attention (attn2)

    @property
    def num_heads(self) -> int:
        return self.hidden_size // HEAD_DIM

    @property
    def out_channels(self) -> int:
        return self.in_channels


SD35_MEDIUM = MMDiTXConfig(
    depth=24, hidden_size=1536, pos_embed_max_size=384, x_block_self_attn_layers=tuple(range(13))
)
SD3_MEDIUM = MMDiTXConfig(depth=24, hidden_size=1536, pos_embed_max_size=192, qk_norm=False)
SD35_LARGE = MMDiTXConfig(depth=38, hidden_size=2432, pos_embed_max_size=192)


@dataclass(frozen=True)
class AutoencoderConfig:
    """The SD3 16-channel KL autoencoder (sd3.5 `sd3_impls.py SDVAE`), without quant convs."""

    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # encoder; the decoder has num_res_blocks + 1
    z_channels: int = 16

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


SD3_VAE = AutoencoderConfig()


@dataclass(frozen=True)
class CLIPTextConfig:
    """CLIP text transformer in the Hugging Face layout (transformers `CLIPTextModelWithProjection`).

    CLIP-L and CLIP-G are two configs of one class: they differ in width, depth, activation and in whether
    the pooled vector goes through `text_projection`.
    """

    hidden_size: int
    num_layers: int
    intermediate_size: int
    hidden_act: Literal["quick_gelu", "gelu"]
    project_pooled: bool  # CLIP-G: pooled = text_projection(pooled); CLIP-L: pooled stays unprojected
    projection_dim: int | None = None  # out width of text_projection (None when the file has none)
    vocab_size: int = 49408
    max_positions: int = 77
    layer_norm_eps: float = 1e-5

    @property
    def num_heads(self) -> int:
        return self.hidden_size // HEAD_DIM


CLIP_L = CLIPTextConfig(
    hidden_size=768,
    num_layers=12,
    intermediate_size=3072,
    hidden_act="quick_gelu",
    project_pooled=False,
    projection_dim=768,
)
CLIP_G = CLIPTextConfig(
    hidden_size=1280,
    num_layers=32,
    intermediate_size=5120,
    hidden_act="gelu",
    project_pooled=True,
    projection_dim=1280,
)


@dataclass(frozen=True)
class T5Config:
    """T5 v1.1 encoder (transformers `T5EncoderModel`, sd3.5 `other_impls.py T5XXLModel`)."""

    d_model: int
    num_layers: int
    d_ff: int
    vocab_size: int = 32128
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_eps: float = 1e-6

    @property
    def num_heads(self) -> int:
        return self.d_model // HEAD_DIM


T5_XXL = T5Config(d_model=4096, num_layers=24, d_ff=10240)


# Tiny random-weight models used by `sd35 make-tiny`, the tests and the embedded default. They keep the
# real models' shape rules (spec §5): head dim 64, CLIP >= 3 layers with 49408x77 tables, T5 vocab 32128,
# CLIP-L width + CLIP-G width <= T5 width = context_embedder input; the position table (96 patches a side)
# covers 1536x1536 images.
TINY_CLIP_L = CLIPTextConfig(
    hidden_size=128,
    num_layers=3,
    intermediate_size=256,
    hidden_act="quick_gelu",
    project_pooled=False,
    projection_dim=128,
)
TINY_CLIP_G = CLIPTextConfig(
    hidden_size=192,
    num_layers=3,
    intermediate_size=384,
    hidden_act="gelu",
    project_pooled=True,
    projection_dim=192,
)
TINY_T5 = T5Config(d_model=384, num_layers=2, d_ff=256)
TINY_MMDITX = MMDiTXConfig(
    depth=3,
    hidden_size=192,
    pos_embed_max_size=96,
    adm_in_channels=TINY_CLIP_L.hidden_size + 192,
    context_in_dim=TINY_T5.d_model,
    qk_norm=True,
    x_block_self_attn_layers=(0, 1),
)
TINY_VAE = AutoencoderConfig(ch=32)

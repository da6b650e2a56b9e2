"""Configs read off tensor shapes alone (no tensor data), one function per component.

Inputs are `{official key without file prefix: shape}`. The rules are the reference's: sd3.5
`sd3_impls.py BaseModel.__init__` for the MMDiT (plus ComfyUI `detect_unet_config` for attn2), the
`SDVAE` layout for the VAE, and the HF layouts for CLIP and T5 (spec §1–§2). A shape that breaks a rule
raises `ShapeError` with the reason; callers add the file name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from sd35.models.configs import HEAD_DIM, AutoencoderConfig, CLIPTextConfig, MMDiTXConfig, T5Config

Shapes = Mapping[str, tuple[int, ...]]

CLIP_L_WIDTH, CLIP_G_WIDTH = 768, 1280  # OpenAI CLIP ViT-L/14 and OpenCLIP bigG text widths


class ShapeError(ValueError):
    """The tensors do not follow the shape rules of the component they look like."""


def _need(shapes: Shapes, *keys: str) -> None:
    missing = [k for k in keys if k not in shapes]
    if missing:
        raise ShapeError(f"cannot read the config: missing {', '.join(missing)}")


def _indices(shapes: Shapes, prefix: str) -> list[int]:
    """Sorted distinct integers i of keys `prefix{i}.…`; they must run 0..n-1."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = sorted({int(m.group(1)) for k in shapes if (m := pattern.match(k))})
    if found != list(range(len(found))):
        raise ShapeError(f"{prefix}* indices are not contiguous: {found[:8]}…")
    return found


def mmditx_config_from_shapes(shapes: Shapes) -> MMDiTXConfig:
    """MMDiT-X config (sd3.5 `BaseModel.__init__`): depth = number of joint blocks, hidden = x_embedder
    width, table side = sqrt(pos_embed rows), attn2 blocks = those with `x_block.attn2.qkv.weight`."""
    _need(shapes, "x_embedder.proj.weight", "pos_embed", "y_embedder.mlp.0.weight", "context_embedder.weight")
    hidden, in_channels, patch, patch_w = shapes["x_embedder.proj.weight"]
    if patch != patch_w:
        raise ShapeError(f"non-square patches {patch}x{patch_w}")
    if hidden % HEAD_DIM:
        raise ShapeError(f"hidden size {hidden} is not a multiple of the {HEAD_DIM}-wide attention heads")
    blocks = _indices(shapes, "joint_blocks.")
    if not blocks:
        raise ShapeError("no joint_blocks")
    rows = shapes["pos_embed"][-2]
    side = math.isqrt(rows)
    if side * side != rows or shapes["pos_embed"][-1] != hidden:
        raise ShapeError(f"pos_embed {list(shapes['pos_embed'])} is not a square table of width {hidden}")
    return MMDiTXConfig(
        depth=len(blocks),
        hidden_size=hidden,
        patch_size=patch,
        in_channels=in_channels,
        pos_embed_max_size=side,
        adm_in_channels=shapes["y_embedder.mlp.0.weight"][1],
        context_in_dim=shapes["context_embedder.weight"][1],
        qk_norm="joint_blocks.0.context_block.attn.ln_k.weight" in shapes
        or "joint_blocks.0.x_block.attn.ln_k.weight" in shapes,
        x_block_self_attn_layers=tuple(i for i in blocks if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in shapes),
    )


def vae_config_from_shapes(shapes: Shapes) -> AutoencoderConfig:
    """SD3 VAE config: ch = encoder.conv_in width, ch_mult from each level's first conv, z from the
    decoder input. Rejects the 4-channel SD1/SDXL VAE (it has quant convs SD3's lacks)."""
    if "quant_conv.weight" in shapes or "post_quant_conv.weight" in shapes:
        raise ShapeError("has quant_conv layers: this is an SD1.x/SDXL-style VAE, not the 16-channel SD3 VAE")
    _need(shapes, "encoder.conv_in.weight", "decoder.conv_in.weight", "encoder.down.0.block.0.conv1.weight")
    ch, in_channels = shapes["encoder.conv_in.weight"][:2]
    levels = _indices(shapes, "encoder.down.")
    ch_mult = []
    for i in levels:
        key = f"encoder.down.{i}.block.0.conv1.weight"
        _need(shapes, key)
        ch_mult.append(shapes[key][0] // ch)
    return AutoencoderConfig(
        in_channels=in_channels,
        ch=ch,
        ch_mult=tuple(ch_mult),
        num_res_blocks=len(_indices(shapes, "encoder.down.0.block.")),
        z_channels=shapes["decoder.conv_in.weight"][1],
    )


def clip_config_from_shapes(shapes: Shapes, role: str) -> CLIPTextConfig:
    """CLIP text config; activation and pooled projection come from the role (clip_l: quick_gelu,
    unprojected pooled; clip_g: gelu, projected) since shapes cannot tell them apart."""
    tok, pos = "text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight"
    _need(shapes, tok, pos, "text_model.encoder.layers.0.mlp.fc1.weight")
    vocab, hidden = shapes[tok]
    if hidden % HEAD_DIM:
        raise ShapeError(f"CLIP width {hidden} is not a multiple of {HEAD_DIM}")
    layers = _indices(shapes, "text_model.encoder.layers.")
    projection = shapes.get("text_projection.weight")
    is_g = role == "clip_g"
    if is_g and projection is None:
        raise ShapeError("CLIP-G needs text_projection.weight (its pooled output is projected)")
    return CLIPTextConfig(
        hidden_size=hidden,
        num_layers=len(layers),
        intermediate_size=shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
        hidden_act="gelu" if is_g else "quick_gelu",
        project_pooled=is_g,
        projection_dim=projection[0] if projection is not None else None,
        vocab_size=vocab,
        max_positions=shapes[pos][0],
    )


def clip_role_from_shapes(shapes: Shapes) -> str | None:
    """clip_l / clip_g from the width of the real models, None when the width is not theirs."""
    tok = shapes.get("text_model.embeddings.token_embedding.weight")
    width = tok[1] if tok else None
    return {CLIP_L_WIDTH: "clip_l", CLIP_G_WIDTH: "clip_g"}.get(width)  # type: ignore[arg-type]


def t5_config_from_shapes(shapes: Shapes) -> T5Config:
    """T5 v1.1 encoder config (gated-GELU FF: wi_0/wi_1); vocab and d_model from the token table."""
    table = shapes.get("encoder.embed_tokens.weight") or shapes.get("shared.weight")
    ff0 = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
    if "encoder.block.0.layer.1.DenseReluDense.wi.weight" in shapes:
        raise ShapeError("is a T5 v1.0 encoder (non-gated feed-forward); SD3 uses T5 v1.1 XXL")
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    _need(shapes, ff0, bias, "encoder.block.0.layer.0.SelfAttention.q.weight")
    if table is None:
        raise ShapeError("cannot read the config: missing encoder.embed_tokens.weight")
    vocab, d_model = table
    buckets, heads = shapes[bias]
    if heads * HEAD_DIM != d_model or shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0] != d_model:
        raise ShapeError(f"T5 with {heads} heads and width {d_model} does not have {HEAD_DIM}-wide heads")
    return T5Config(
        d_model=d_model,
        num_layers=len(_indices(shapes, "encoder.block.")),
        d_ff=shapes[ff0][0],
        vocab_size=vocab,
        relative_attention_num_buckets=buckets,
    )

"""The LoRA name table at SD3.5 Medium size (built on the meta device): every Linear/Conv of diffusers'
SD3Transformer2DModel and of our MMDiTX has a target, q/k/v land on thirds of the fused qkv, and exactly the
two adaLN layers diffusers stores as (scale, shift) are swapped."""

from __future__ import annotations

import pytest
import torch

from sd35.loading.diffusers_format import transformer_config
from sd35.loading.load import build_model
from sd35.lora.keys import Target, name_table, split_prefix, split_suffix
from sd35.models.configs import SD35_MEDIUM


@pytest.fixture(scope="module")
def table():
    return name_table("mmditx", build_model("mmditx", SD35_MEDIUM, device="meta"))


def _layers(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def test_every_diffusers_and_official_layer_has_a_target(table) -> None:
    from diffusers import SD3Transformer2DModel

    config = {k: v for k, v in transformer_config(SD35_MEDIUM).items() if not k.startswith("_")}
    with torch.device("meta"):
        theirs = SD3Transformer2DModel(**config)
    names = _layers(theirs)
    # 271 of our layers (24 blocks x 10 - 8 on the pre-only last context block, 13 x attn2 qkv/proj, 8 more);
    # diffusers splits the 61 fused qkv into 3: 271 + 2·61
    assert len(names) == 271 + 2 * 61 and not [n for n in names if table.lookup(n, False) is None]
    assert not [n for n in names if table.lookup(n.replace(".", "_"), True) is None]  # OneTrainer / LyCORIS
    ours = _layers(build_model("mmditx", SD35_MEDIUM, device="meta"))
    assert len(ours) == 271
    assert all(
        table.lookup(n, False) == Target(n) and table.lookup(n.replace(".", "_"), True) == Target(n) for n in ours
    )


def test_split_qkv_swapped_adaln_and_attn2(table) -> None:
    qkv = "joint_blocks.5.x_block.attn.qkv"
    assert [table.lookup(f"transformer_blocks.5.attn.to_{p}", False) for p in "qkv"] == [
        Target(qkv, i, 3) for i in range(3)
    ]
    ctx = "joint_blocks.0.context_block.attn.qkv"
    assert table.lookup("transformer_blocks.0.attn.add_k_proj", False) == Target(ctx, 1, 3)
    assert table.lookup("transformer_blocks.12.attn2.to_v", False) == Target("joint_blocks.12.x_block.attn2.qkv", 2, 3)
    assert table.lookup("transformer_blocks.13.attn2.to_v", False) is None  # attn2 on blocks 0-12 only
    assert table.lookup("transformer_blocks.3.attn.to_add_out", False) == Target(
        "joint_blocks.3.context_block.attn.proj"
    )
    swapped = {n for n, t in table.dotted.items() if t.swap}
    assert swapped == {"norm_out.linear", "transformer_blocks.23.norm1_context.linear"}
    assert table.lookup("transformer_blocks.22.norm1_context.linear", False).swap is False


@pytest.mark.parametrize(
    ("key", "stem", "suffix"),
    [
        ("lora_unet_joint_blocks_0_x_block_attn_qkv.alpha", "lora_unet_joint_blocks_0_x_block_attn_qkv", ".alpha"),
        ("transformer.proj_out.lora_B.default.weight", "transformer.proj_out", ".lora_B.default.weight"),
        ("diffusion_model.final_layer.linear.diff_b", "diffusion_model.final_layer.linear", ".diff_b"),
        ("lycoris_proj_out.lokr_w1_a", "lycoris_proj_out", ".lokr_w1_a"),
        ("weird", None, None),
    ],
)  # fmt: skip
def test_key_split(key: str, stem: str | None, suffix: str | None) -> None:
    assert split_suffix(key) == ((stem, suffix) if stem else None)
    if stem:
        assert split_prefix(stem)[1] in {"joint_blocks_0_x_block_attn_qkv", "proj_out", "final_layer.linear"}

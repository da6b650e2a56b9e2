"""Refusals, each with a message naming the file and the problem: another model family (SDXL, Flux),
unknown keys, rank mismatch, a LoRA for another model size, incomplete factors, DoRA, non-safetensors files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lora_helpers import save

from sd35.errors import CheckpointError
from sd35.loading.errors import CheckpointFormatError, UnsafeCheckpointError
from sd35.lora import (
    LoraArchitectureError,
    LoraError,
    LoraKeyError,
    LoraShapeError,
    LoraSpec,
    apply_to_networks,
    read_lora,
)

D = 192  # tiny MMDiT width
QKV = "lora_unet_joint_blocks_0_x_block_attn_qkv"


def _pair(stem: str, out: int, inp: int, rank: int = 4, up_rank: int | None = None) -> dict[str, torch.Tensor]:
    return {
        f"{stem}.lora_down.weight": torch.zeros(rank, inp),
        f"{stem}.lora_up.weight": torch.zeros(out, up_rank or rank),
    }


CASES = {
    "sdxl kohya": (
        {
            **_pair("lora_unet_input_blocks_4_1_proj_in", 640, 640),
            **_pair("lora_te2_text_model_encoder_layers_0_mlp_fc1", 5120, 1280),
        },
        LoraArchitectureError,
        "SD1.x/SDXL UNet",
    ),
    "sdxl diffusers": (_pair("unet.down_blocks.1.attentions.0.proj_in", 640, 640), LoraArchitectureError, "SDXL"),
    "flux kohya": (_pair("lora_unet_double_blocks_0_img_attn_qkv", 9216, 3072), LoraArchitectureError, "Flux"),
    "flux diffusers": (
        _pair("transformer.single_transformer_blocks.0.attn.to_q", 3072, 3072),
        LoraArchitectureError,
        "Flux",
    ),
    "sd1 text encoder": (_pair("lora_te_text_model_encoder_layers_0_mlp_fc1", 3072, 768), LoraArchitectureError, "SD1"),
    "unknown suffix": ({**_pair(QKV, 3 * D, D), "emb_params": torch.zeros(2, 8)}, LoraKeyError, "emb_params"),
    "unknown module": (
        {**_pair(QKV, 3 * D, D), **_pair("lora_unet_joint_blocks_0_x_block_attn_qkvx", 3 * D, D)},
        LoraKeyError,
        "lora_unet_joint_blocks_0_x_block_attn_qkvx.lora_down.weight",
    ),
    "deeper model (SD3.5 Large)": (
        _pair("lora_unet_joint_blocks_30_x_block_attn_qkv", 3 * D, D),
        LoraKeyError,
        "this MMDiT has 3 blocks",
    ),
    "attn2 where the model has none": (
        _pair("transformer.transformer_blocks.2.attn2.to_q", D, D),
        LoraKeyError,
        "attn2 (x-block self-attention), which this MMDiT has on blocks [0, 1]",
    ),
    "rank mismatch": (_pair(QKV, 3 * D, D, rank=4, up_rank=8), LoraShapeError, "rank mismatch"),
    "loha rank mismatch": (
        {
            "lycoris_proj_out.hada_w1_a": torch.zeros(64, 4),
            "lycoris_proj_out.hada_w1_b": torch.zeros(2, D),
            "lycoris_proj_out.hada_w2_a": torch.zeros(64, 4),
            "lycoris_proj_out.hada_w2_b": torch.zeros(4, D),
        },
        LoraShapeError,
        "rank mismatch",
    ),  # fmt: skip
    "model of another size": (_pair(QKV, 3 * 1536, 1536), LoraShapeError, "[4608, 1536]"),
    "q of another size": (
        _pair("transformer.transformer_blocks.0.attn.to_q", 1536, 1536),
        LoraShapeError,
        "rows 0:192",
    ),
    "incomplete pair": ({f"{QKV}.lora_down.weight": torch.zeros(4, D)}, LoraShapeError, "no matching"),
    "dora": ({**_pair(QKV, 3 * D, D), f"{QKV}.dora_scale": torch.zeros(3 * D, 1)}, LoraError, "DoRA"),
    "alpha only": ({f"{QKV}.alpha": torch.tensor(4.0)}, LoraError, "no weights to apply"),
    "no tensors": ({}, LoraError, "holds no tensors"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_refused_with_a_clear_message(case: str, models, tmp_path: Path) -> None:
    tensors, error, text = CASES[case]
    path = save(tmp_path / "bad.safetensors", tensors)
    with pytest.raises(error) as info:
        apply_to_networks(models, [LoraSpec(path)])
    message = str(info.value)
    assert text in message and str(path) in message, message
    assert isinstance(info.value, CheckpointError)  # the CLI prints it without a traceback


def test_non_safetensors_files(tmp_path: Path) -> None:
    pickle = tmp_path / "lora.pt"
    torch.save({f"{QKV}.lora_down.weight": torch.zeros(4, D)}, pickle)
    with pytest.raises(UnsafeCheckpointError, match="does not load pickles"):
        read_lora(pickle)
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(pickle.read_bytes())
    with pytest.raises(UnsafeCheckpointError, match="zip/pickle"):
        read_lora(renamed)
    html = tmp_path / "page.safetensors"
    html.write_text("<!DOCTYPE html><html><body>Not found</body></html>")
    with pytest.raises(CheckpointFormatError, match="web page"):
        read_lora(html)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match="empty"):
        read_lora(empty)


def test_text_encoder_keys_without_that_encoder_are_skipped_with_a_warning(models, tmp_path: Path, caplog) -> None:
    """T5 not loaded: its modules cannot be checked or applied; that is said, not silent."""
    path = save(tmp_path / "te3.safetensors", _pair("lora_te3_encoder_block_0_layer_0_SelfAttention_q", 384, 384))
    without_t5 = {**models, "t5xxl": None}
    patched = apply_to_networks(without_t5, [LoraSpec(path)])
    assert patched["t5xxl"] is None and patched["mmditx"] is models["mmditx"]
    assert "1 module(s) for T5-XXL not applied (not loaded)" in caplog.text

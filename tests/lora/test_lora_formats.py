"""Each LoRA layout, built from known random deltas: patched weights = hand-merged weights, and the image
equals the one from a checkpoint holding the hand-merged weights.

Layouts: kohya sd-scripts (lora_unet_/lora_te1-3_ + alpha), ComfyUI LoraSave (diffusion_model./text_encoders.,
no alpha), OneTrainer (lora_transformer_ + diffusers names, q/k/v split, adaLN halves swapped), diffusers
names written by hand (transformer.*.lora_A/B), SimpleTuner LyCORIS (lycoris_ LoKr/LoHa), LoCon (conv
factors with a Tucker mid). The PEFT-produced file is in test_lora_peft.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lora_helpers import (
    DenseDelta,
    comfyui,
    diffusers_named,
    hand_merged,
    image,
    kohya,
    load_tiny,
    random_deltas,
    save,
    write_merged_checkpoint,
)
from safetensors.torch import save_file

from sd35.loading import convert
from sd35.lora import LoraSpec, apply_loras, apply_to_networks, read_lora

MMDIT = [
    "joint_blocks.0.x_block.attn.qkv",
    "joint_blocks.0.context_block.attn.qkv",
    "joint_blocks.1.x_block.attn2.qkv",  # attn2: x-block self-attention (SD3.5M)
    "joint_blocks.0.x_block.attn2.proj",
    "joint_blocks.1.x_block.attn.proj",
    "joint_blocks.1.context_block.attn.proj",
    "joint_blocks.0.x_block.mlp.fc1",
    "joint_blocks.2.context_block.attn.qkv",  # the pre-only last context block
    "joint_blocks.1.context_block.mlp.fc2",
    "joint_blocks.0.x_block.adaLN_modulation.1",
    "joint_blocks.1.context_block.adaLN_modulation.1",
    "joint_blocks.2.context_block.adaLN_modulation.1",  # (shift, scale) swapped in diffusers
    "final_layer.adaLN_modulation.1",  # swapped in diffusers
    "final_layer.linear",
    "context_embedder",
    "t_embedder.mlp.0",
    "y_embedder.mlp.2",
]
TEXT = {
    "clip_l": ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.2.mlp.fc2"],
    "clip_g": ["text_model.encoder.layers.1.self_attn.out_proj", "text_projection"],
    "t5xxl": ["encoder.block.0.layer.0.SelfAttention.q", "encoder.block.1.layer.1.DenseReluDense.wi_1"],
}
STRENGTHS = {"mmditx": 0.8, "clip_l": 0.6, "clip_g": 0.6, "t5xxl": 0.6}
SPEC = dict(strength_model=0.8, strength_clip=0.6)
KOHYA_TE = {"clip_l": "lora_te1_", "clip_g": "lora_te2_", "t5xxl": "lora_te3_"}
DIFFUSERS_TE = {"clip_l": "text_encoder.", "clip_g": "text_encoder_2.", "t5xxl": "text_encoder_3."}


def _check_weights(patched: dict, models: dict, expected: dict) -> float:
    """Max |patched - expected| over touched weights; untouched weights must be the very same tensors."""
    worst = 0.0
    for component, params in expected.items():
        for name, want in params.items():
            worst = max(worst, (patched[component].get_parameter(name) - want).abs().max().item())
        for name, param in models[component].named_parameters():
            if name not in params:
                assert patched[component].get_parameter(name) is param, name
    return worst


def _check_image(tmp_path: Path, tiny_models_dir: Path, base, path: Path, expected: dict) -> float:
    diffusion, text = apply_loras(base.diffusion, base.text, [LoraSpec(path, **SPEC)])
    with_lora = image(replace(base, diffusion=diffusion, text=text))
    merged = load_tiny(write_merged_checkpoint(tiny_models_dir, tmp_path / "merged", expected))
    return (with_lora - image(merged)).abs().max().item()


def _written(fmt: str, deltas: list, models: dict) -> dict[str, torch.Tensor]:
    if fmt == "kohya":
        return kohya(deltas)
    if fmt == "comfyui":
        return comfyui(deltas)
    if fmt == "onetrainer":
        return diffusers_named("lora_transformer_", True, KOHYA_TE)(deltas, models)
    return diffusers_named("transformer.", False, DIFFUSERS_TE)(deltas, models)  # hand-written diffusers names


@pytest.mark.parametrize("fmt", ["kohya", "comfyui", "onetrainer", "diffusers"])
def test_low_rank_layouts(fmt: str, models, base, base_image, tiny_models_dir: Path, tmp_path: Path) -> None:
    deltas = random_deltas(models, {"mmditx": MMDIT, **TEXT}, seed=len(fmt), alpha=fmt != "comfyui")
    tensors = _written(fmt, deltas, models)
    if fmt == "diffusers":  # PEFT names: lora_A = down, lora_B = up
        tensors = {k.replace(".lora_up.weight", ".lora_B.weight").replace(".lora_down.weight", ".lora_A.weight"): v
                   for k, v in tensors.items()}  # fmt: skip
    path = save(tmp_path / f"{fmt}.safetensors", tensors)
    lora = read_lora(path)
    expected_style = {"kohya": "kohya", "comfyui": "comfyui", "onetrainer": "onetrainer", "diffusers": "diffusers"}[fmt]
    assert expected_style in lora.formats and lora.components == ("mmditx", "clip_l", "clip_g", "t5xxl")

    expected = hand_merged(models, deltas, STRENGTHS)
    patched = apply_to_networks(models, [LoraSpec(path, **SPEC)])
    assert _check_weights(patched, models, expected) <= 1e-6
    assert _check_image(tmp_path, tiny_models_dir, base, path, expected) <= 1e-6
    assert image(base).equal(base_image), "the loaded models must stay untouched"


def _lycoris_file(models: dict, g: torch.Generator) -> tuple[dict[str, torch.Tensor], list[DenseDelta]]:
    """LoKr and LoHa factors under lycoris_ + diffusers names, with the ΔW each gives in our layout."""
    r, alpha = 4, 2.0
    x = models["mmditx"].joint_blocks[0].x_block
    d = x.attn.qkv.weight.shape[1]
    randn = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    tensors: dict[str, torch.Tensor] = {}
    deltas = []
    # LoKr on to_out.0 (= x attn.proj): full w1 [2, 2], decomposed w2 -> scale alpha / r
    w1, w2a, w2b = randn(2, 2), randn(d // 2, r), randn(r, d // 2)
    stem = "lycoris_transformer_blocks_0_attn_to_out_0"
    tensors |= {
        f"{stem}.lokr_w1": w1,
        f"{stem}.lokr_w2_a": w2a,
        f"{stem}.lokr_w2_b": w2b,
        f"{stem}.alpha": torch.tensor(alpha),
    }
    deltas.append(DenseDelta("mmditx", "joint_blocks.0.x_block.attn.proj", torch.kron(w1, w2a @ w2b) * alpha / r))
    # LoKr with both factors full on norm_out.linear (= final adaLN, halves swapped in diffusers) -> scale 1
    w1, w2 = randn(4, 2), randn(d // 2, d // 2)
    tensors |= {"lycoris_norm_out_linear.lokr_w1": w1, "lycoris_norm_out_linear.lokr_w2": w2,
                "lycoris_norm_out_linear.alpha": torch.tensor(alpha)}  # fmt: skip
    official = convert.to_official("swap", [torch.kron(w1, w2)])
    deltas.append(DenseDelta("mmditx", "final_layer.adaLN_modulation.1", official))
    # LoHa on to_k (rows d:2d of the fused x qkv) and on ff.net.0.proj (= mlp.fc1)
    for stem, module, out, start in (
        ("lycoris_transformer_blocks_1_attn_to_k", "joint_blocks.1.x_block.attn.qkv", d, d),
        ("lycoris_transformer_blocks_1_ff_net_0_proj", "joint_blocks.1.x_block.mlp.fc1", 4 * d, 0),
    ):
        h = {"hada_w1_a": randn(out, r), "hada_w1_b": randn(r, d), "hada_w2_a": randn(out, r), "hada_w2_b": randn(r, d)}
        tensors |= {f"{stem}.{k}": v for k, v in h.items()} | {f"{stem}.alpha": torch.tensor(alpha)}
        dense = (h["hada_w1_a"] @ h["hada_w1_b"]) * (h["hada_w2_a"] @ h["hada_w2_b"]) * alpha / r
        deltas.append(DenseDelta("mmditx", module, dense, start))
    # LoKr on attn2.to_v (rows 2d:3d of the fused attn2 qkv), w1 decomposed
    w1a, w1b, w2 = randn(2, 1), randn(1, 2), randn(d // 2, d // 2)
    stem = "lycoris_transformer_blocks_0_attn2_to_v"
    tensors |= {
        f"{stem}.lokr_w1_a": w1a,
        f"{stem}.lokr_w1_b": w1b,
        f"{stem}.lokr_w2": w2,
        f"{stem}.alpha": torch.tensor(alpha),
    }
    deltas.append(DenseDelta("mmditx", "joint_blocks.0.x_block.attn2.qkv", torch.kron(w1a @ w1b, w2) * alpha, 2 * d))
    return tensors, deltas


def test_lycoris_lokr_loha(models, base, tiny_models_dir: Path, tmp_path: Path) -> None:
    tensors, deltas = _lycoris_file(models, torch.Generator().manual_seed(3))
    path = save(tmp_path / "lycoris.safetensors", tensors)
    lora = read_lora(path)
    assert lora.formats == ("simpletuner-lycoris",) and lora.kinds == ("loha", "lokr")
    expected = hand_merged(models, deltas, STRENGTHS)
    patched = apply_to_networks(models, [LoraSpec(path, **SPEC)])
    assert _check_weights(patched, models, expected) <= 1e-6
    assert _check_image(tmp_path, tiny_models_dir, base, path, expected) <= 1e-6


def test_locon_conv_and_tucker(models, base, tiny_models_dir: Path, tmp_path: Path) -> None:
    """LoCon on the patch-embedding Conv2d (2x2, stride 2), plain and Tucker (1x1 down, 2x2 mid, 1x1 up)."""
    g = torch.Generator().manual_seed(4)
    conv = models["mmditx"].x_embedder.proj
    out, cin, k = conv.weight.shape[:3]
    r = 3
    up, down, mid = (torch.randn(*s, generator=g) * 0.1 for s in ((out, r, 1, 1), (r, cin, 1, 1), (r, r, k, k)))
    stem = "lora_unet_x_embedder_proj"
    tensors = {f"{stem}.lora_up.weight": up, f"{stem}.lora_down.weight": down, f"{stem}.lora_mid.weight": mid,
               f"{stem}.alpha": torch.tensor(6.0)}  # fmt: skip
    path = tmp_path / "locon.safetensors"
    save_file(tensors, str(path))
    # the Tucker LoCon forward is up(mid(down(x))): compare the merged conv with that composition
    x = torch.randn(2, cin, 8, 8, generator=g)
    branch = torch.nn.functional.conv2d(
        torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down), mid, stride=k), up
    )
    patched = apply_to_networks(models, [LoraSpec(path, strength_model=0.8)])
    with torch.no_grad():
        got = patched["mmditx"].x_embedder.proj(x) - conv(x)
    assert (got - 0.8 * 2.0 * branch).abs().max().item() <= 1e-5
    dense = torch.einsum("oa,abhw,bi->oihw", up.flatten(1), mid, down.flatten(1)) * 2.0
    expected = hand_merged(models, [DenseDelta("mmditx", "x_embedder.proj", dense)], STRENGTHS)
    assert _check_weights(patched, models, expected) <= 1e-6
    assert read_lora(path).kinds == ("locon",)
    assert _check_image(tmp_path, tiny_models_dir, base, path, expected) <= 1e-6

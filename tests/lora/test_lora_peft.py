"""A diffusers/PEFT LoRA made by peft and diffusers themselves: `add_adapter` on diffusers'
SD3Transformer2DModel and transformers' CLIP text models (random factors, lora_alpha != r, an alpha_pattern,
a rank_pattern, rsLoRA on the text encoders), saved with `StableDiffusion3Pipeline.save_lora_weights`
(adapter config in the file's metadata). The reference weights are PEFT's own `merge()`, mapped to our
names with `loading.keymaps`: our patched weights must equal them, and so must the images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lora_helpers import image, load_tiny, write_merged_checkpoint

from sd35.loading import convert, keymaps
from sd35.lora import LoraSpec, apply_loras, apply_to_networks, read_lora

TRANSFORMER_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_out.0",
    "to_add_out",
    "ff.net.0.proj",
    "ff_context.net.2",
    "norm1.linear",
    "norm1_context.linear",
    "norm_out.linear",
    "proj_out",
    "context_embedder",
    "pos_embed.proj",
]  # fmt: skip  (to_q/to_k/to_v also match attn2.* : the x-block self-attention)
STRENGTH_MODEL, STRENGTH_CLIP = 0.7, 1.3


def _merged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's merge of every LoRA layer, as a plain state dict (base_layer names folded back)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    state = model.state_dict()
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in state.items() if "lora_" not in k}


def _to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mappings = keymaps.from_diffusers("mmditx", state).mappings
    return {m.official: convert.to_official(m.op, [state[d] for d in m.diffusers]) for m in mappings}


@pytest.fixture(scope="module")
def peft_lora(tiny_model_paths: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """(file, {component: PEFT-merged weights at strength 1 in our names})."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from transformers import CLIPTextModelWithProjection

    root = tiny_model_paths["diffusers"]
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel.from_pretrained(root / "transformer")
    t_config = LoraConfig(
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        target_modules=TRANSFORMER_TARGETS,
        alpha_pattern={"proj_out": 2},
        rank_pattern={"context_embedder": 2},
    )
    transformer.add_adapter(t_config)
    encoders = {}
    te_config = LoraConfig(r=4, lora_alpha=4, use_rslora=True, init_lora_weights=False,
                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"])  # fmt: skip
    for component, folder in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")):
        encoders[component] = CLIPTextModelWithProjection.from_pretrained(root / folder)
        # peft's own injection (transformers' add_adapter wants peft >= 0.22, not released yet)
        inject_adapter_in_model(te_config, encoders[component])
    folder = tmp_path_factory.mktemp("peft")
    StableDiffusion3Pipeline.save_lora_weights(
        folder,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        text_encoder_lora_layers=get_peft_model_state_dict(encoders["clip_l"]),
        text_encoder_2_lora_layers=get_peft_model_state_dict(encoders["clip_g"]),
        transformer_lora_adapter_metadata=t_config.to_dict(),
        text_encoder_lora_adapter_metadata=te_config.to_dict(),
        text_encoder_2_lora_adapter_metadata=te_config.to_dict(),
    )
    merged = {"mmditx": _to_official(_merged_state(transformer))}
    for component, model in encoders.items():
        merged[component] = _merged_state(model)
    return folder / "pytorch_lora_weights.safetensors", merged


def _expected(models: dict, merged: dict) -> dict[str, dict[str, torch.Tensor]]:
    """W + s·(W_peft − W) for every parameter of ours that PEFT's merge changed."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for component, state in merged.items():
        strength = STRENGTH_MODEL if component == "mmditx" else STRENGTH_CLIP
        for name, param in models[component].named_parameters():
            if name in state and not torch.equal(state[name], param.detach()):
                out.setdefault(component, {})[name] = param.detach() + strength * (state[name] - param.detach())
    return out


def test_peft_file_matches_peft_merge(peft_lora, models, base, tiny_models_dir: Path, tmp_path: Path) -> None:
    path, merged = peft_lora
    lora = read_lora(path)
    assert lora.formats == ("diffusers",) and lora.components == ("mmditx", "clip_l", "clip_g")
    expected = _expected(models, merged)
    touched = {c: len(p) for c, p in expected.items()}
    # MMDiT: per block x qkv/proj/fc1/adaLN (3x4), attn2 qkv/proj on blocks 0-1 (4), context qkv/adaLN (3x2)
    # and proj/fc2 except on the pre-only last block (2x2), final adaLN, proj_out, context_embedder, patch conv
    assert touched == {"mmditx": 12 + 4 + 6 + 4 + 4, "clip_l": 3 * 5, "clip_g": 3 * 5}
    spec = LoraSpec(path, STRENGTH_MODEL, STRENGTH_CLIP)
    patched = apply_to_networks(models, [spec])
    worst = 0.0
    for component, params in expected.items():
        for name, want in params.items():
            worst = max(worst, (patched[component].get_parameter(name) - want).abs().max().item())
        for name, param in models[component].named_parameters():
            if name not in params:  # untouched by PEFT -> untouched by us (same tensor)
                assert patched[component].get_parameter(name) is param, (component, name)
    assert worst <= 1e-6

    # PEFT merges in another order, so weights agree to float rounding (~1e-7), not bit for bit: images
    # agree to a few 1e-6 in [0, 1], far below one 8-bit level (3.9e-3)
    diffusion, text = apply_loras(base.diffusion, base.text, [spec])
    merged_models = load_tiny(write_merged_checkpoint(tiny_models_dir, tmp_path / "merged", expected))
    assert (image(replace(base, diffusion=diffusion, text=text)) - image(merged_models)).abs().max().item() <= 2e-5

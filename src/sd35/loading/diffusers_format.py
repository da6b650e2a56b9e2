"""Writing a diffusers StableDiffusion3Pipeline folder from official-layout weights.

config.json files follow diffusers 0.42 (`SD3Transformer2DModel`, `AutoencoderKL`) and transformers
(`CLIPTextModelWithProjection`, `T5EncoderModel`) so their `from_pretrained` loads the folders; the
values mirror stabilityai/stable-diffusion-3.5-medium's own configs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from sd35.loading import convert, keymaps
from sd35.models.configs import HEAD_DIM, AutoencoderConfig, CLIPTextConfig, MMDiTXConfig, T5Config
from sd35.models.latent_format import SD3_LATENT_FORMAT

DIFFUSERS_VERSION = "0.42.1"
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def transformer_config(config: MMDiTXConfig) -> dict:
    return {
        "_class_name": "SD3Transformer2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": 128,  # default latent side: 1024 px / 8
        "patch_size": config.patch_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "num_layers": config.depth,
        "attention_head_dim": HEAD_DIM,
        "num_attention_heads": config.num_heads,
        "joint_attention_dim": config.context_in_dim,
        "caption_projection_dim": config.hidden_size,
        "pooled_projection_dim": config.adm_in_channels,
        "pos_embed_max_size": config.pos_embed_max_size,
        "dual_attention_layers": list(config.x_block_self_attn_layers),
        "qk_norm": "rms_norm" if config.qk_norm else None,
    }


def vae_config(config: AutoencoderConfig) -> dict:
    levels = len(config.ch_mult)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": config.in_channels,
        "out_channels": config.in_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [config.ch * m for m in config.ch_mult],
        "layers_per_block": config.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": config.z_channels,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": SD3_LATENT_FORMAT.scale_factor,
        "shift_factor": SD3_LATENT_FORMAT.shift_factor,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": True,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": True,
    }


def clip_config(config: CLIPTextConfig, dtype: torch.dtype) -> dict:
    return {
        "architectures": ["CLIPTextModelWithProjection"],
        "model_type": "clip_text_model",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "max_position_embeddings": config.max_positions,
        "vocab_size": config.vocab_size,
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "projection_dim": config.projection_dim or config.hidden_size,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        # eos_token_id 2 selects HF's legacy pooling (argmax of the ids), which is the reference's
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "torch_dtype": _DTYPE_NAMES.get(dtype, "float32"),
    }


def t5_config(config: T5Config, dtype: torch.dtype) -> dict:
    return {
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "d_model": config.d_model,
        "d_kv": HEAD_DIM,
        "d_ff": config.d_ff,
        "num_layers": config.num_layers,
        "num_decoder_layers": config.num_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": 0.1,
        "layer_norm_epsilon": config.layer_norm_eps,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
        "is_encoder_decoder": True,
        "tie_word_embeddings": False,
        "vocab_size": config.vocab_size,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "torch_dtype": _DTYPE_NAMES.get(dtype, "float32"),
    }


def official_to_diffusers_state(component: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-name tensors (no file prefix) -> diffusers/transformers-name tensors."""
    keymap = keymaps.to_diffusers(component, state)
    if keymap.unmatched:
        raise ValueError(f"{component}: no diffusers name for {list(keymap.unmatched)[:5]}")
    out = {}
    for m in keymap.mappings:
        out.update(zip(m.diffusers, convert.to_diffusers(m.op, state[m.official])))
    if component == "t5xxl":  # transformers stores the tied token table once, as `shared`
        out["shared.weight"] = out.pop("encoder.embed_tokens.weight")
    return out


def save_sharded(state: dict[str, torch.Tensor], folder: Path, stem: str, shards: int) -> list[Path]:
    """`{stem}.safetensors`, or `shards` files `{stem}-0000i-of-0000n.safetensors` plus
    `{stem}.safetensors.index.json` (the transformers/diffusers sharding convention)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    if shards <= 1:
        path = folder / f"{stem}.safetensors"
        save_file(state, str(path), metadata={"format": "pt"})
        return [path]
    per = math.ceil(len(keys) / shards)
    weight_map, paths = {}, []
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {k: state[k] for k in keys[i * per : (i + 1) * per]}
        save_file(chunk, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, name))
        paths.append(folder / name)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths


def write_component(root: Path, component: str, config, state: dict[str, torch.Tensor], *, shards: int = 1) -> Path:
    """Write one component sub-folder (config.json + weights) of a diffusers pipeline folder."""
    folder = root / keymaps.DIFFUSERS_FOLDERS[component]
    dtype = next(iter(state.values())).dtype
    if component == "mmditx":
        cfg, stem = transformer_config(config), "diffusion_pytorch_model"
    elif component == "vae":
        cfg, stem = vae_config(config), "diffusion_pytorch_model"
    elif component == "t5xxl":
        cfg, stem = t5_config(config, dtype), "model"
    else:
        cfg, stem = clip_config(config, dtype), "model"
    save_sharded(official_to_diffusers_state(component, state), folder, stem, shards)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def write_model_index(root: Path) -> Path:
    """model_index.json naming the component classes (tokenizers are not written by sd35)."""
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "tokenizer": [None, None],
        "tokenizer_2": [None, None],
        "tokenizer_3": [None, None],
    }
    root.mkdir(parents=True, exist_ok=True)
    scheduler = root / "scheduler"
    scheduler.mkdir(exist_ok=True)
    # sd3.5 `CONFIGS["sd3.5_medium"]["shift"]` = 3.0
    sched = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    (scheduler / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    path = root / "model_index.json"
    path.write_text(json.dumps(index, indent=2))
    return path

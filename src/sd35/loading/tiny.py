"""`make_tiny`: deterministic random-weight SD3.5 files in the official layout, plus a diffusers folder.

The tiny configs (TINY_* in models/configs.py) keep the real models' shape rules (spec §5), so every
config is read back from shapes like a real download. Files written, as a user has them:
`sd3.5_medium.safetensors` (MMDiT-X + VAE), `clip_l.safetensors`, `clip_g.safetensors`,
`t5xxl_fp16.safetensors` (name as released; stored in the chosen dtype), and `diffusers/` holding the
same weights under diffusers names (transformer and text_encoder_3 sharded, as the real repo shards).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from sd35.loading import diffusers_format
from sd35.loading.keymaps import OFFICIAL_PREFIXES
from sd35.loading.load import build_model
from sd35.models.configs import TINY_CLIP_G, TINY_CLIP_L, TINY_MMDITX, TINY_T5, TINY_VAE
from sd35.nn.init import randomize_

log = logging.getLogger(__name__)

TINY_CONFIGS = {
    "mmditx": TINY_MMDITX,
    "vae": TINY_VAE,
    "clip_l": TINY_CLIP_L,
    "clip_g": TINY_CLIP_G,
    "t5xxl": TINY_T5,
}
SEED_OFFSETS = {"mmditx": 0, "vae": 1, "clip_l": 2, "clip_g": 3, "t5xxl": 4}  # one stream per component
CHECKPOINT_NAME = "sd3.5_medium.safetensors"
TEXT_ENCODER_FILES = {"clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors", "t5xxl": "t5xxl_fp16.safetensors"}


def tiny_state(component: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Official-name weights of one tiny component: randomize_ in fp32 (seed + a per-component offset),
    then cast, so every dtype holds the same values up to rounding."""
    model = build_model(component, TINY_CONFIGS[component], device="cpu", dtype=torch.float32)
    randomize_(model, seed + SEED_OFFSETS[component])
    return {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}


def make_tiny(
    out_dir: str | Path, *, seed: int = 0, diffusers: bool = True, dtype: torch.dtype = torch.float32
) -> dict[str, Path]:
    """Write the tiny files into `out_dir`; returns {"checkpoint", "clip_l", "clip_g", "t5xxl"[, "diffusers"]}.

    Same seed and dtype -> byte-identical files on any machine.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    states = {c: tiny_state(c, seed, dtype) for c in TINY_CONFIGS}
    # one metadata entry only: safetensors writes the metadata map in a per-process hash order
    metadata = {"format": "pt"}
    checkpoint = {OFFICIAL_PREFIXES[c] + k: v for c in ("mmditx", "vae") for k, v in states[c].items()}
    paths = {"checkpoint": out / CHECKPOINT_NAME}
    save_file(checkpoint, str(paths["checkpoint"]), metadata=metadata)
    for component, name in TEXT_ENCODER_FILES.items():
        paths[component] = out / name
        save_file(states[component], str(paths[component]), metadata=metadata)
    if diffusers:
        root = out / "diffusers"
        diffusers_format.write_model_index(root)
        for component, state in states.items():
            shards = 2 if component in ("mmditx", "t5xxl") else 1
            diffusers_format.write_component(root, component, TINY_CONFIGS[component], state, shards=shards)
        paths["diffusers"] = root
    log.info("wrote tiny SD3.5 files to %s", out)
    return paths

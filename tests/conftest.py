"""Shared fixtures. `tiny_models_dir`: the tiny random-weight SD3.5 files (official layout + diffusers/),
built once per test session by `sd35.loading.tiny.make_tiny` (seed 0, fp32; ~3 s, ~330 MB in a tmp dir).

Layout: sd3.5_medium.safetensors (MMDiT-X + VAE), clip_l.safetensors, clip_g.safetensors,
t5xxl_fp16.safetensors, diffusers/{model_index.json, transformer/, vae/, text_encoder*/}. Treat the files
as read-only: copy one before changing it.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"checkpoint", "clip_l", "clip_g", "t5xxl", "diffusers"} -> paths of the session's tiny files."""
    from sd35.loading.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_models"), seed=0, diffusers=True)


@pytest.fixture(scope="session")
def tiny_models_dir(tiny_model_paths: dict[str, Path]) -> Path:
    """The folder holding the tiny files (see module docstring)."""
    return tiny_model_paths["checkpoint"].parent

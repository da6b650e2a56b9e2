"""Session fixtures for the LoRA tests: the tiny models, loaded once (tests apply LoRAs to copies, or restore
what they patch in place), and their image. Helpers live in lora_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lora_helpers import image, load_tiny, networks

from sd35.pipeline.components import Components


@pytest.fixture(scope="session")
def base(tiny_models_dir: Path) -> Components:
    return load_tiny(tiny_models_dir)


@pytest.fixture(scope="session")
def models(base: Components) -> dict[str, torch.nn.Module]:
    return networks(base)


@pytest.fixture(scope="session")
def base_image(base: Components) -> torch.Tensor:
    return image(base)

"""diffusers' SD3Transformer2DModel holding the weights of one of our MMDiTX models (parity tests).

Importable from every test folder (`from diffusers_twin import diffusers_transformer`): pytest puts tests/,
the folder of the root conftest.py, on sys.path. diffusers is imported when the function runs, so a test
module may still `pytest.importorskip("diffusers")` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sd35.loading.diffusers_format import transformer_config
from sd35.models.mmditx import MMDiTX

if TYPE_CHECKING:
    from diffusers import SD3Transformer2DModel


def diffusers_transformer(model: MMDiTX, *, copy: bool = True) -> SD3Transformer2DModel:
    """diffusers' SD3Transformer2DModel (config from `transformer_config(model.config)`) in eval mode, with
    `model`'s weights converted from the official layout by diffusers' own single-file converter, so the key
    mapping is checked too. copy=False lets it share storage with `model` where the converter does not copy."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    state = model.state_dict()
    official = {f"model.diffusion_model.{k}": v.clone() if copy else v for k, v in state.items()}
    config = {k: v for k, v in transformer_config(model.config).items() if not k.startswith("_")}
    with torch.device("meta"):
        twin = SD3Transformer2DModel(**config)
    twin.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(official), strict=True, assign=True)
    return twin.eval()

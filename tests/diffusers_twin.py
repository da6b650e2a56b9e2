"""diffusers' SD3Transformer2DModel holding the weights of one of our MMDiTX models, and the latent-only
StableDiffusion3Pipeline around it with our Skip Layer Guidance as its arguments (parity tests, benchmarks).

Importable from every test folder (`from diffusers_twin import diffusers_transformer`): pytest puts tests/,
the folder of the root conftest.py, on sys.path. diffusers is imported when the function runs, so a test
module may still `pytest.importorskip("diffusers")` first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sd35.loading.diffusers_format import transformer_config
from sd35.models.mmditx import MMDiTX
from sd35.sampling.guidance import SkipLayerGuidance

if TYPE_CHECKING:
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline


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


def diffusers_pipeline(transformer: SD3Transformer2DModel | None) -> StableDiffusion3Pipeline:
    """StableDiffusion3Pipeline with only `transformer` and FlowMatchEulerDiscreteScheduler(shift=3.0) (sd35's
    euler / "normal" schedule): it takes prompt embeddings and returns latents (output_type="latent")."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    empty = dict.fromkeys(
        ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **empty
    )


def mmditx_call(twin: SD3Transformer2DModel) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """`twin` called as `MMDiTX.forward(x, timestep, pooled, context)` is: the velocity [B, 16, H, W]."""

    def call(x: Tensor, timestep: Tensor, pooled: Tensor, context: Tensor) -> Tensor:
        return twin(
            hidden_states=x,
            timestep=timestep,
            pooled_projections=pooled,
            encoder_hidden_states=context,
            return_dict=False,
        )[0]

    return call


def slg_kwargs(slg: SkipLayerGuidance | None) -> dict[str, object]:
    """StableDiffusion3Pipeline's skip-layer-guidance arguments for `slg`; none without it."""
    if slg is None:
        return {}
    return {
        "skip_guidance_layers": list(slg.layers),
        "skip_layer_guidance_scale": slg.scale,
        "skip_layer_guidance_start": slg.start,
        "skip_layer_guidance_stop": slg.end,
    }

"""LoRA nodes: LoraLoader and LoraLoaderModelOnly (ComfyUI `nodes.py`), reading the models root's `loras/`.

They return new MODEL/CLIP values (patched copies sharing every untouched tensor, `sd35.lora.patched_copy`);
their inputs are never changed, so a graph may use a model with and without a LoRA side by side. Both
strengths 0 pass the inputs through unread, as in ComfyUI. `components_with_loras` is the same
operation on a whole `Components` for `sd35 generate --lora`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sd35.lora import LoraSpec, apply_loras, parse_lora_arg
from sd35.lora.patch import Mode
from sd35.nodes.services import Services, file_key
from sd35.nodes.values import Clip
from sd35.pipeline.components import Components, DiffusionModel
from sd35.workflow import InputSpec, NodeRegistry, NodeSpec, OutputSpec

__all__ = ["components_with_loras", "lora_loader", "lora_loader_model_only", "parse_lora_arg", "register_lora_nodes"]

STRENGTH_RANGE = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}  # ComfyUI LoraLoader
# ComfyUI v0.3.64's /object_info text for both nodes (LoraLoaderModelOnly inherits LoraLoader's)
DESCRIPTION = (
    "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as "
    "applying styles. Multiple LoRA nodes can be linked together."
)


def components_with_loras(
    components: Components, specs: Sequence[LoraSpec], *, mode: Mode = "auto", inplace: bool = False
) -> Components:
    """`components` with the LoRAs applied to its MMDiT and text encoders (see `sd35.lora.apply_loras`)."""
    diffusion, text = apply_loras(components.diffusion, components.text, specs, mode=mode, inplace=inplace)
    return replace(components, diffusion=diffusion, text=text)


def lora_loader(
    services: Services,
    model: DiffusionModel | None,
    clip: Clip | None,
    lora_name: str,
    strength_model: float,
    strength_clip: float,
    **_: Any,
) -> tuple[DiffusionModel | None, Clip | None]:
    """MODEL and CLIP with the LoRA `lora_name` at these strengths (ComfyUI `LoraLoader.load_lora`)."""
    if strength_model == 0 and strength_clip == 0:
        return model, clip
    spec = LoraSpec(services.model_path("loras", lora_name), strength_model, strength_clip)
    diffusion, stack = apply_loras(model, clip.stack if clip is not None else None, [spec])
    return diffusion, (replace(clip, stack=stack) if clip is not None else None)


def lora_loader_model_only(
    services: Services, model: DiffusionModel | None, lora_name: str, strength_model: float, **_: Any
) -> tuple[DiffusionModel | None]:
    """MODEL with the LoRA's MMDiT part (its text-encoder part is checked, not applied)."""
    return (lora_loader(services, model, None, lora_name, strength_model, 0.0)[0],)


def _fingerprint(services: Services, lora_name: str) -> Any:
    """IS_CHANGED: the file's identity, so a replaced LoRA file is read again."""
    try:
        return list(file_key(services.model_path("loras", lora_name)))
    except Exception:  # noqa: BLE001 - a missing file is reported by the node itself
        return None


def _strength(name: str, tooltip: str | None = None) -> InputSpec:
    return InputSpec(name, "FLOAT", **STRENGTH_RANGE, tooltip=tooltip)  # type: ignore[arg-type]


def lora_specs(services: Services) -> list[NodeSpec]:
    def bind(fn: Any) -> Any:
        def call(**kwargs: Any) -> Any:
            kwargs.pop("context", None)
            return fn(services, **kwargs)

        return call

    loras = services.model_choices("loras")

    def fingerprint(lora_name: str, **_: Any) -> Any:
        return _fingerprint(services, lora_name)

    return [
        NodeSpec(
            "LoraLoader",
            inputs=(
                InputSpec("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
                InputSpec("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
                InputSpec("lora_name", "COMBO", choices_fn=loras, tooltip="The name of the LoRA."),
                _strength("strength_model", "How strongly to modify the diffusion model. This value can be negative."),
                _strength("strength_clip", "How strongly to modify the CLIP model. This value can be negative."),
            ),
            outputs=(
                OutputSpec("MODEL", tooltip="The modified diffusion model."),
                OutputSpec("CLIP", tooltip="The modified CLIP model."),
            ),
            function=bind(lora_loader),
            category="loaders",
            display_name="Load LoRA",
            description=DESCRIPTION,
            fingerprint=fingerprint,
        ),
        NodeSpec(
            "LoraLoaderModelOnly",
            inputs=(
                InputSpec("model", "MODEL"),
                InputSpec("lora_name", "COMBO", choices_fn=loras),
                _strength("strength_model"),
            ),
            # ComfyUI lists both of LoraLoader's output tooltips here (inherited); one output has one
            outputs=(OutputSpec("MODEL", tooltip="The modified diffusion model."),),
            function=bind(lora_loader_model_only),
            category="loaders",
            display_name="LoraLoaderModelOnly",
            description=DESCRIPTION,
            fingerprint=fingerprint,
        ),
    ]


def register_lora_nodes(registry: NodeRegistry, services: Services) -> None:
    """Add LoraLoader and LoraLoaderModelOnly, bound to `services`, to `registry`."""
    for spec in lora_specs(services):
        registry.register(spec)

"""ComfyUI-compatible nodes over the sd35 library: `build_registry(services)` gives a NodeRegistry with
ComfyUI's node names, inputs, defaults, ranges and outputs. Nothing is registered at import time."""

from __future__ import annotations

from sd35.nodes.conditioning import conditioning_specs
from sd35.nodes.image import image_specs
from sd35.nodes.latent import latent_specs
from sd35.nodes.loaders import loader_specs
from sd35.nodes.lora_nodes import lora_specs
from sd35.nodes.paths import Locations, ModelFolders, resolve_locations
from sd35.nodes.sampling import ksampler_specs
from sd35.nodes.services import ModelStore, Services
from sd35.workflow import NodeRegistry

__all__ = ["Locations", "ModelFolders", "ModelStore", "Services", "build_registry", "resolve_locations"]


def build_registry(services: Services) -> NodeRegistry:
    """Every node sd35 implements, bound to `services` (model folders, input/output folders, policy)."""
    specs = [
        *loader_specs(services),
        *conditioning_specs(),
        *latent_specs(services),
        *ksampler_specs(services),
        *image_specs(services),
        *lora_specs(services),
    ]
    return NodeRegistry(specs)

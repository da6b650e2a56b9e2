"""`generate --fp8`: the MMDiT's joint-block Linears quantized while loading equal quantizing after loading."""

from __future__ import annotations

from pathlib import Path

import torch

from sd35.pipeline.fastpath import FastPath, apply_fast_path_to
from sd35.pipeline.files import find_model_files, load_image_stack, preflight
from sd35.runtime.devices import DevicePolicy


def test_mmditx_quantized_while_loading_equals_quantized_after(tiny_models_dir: Path) -> None:
    pre = preflight(find_model_files(tiny_models_dir))
    policy = DevicePolicy()
    after, _ = load_image_stack(pre, policy)
    after, _ = apply_fast_path_to(after, policy, FastPath(fp8=True))
    during, _ = load_image_stack(pre, policy, fp8=True)
    during, _ = apply_fast_path_to(during, policy, FastPath(fp8=True))  # leaves the fp8 layers alone
    layers = {n: m for n, m in during.network.named_modules() if hasattr(m, "weight_scale")}
    assert layers and all(n.startswith("joint_blocks.") for n in layers)
    assert layers.keys() == {n for n, m in after.network.named_modules() if hasattr(m, "weight_scale")}
    for name, layer in layers.items():
        twin = after.network.get_submodule(name)
        assert torch.equal(layer.weight.view(torch.uint8), twin.weight.view(torch.uint8))
        assert torch.equal(layer.weight_scale, twin.weight_scale) and layer.fp8_compute and twin.fp8_compute
    config = during.network.config
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 16, 8, 8, generator=g), torch.tensor([600.0])
    y, ctx = torch.randn(1, config.adm_in_channels, generator=g), torch.randn(1, 9, config.context_in_dim, generator=g)
    with torch.no_grad():
        assert torch.equal(during.network(x, t, y, ctx), after.network(x, t, y, ctx))

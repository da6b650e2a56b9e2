"""Applying LoRAs: strength 0 is no LoRA, several LoRAs add, stacking copies composes, removal restores the
weights bit for bit, on-the-fly equals merged, fp8 weights stay untouched in auto mode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lora_helpers import comfyui, hand_merged, image, kohya, random_deltas, save

from sd35.lora import (
    Entry,
    LoraPatcher,
    LoraSpec,
    apply_loras,
    apply_to_networks,
    patched_copy,
    read_lora,
    resolve,
)
from sd35.lora.patch import TERM_NAME

TARGETS = {
    "mmditx": ["joint_blocks.0.x_block.attn.qkv", "joint_blocks.1.x_block.attn2.proj", "final_layer.linear"],
    "clip_g": ["text_model.encoder.layers.0.mlp.fc1"],
    "t5xxl": ["encoder.block.1.layer.0.SelfAttention.o"],
}


@pytest.fixture(scope="module")
def two_loras(models, tmp_path_factory: pytest.TempPathFactory):
    """Two files touching overlapping weights: (path_a, deltas_a, path_b, deltas_b)."""
    folder = tmp_path_factory.mktemp("two")
    a = random_deltas(models, TARGETS, seed=11)
    b = random_deltas(models, {"mmditx": [*TARGETS["mmditx"][:1], "joint_blocks.2.x_block.mlp.fc2"]}, seed=12)
    return save(folder / "a.safetensors", kohya(a)), a, save(folder / "b.safetensors", comfyui(b)), b


def _max_diff(patched: dict, expected: dict) -> float:
    return max(
        (patched[c].get_parameter(n) - w).abs().max().item()
        for c, params in expected.items()
        for n, w in params.items()
    )


def _snapshot(models: dict) -> dict[str, dict[str, torch.Tensor]]:
    return {c: {n: p.detach().clone() for n, p in m.named_parameters()} for c, m in models.items()}


def _bit_exact(models: dict, snapshot: dict) -> bool:
    return all(torch.equal(p, snapshot[c][n]) for c, m in models.items() for n, p in m.named_parameters())


def test_strength_zero_is_no_lora(models, base, base_image, two_loras) -> None:
    path_a = two_loras[0]
    patched = apply_to_networks(models, [LoraSpec(path_a, 0.0, 0.0)])
    assert all(patched[c] is models[c] for c in models)  # nothing to apply: the inputs themselves
    diffusion, text = apply_loras(base.diffusion, base.text, [LoraSpec(path_a, 0.0, 0.0)])
    assert diffusion is base.diffusion and text is base.text
    assert image(base).equal(base_image)
    snapshot = _snapshot(models)
    lora = resolve(read_lora(path_a), models)
    with LoraPatcher(models["mmditx"]).apply([Entry(lora.for_component("mmditx"), 0.0)]):
        assert _bit_exact(models, snapshot)


class _Scaled:
    """A hand delta times a strength (so one hand_merged call sums several LoRAs)."""

    def __init__(self, delta, strength: float):  # noqa: ANN001
        self.component, self.module, self.delta, self.strength = delta.component, delta.module, delta, strength

    def dense(self, shape: torch.Size) -> torch.Tensor:
        return self.strength * self.delta.dense(shape)


def test_two_loras_add(models, two_loras) -> None:
    path_a, a, path_b, b = two_loras
    specs = [LoraSpec(path_a, 0.9, 0.4), LoraSpec(path_b, -0.5, 1.0)]
    by_hand = [_Scaled(d, 0.9 if d.component == "mmditx" else 0.4) for d in a] + [_Scaled(d, -0.5) for d in b]
    expected = hand_merged(models, by_hand)
    together = apply_to_networks(models, specs)
    assert _max_diff(together, expected) <= 1e-6
    # LoraLoader chained twice = one call with both: rebuilt from the original, bit-identical
    chained = apply_to_networks(apply_to_networks(models, specs[:1]), specs[1:])
    for c, m in together.items():
        for n, p in m.named_parameters():
            assert torch.equal(p, chained[c].get_parameter(n)), (c, n)
    assert chained["mmditx"].lora_origin.base is models["mmditx"]


@pytest.mark.parametrize("mode", ["merge", "on_the_fly"])
def test_unloading_restores_bit_exact(models, two_loras, mode: str) -> None:
    path_a, _, path_b, _ = two_loras
    snapshot = _snapshot(models)
    loras = [resolve(read_lora(p), models) for p in (path_a, path_b)]
    patchers = {}
    for c in ("mmditx", "clip_g", "t5xxl"):
        entries = [Entry(lora.for_component(c), s) for lora, s in zip(loras, (1.0, 0.7), strict=True)]
        patchers[c] = LoraPatcher(models[c]).apply(entries, mode)
    changed = not _bit_exact(models, snapshot)
    assert changed == (mode == "merge")  # on the fly never writes the weights
    x = torch.randn(1, 16, 8, 8), torch.tensor([300.0]), torch.randn(1, 320), torch.randn(1, 4, 384)
    with torch.no_grad():
        patched_out = models["mmditx"](*x)
        for patcher in patchers.values():
            patcher.restore()
        restored_out = models["mmditx"](*x)
        both = [Entry(lora.for_component("mmditx"), s) for lora, s in zip(loras, (1.0, 0.7), strict=True)]
        merged_copy_out = patched_copy(models["mmditx"], both, "merge")(*x)
    assert _bit_exact(models, snapshot)
    assert not any(hasattr(m, TERM_NAME) for net in models.values() for m in net.modules())
    assert (patched_out - restored_out).abs().max() > 1e-3  # the LoRA did something
    assert (patched_out - merged_copy_out).abs().max().item() <= 1e-5


def test_on_the_fly_copy_equals_merged_copy(models, two_loras) -> None:
    path_a = two_loras[0]
    lora = resolve(read_lora(path_a), models)
    entries = [Entry(lora.for_component("mmditx"), 0.8)]
    merged, fly = (
        patched_copy(models["mmditx"], entries, "merge"),
        patched_copy(models["mmditx"], entries, "on_the_fly"),
    )
    assert all(p is q for p, q in zip(fly.parameters(), models["mmditx"].parameters(), strict=True))
    assert fly.state_dict().keys() == models["mmditx"].state_dict().keys()
    x = torch.randn(2, 16, 8, 8), torch.tensor([700.0, 20.0]), torch.randn(2, 320), torch.randn(2, 5, 384)
    with torch.no_grad():
        assert (merged(*x) - fly(*x)).abs().max().item() <= 1e-5


def test_fp8_weights_stay_untouched_in_auto_mode(models, two_loras) -> None:
    path_a = two_loras[0]
    t5 = models["t5xxl"]
    lora = resolve(read_lora(path_a), {"t5xxl": t5})
    (patch,) = lora.for_component("t5xxl")
    stored = t5.get_submodule(patch.param.removesuffix(".weight")).weight.detach().to(torch.float8_e4m3fn)
    holder = torch.nn.Module()
    holder.add_module("layer", torch.nn.Linear(stored.shape[1], stored.shape[0], bias=False))
    holder.layer.weight = torch.nn.Parameter(stored.clone(), requires_grad=False)
    moved = replace(patch, param="layer.weight")
    auto = patched_copy(holder, [Entry((moved,), 0.5)], "auto")
    assert torch.equal(auto.layer.weight.view(torch.uint8), stored.view(torch.uint8))  # fp8 bits untouched
    term = getattr(auto.layer, TERM_NAME)
    x = torch.randn(3, stored.shape[1])
    delta = patch.adapter.delta()
    assert (term(x).float() - 0.5 * x @ delta.T).abs().max().item() <= 0.05  # the term runs in bf16
    merged = patched_copy(holder, [Entry((moved,), 0.5)], "merge")
    assert not torch.equal(merged.layer.weight.view(torch.uint8), stored.view(torch.uint8))


def test_bias_and_full_diffs(models, tmp_path: Path) -> None:
    """ComfyUI's `.diff` (a full ΔW, here on a 1-D RMSNorm weight) and `.diff_b` (a bias ΔW)."""
    g = torch.Generator().manual_seed(9)
    mmdit = models["mmditx"]
    ln_q = mmdit.joint_blocks[1].context_block.attn.ln_q.weight
    bias = mmdit.joint_blocks[0].x_block.attn.proj.bias
    tensors = {
        "diffusion_model.joint_blocks.1.context_block.attn.ln_q.diff": torch.randn(ln_q.shape, generator=g),
        "diffusion_model.joint_blocks.0.x_block.attn.proj.diff_b": torch.randn(bias.shape, generator=g),
    }
    path = save(tmp_path / "diff.safetensors", tensors)
    assert read_lora(path).kinds == ("diff",)
    patched = apply_to_networks(models, [LoraSpec(path, 0.5)])["mmditx"]
    got_ln = patched.joint_blocks[1].context_block.attn.ln_q.weight
    got_bias = patched.joint_blocks[0].x_block.attn.proj.bias
    assert (
        got_ln - (ln_q + 0.5 * tensors["diffusion_model.joint_blocks.1.context_block.attn.ln_q.diff"])
    ).abs().max() <= 1e-6
    assert (
        got_bias - (bias + 0.5 * tensors["diffusion_model.joint_blocks.0.x_block.attn.proj.diff_b"])
    ).abs().max() <= 1e-6
    fly = apply_to_networks(models, [LoraSpec(path, 0.5)], mode="on_the_fly")["mmditx"]
    x = torch.randn(4, bias.shape[0])
    with torch.no_grad():
        want = patched.joint_blocks[0].x_block.attn.proj(x)
        assert (fly.joint_blocks[0].x_block.attn.proj(x) - want).abs().max().item() <= 1e-5

"""Conditioning nodes: values computed as ComfyUI's nodes compute them, and the official workflow's
timestep-ranged negative selecting the same entries per step as ComfyUI (measured there)."""

from __future__ import annotations

import pytest
import torch

from sd35.errors import UserInputError
from sd35.nodes.conditioning import (
    clip_text_encode,
    clip_text_encode_sd3,
    conditioning_average,
    conditioning_combine,
    conditioning_concat,
    conditioning_set_timestep_range,
    conditioning_zero_out,
)
from sd35.nodes.loaders import triple_clip_loader
from sd35.pipeline.conditioning import CondEntry, active_entries
from sd35.sampling.schedule import ModelSampling, get_sigmas
from sd35.types import Conditioning


def _entry(seed: int, tokens: int = 5, start: float = 0.0, end: float = 1.0) -> CondEntry:
    g = torch.Generator().manual_seed(seed)
    cond = Conditioning(torch.randn(1, tokens, 8, generator=g), torch.randn(1, 4, generator=g))
    return CondEntry(cond, start, end)


def test_zero_out_keeps_ranges_and_zeroes_both_tensors() -> None:
    (out,) = conditioning_zero_out((_entry(0, start=0.2, end=0.7),))
    assert out[0].start_percent == 0.2 and out[0].end_percent == 0.7
    assert not out[0].conditioning.context.any() and not out[0].conditioning.pooled.any()
    assert out[0].conditioning.context.shape == (1, 5, 8)


def test_combine_keeps_every_entry_in_order() -> None:
    a, b, c = _entry(0), _entry(1), _entry(2)
    (out,) = conditioning_combine((a, b), (c,))
    assert out == (a, b, c)


def test_concat_appends_the_first_from_context_on_tokens() -> None:
    to = (_entry(0, 5, 0.1, 0.9), _entry(1, 3))
    source = (_entry(2, 4), _entry(3, 6))  # only the first is used (ComfyUI warns)
    (out,) = conditioning_concat(to, source)
    assert [e.conditioning.context.shape[1] for e in out] == [9, 7]
    assert torch.equal(out[0].conditioning.context[:, 5:], source[0].conditioning.context)
    assert torch.equal(out[0].conditioning.pooled, to[0].conditioning.pooled)
    assert (out[0].start_percent, out[0].end_percent) == (0.1, 0.9)


@pytest.mark.parametrize(("to_tokens", "from_tokens"), [(5, 3), (3, 5), (4, 4)])
def test_average_blends_cut_or_zero_padded_context_and_pooled(to_tokens: int, from_tokens: int) -> None:
    to, source = _entry(0, to_tokens), _entry(1, from_tokens)
    (out,) = conditioning_average((to,), (source,), 0.25)
    expected_from = torch.zeros(1, to_tokens, 8)
    n = min(to_tokens, from_tokens)
    expected_from[:, :n] = source.conditioning.context[:, :n]
    context = to.conditioning.context * 0.25 + expected_from * 0.75
    pooled = to.conditioning.pooled * 0.25 + source.conditioning.pooled * 0.75
    assert torch.allclose(out[0].conditioning.context, context, atol=1e-7)
    assert torch.allclose(out[0].conditioning.pooled, pooled, atol=1e-7)


def test_official_negative_switches_to_zeros_after_step_8_of_40() -> None:
    """ComfyUI measured (docs comfyui.md §1): shift 3, 40 steps, sgm_uniform → steps 0–8 use the empty-prompt
    negative, steps 9–39 the zeroed one. Built here exactly as the workflow's nodes 67–71 build it."""
    empty = (_entry(0),)
    (zeroed,) = conditioning_zero_out(empty)
    (late,) = conditioning_set_timestep_range(zeroed, 0.2, 1.0)
    (early,) = conditioning_set_timestep_range(empty, 0.0, 0.2)
    (negative,) = conditioning_combine(late, early)
    ms = ModelSampling(shift=3.0)
    sigmas = get_sigmas("sgm_uniform", 40, ms)
    kinds = []
    for sigma in sigmas[:-1].tolist():
        active = active_entries(negative, sigma, ms)
        assert len(active) == 1
        kinds.append("zero" if not active[0].conditioning.context.any() else "empty")
    assert kinds == ["empty"] * 9 + ["zero"] * 31


def test_clip_text_encode_with_no_clip_raises_comfyuis_message() -> None:
    with pytest.raises(UserInputError, match="clip input is invalid: None"):
        clip_text_encode(None, "a cat")
    with pytest.raises(UserInputError, match="clip input is invalid: None"):
        clip_text_encode_sd3(None, "a", "b", "c", "none")


def test_clip_text_encode_sd3_matches_clip_text_encode_and_pads_as_comfyui(services) -> None:
    (clip,) = triple_clip_loader(services, "clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors")
    text = "a (glass:1.2) bottle, purple galaxy"
    (plain,) = clip_text_encode(clip, text)
    (per_encoder,) = clip_text_encode_sd3(clip, text, text, text, "empty_prompt")
    assert torch.equal(plain[0].conditioning.context, per_encoder[0].conditioning.context)
    assert torch.equal(plain[0].conditioning.pooled, per_encoder[0].conditioning.pooled)
    assert plain[0].conditioning.context.shape[1] == 154  # 77 CLIP rows + 77 T5 rows
    # "none": an empty field sends no tokens; ComfyUI's encoder then runs T5 on the bare end token alone
    # (gen_empty_tokens of length 0) and appends that one row: 77 + 1
    (no_t5,) = clip_text_encode_sd3(clip, text, text, "", "none")
    assert no_t5[0].conditioning.context.shape[1] == 78
    assert torch.equal(no_t5[0].conditioning.context[:, :77], plain[0].conditioning.context[:, :77])
    (padded,) = clip_text_encode_sd3(clip, text, text, "", "empty_prompt")
    assert padded[0].conditioning.context.shape[1] == 154

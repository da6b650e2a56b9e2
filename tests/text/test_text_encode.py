"""Conditioning assembly on tiny random encoders: layout, ComfyUI's weighting formula, missing encoders, cache."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from sd35.errors import CheckpointError, UserInputError
from sd35.models.clip import CLIPTextModel
from sd35.models.configs import CLIP_G, TINY_CLIP_G, TINY_CLIP_L, TINY_MMDITX, TINY_T5
from sd35.models.t5 import T5Encoder
from sd35.nn.init import randomize_
from sd35.text.encode import ConditioningCache, TextEncoders, encode_prompt
from sd35.text.prompt import tokenize_prompt, tokenize_sd3

CTX, POOLED = TINY_MMDITX.context_in_dim, TINY_MMDITX.adm_in_channels  # 384, 320
LW, GW = TINY_CLIP_L.hidden_size, TINY_CLIP_G.hidden_size  # 128, 192


@pytest.fixture(scope="module")
def models():
    return (
        randomize_(CLIPTextModel(TINY_CLIP_L), 1).eval(),
        randomize_(CLIPTextModel(TINY_CLIP_G), 2).eval(),
        randomize_(T5Encoder(TINY_T5), 3).eval(),
    )


def encoders(models, l=True, g=True, t5=True) -> TextEncoders:  # noqa: E741
    clip_l, clip_g, t5_model = models
    return TextEncoders(
        clip_l if l else None, clip_g if g else None, t5_model if t5 else None, context_dim=CTX, pooled_dim=POOLED
    )


@torch.no_grad()
def run_clip(model, rows):
    out = model(torch.tensor(rows))
    return out.hidden.float(), out.pooled.float()


@torch.no_grad()
def run_t5(model, rows):
    return model(torch.tensor(rows)).float()


def test_short_prompt_layout_and_contents(models, tokenizers) -> None:
    tokens = tokenize_prompt(tokenizers, "a photo of a cat")
    cond = encode_prompt(encoders(models), tokens)
    assert cond.context.shape == (1, 154, CTX) and cond.pooled.shape == (1, POOLED)
    l_hidden, l_pooled = run_clip(models[0], tokens.clip_l.ids)
    g_hidden, g_pooled = run_clip(models[1], tokens.clip_g.ids)
    t5 = run_t5(models[2], tokens.t5.ids)
    ctx = cond.context[0]
    assert (ctx[:77, :LW] - l_hidden[0]).abs().max() == 0
    assert (ctx[:77, LW : LW + GW] - g_hidden[0]).abs().max() == 0
    assert ctx[:77, LW + GW :].abs().max() == 0  # zero-padded to the context width
    assert (ctx[77:] - t5[0]).abs().max() == 0
    assert torch.equal(cond.pooled, torch.cat([l_pooled, g_pooled], dim=-1))
    assert cond.context.dtype == torch.float32


def test_long_prompt_uses_every_chunk(models, tokenizers) -> None:
    tokens = tokenize_prompt(tokenizers, " ".join(["a photo of a cat"] * 60))  # 300 CLIP, 420 T5 tokens
    assert len(tokens.clip_l.chunks) == 4 and tokens.t5.count == 420 and tokens.warnings
    cond = encode_prompt(encoders(models), tokens)
    assert cond.context.shape == (1, 77 * 4 + 421, CTX)
    l_hidden, l_pooled = run_clip(models[0], tokens.clip_l.ids)
    g_hidden, g_pooled = run_clip(models[1], tokens.clip_g.ids)
    for k in range(4):
        assert (cond.context[0, 77 * k : 77 * (k + 1), :LW] - l_hidden[k]).abs().max() < 1e-6
        assert (cond.context[0, 77 * k : 77 * (k + 1), LW : LW + GW] - g_hidden[k]).abs().max() < 1e-6
    assert (cond.context[0, 308:] - run_t5(models[2], tokens.t5.ids)[0]).abs().max() < 1e-5
    # pooled comes from the first chunk only (ComfyUI first_pooled)
    assert (cond.pooled - torch.cat([l_pooled[:1], g_pooled[:1]], dim=-1)).abs().max() < 1e-6


def test_empty_prompt(models, tokenizers) -> None:
    tokens = tokenize_prompt(tokenizers, "")
    cond = encode_prompt(encoders(models), tokens)
    assert cond.context.shape == (1, 154, CTX)
    g_hidden, _ = run_clip(models[1], [[49406, 49407] + [0] * 75])
    assert (cond.context[0, :77, LW : LW + GW] - g_hidden[0]).abs().max() == 0
    assert (cond.context[0, 77:] - run_t5(models[2], [[1] + [0] * 76])[0]).abs().max() == 0


def test_weighted_prompt_follows_comfyui_formula(models, tokenizers) -> None:
    text = "a (photo:1.5) of ((a cat)), (dog:0.25)"
    tokens = tokenize_prompt(tokenizers, text)
    cond = encode_prompt(encoders(models), tokens)
    plain = encode_prompt(encoders(models), tokenize_prompt(tokenizers, "a photo of a cat, dog"))

    def by_hand(hidden_rows, empty_row, weights):
        # z[j] = (z[j] - z_empty[j]) * w + z_empty[j] for each token whose weight is not 1 (sd1_clip.py)
        z = hidden_rows[0].clone()
        for j, w in enumerate(weights):
            if w != 1.0:
                z[j] = (hidden_rows[0][j] - empty_row[j]) * w + empty_row[j]
        return z

    l_rows, l_pooled = run_clip(models[0], tokens.clip_l.ids + [[49406] + [49407] * 76])
    g_rows, g_pooled = run_clip(models[1], tokens.clip_g.ids + [[49406, 49407] + [0] * 75])
    n_t5 = len(tokens.t5.ids[0])
    t5_rows = run_t5(models[2], tokens.t5.ids + [[1] + [0] * (n_t5 - 1)])
    expect_l = by_hand(l_rows, l_rows[1], tokens.clip_l.chunks[0].weights)
    expect_g = by_hand(g_rows, g_rows[1], tokens.clip_g.chunks[0].weights)
    expect_t5 = by_hand(t5_rows, t5_rows[1], tokens.t5.chunks[0].weights)
    ctx = cond.context[0]
    assert (ctx[:77, :LW] - expect_l).abs().max() < 1e-6
    assert (ctx[:77, LW : LW + GW] - expect_g).abs().max() < 1e-6
    assert (ctx[77:] - expect_t5).abs().max() < 1e-6
    assert (cond.pooled - torch.cat([l_pooled[:1], g_pooled[:1]], -1)).abs().max() < 1e-6  # pooled: unweighted
    weights = tokens.clip_l.chunks[0].weights
    assert {1.5, 1.1 * 1.1, 0.25} <= set(weights)
    changed = [j for j, w in enumerate(weights) if w != 1.0]
    assert (cond.context[0, changed, :LW] - plain.context[0, changed, :LW]).abs().max() > 1e-2
    unchanged = [j for j, w in enumerate(weights) if w == 1.0]
    assert torch.equal(cond.context[0, unchanged, :LW], l_rows[0][unchanged])


@pytest.mark.parametrize("missing", ["l", "g", "t5", "lg", "lt5", "gt5"])
def test_missing_encoders(models, tokenizers, missing) -> None:
    tokens = tokenize_prompt(tokenizers, " ".join(["cat"] * 80))  # 2 CLIP chunks, 81 T5 rows
    full = encode_prompt(encoders(models), tokens)
    cond = encode_prompt(encoders(models, l="l" not in missing, g="g" not in missing, t5="t5" not in missing), tokens)
    clip_rows = 0 if missing in ("lg",) else 154
    t5_rows = 0 if "t5" in missing else 81
    if missing == "lg":  # ComfyUI: no CLIP features at all, only the T5 rows; pooled zeros
        assert cond.context.shape == (1, 81, CTX)
    else:
        assert cond.context.shape == (1, clip_rows + t5_rows, CTX)
    assert cond.pooled.shape == (1, POOLED)
    ctx, fctx = cond.context[0], full.context[0]
    if "l" in missing:
        assert cond.pooled[0, :LW].abs().max() == 0
        if "g" not in missing:
            assert ctx[:154, :LW].abs().max() == 0  # G features after CLIP-L's (zero) columns
            assert torch.equal(ctx[:154, LW : LW + GW], fctx[:154, LW : LW + GW])
    else:
        assert torch.equal(ctx[:154, :LW], fctx[:154, :LW])
        assert torch.equal(cond.pooled[0, :LW], full.pooled[0, :LW])
    if "g" in missing:
        assert cond.pooled[0, LW:].abs().max() == 0
        if "l" not in missing:
            assert ctx[:154, LW:].abs().max() == 0
    if "t5" not in missing:
        assert torch.equal(ctx[-81:], fctx[-81:])


def test_no_encoder_is_a_clear_error(tokenizers) -> None:
    with pytest.raises(UserInputError, match="no text encoder"):
        encode_prompt(TextEncoders(context_dim=CTX, pooled_dim=POOLED), tokenize_prompt(tokenizers, "cat"))


def test_widths(models) -> None:
    assert encoders(models).widths() == (LW, GW)
    assert sum(TextEncoders(t5=models[2], context_dim=CTX, pooled_dim=POOLED).widths()) == POOLED  # all zeros
    assert TextEncoders(clip_g=models[1], context_dim=CTX, pooled_dim=POOLED).widths() == (LW, GW)
    assert TextEncoders().widths() == (768, 1280)  # standard SD3 widths when nothing tells otherwise
    assert TextEncoders(clip_g=CLIPTextModel(CLIP_G, device="meta")).widths() == (768, 1280)
    with pytest.raises(CheckpointError, match="pooled_dim"):
        TextEncoders(clip_l=models[0], t5=models[2], context_dim=CTX)
    with pytest.raises(CheckpointError, match="T5 width"):
        TextEncoders(t5=models[2])  # 384-wide T5 for a 4096 context
    assert TextEncoders(clip_l=models[0], clip_g=models[1], context_dim=CTX).widths() == (LW, GW)


def test_comfyui_empty_rows_from_clip_text_encode_sd3(models, tokenizers) -> None:
    nothing = tokenize_sd3(tokenizers, "", "", "", empty_padding="none")
    cond = encode_prompt(encoders(models), nothing)
    assert cond.context.shape == (1, 1, CTX)  # T5 encodes just [EOS]; no CLIP rows
    assert (cond.context[0] - run_t5(models[2], [[1]])[0]).abs().max() == 0
    assert cond.pooled.abs().max() == 0
    cond = encode_prompt(encoders(models, t5=False), nothing)
    assert cond.context.shape == (1, 77, CTX) and cond.context.abs().max() == 0


def test_too_long_prompt_is_refused_before_encoding(models, tokenizers) -> None:
    tokens = tokenize_prompt(tokenizers, " ".join(["cat"] * 2100))
    with pytest.raises(UserInputError, match="too long"):
        encode_prompt(encoders(models), tokens)


def test_cache_encodes_a_prompt_once(models, tokenizers) -> None:
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in models]
    try:
        cache = ConditioningCache()
        first = cache.encode(encoders(models), tokenizers, "a photo of a cat")
        assert len(calls) == 3 and (cache.hits, cache.misses) == (0, 1)
        again = cache.encode(encoders(models), tokenizers, "a  photo of a cat")  # same tokens, new TextEncoders
        assert again is first and len(calls) == 3 and cache.hits == 1
        other = cache.encode(encoders(models), tokenizers, "a dog")
        assert len(calls) == 6 and other is not first
        assert cache.encode(encoders(models, t5=False), tokenizers, "a dog") is not other  # other encoders
        # weights changed in place: the old entry must not be used
        with torch.no_grad():
            models[0].text_model.final_layer_norm.weight.mul_(2.0)
        changed = cache.encode(encoders(models), tokenizers, "a photo of a cat")
        assert changed is not first and not torch.equal(changed.conditioning.pooled, first.conditioning.pooled)
        with torch.no_grad():
            models[0].text_model.final_layer_norm.weight.div_(2.0)
    finally:
        for h in hooks:
            h.remove()
    long = cache.encode(encoders(models), tokenizers, " ".join(["cat"] * 300))
    assert long.warnings and "300 T5 tokens" in long.warnings[0]


def test_cache_holds_no_strong_reference_and_is_bounded(tokenizers) -> None:
    t5 = randomize_(T5Encoder(TINY_T5), 4)
    ref = weakref.ref(t5)
    cache = ConditioningCache(max_entries=2)
    for prompt in ("a", "b", "c"):
        cache.encode(TextEncoders(t5=t5, context_dim=CTX, pooled_dim=POOLED), tokenizers, prompt)
    assert len(cache) == 2
    del t5
    gc.collect()
    assert ref() is None

"""Parity of CLIPTextModel / T5Encoder with transformers on one shared random state dict (CPU, fp32).

CLIP is compared with transformers' eager attention (an independent softmax). For T5 the fp32 rounding of
the attention itself is ~1e-5 at these sizes (both implementations, measured against fp64), so the fp32
check uses transformers' SDPA path and the eager path is compared in fp64.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers

from sd35.errors import UserInputError
from sd35.models.clip import EOS_TOKEN_ID, CLIPTextModel
from sd35.models.configs import CLIP_L, TINY_CLIP_G, TINY_CLIP_L, TINY_T5, CLIPTextConfig, T5Config
from sd35.models.t5 import T5Encoder, relative_position_bucket
from sd35.nn.init import randomize_

TOL = 1e-5  # fp32 max abs diff
BOS = 49406


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _hf_clip(config: CLIPTextConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    hf_config = transformers.CLIPTextConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        projection_dim=config.projection_dim,
        # not the legacy 2: pooled = first position equal to the EOS id, the same token as our argmax
        eos_token_id=EOS_TOKEN_ID,
        bos_token_id=BOS,
        attention_dropout=0.0,
    )
    hf_config._attn_implementation = "eager"
    model = transformers.CLIPTextModelWithProjection(hf_config).eval()
    model.load_state_dict(state, strict=True)
    return model


def _clip_ids(lengths: list[int], pad: int, seed: int) -> torch.Tensor:
    """[BOS, random words..., EOS, pad...] rows of 77; `lengths` = number of words per row."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        words = torch.randint(1, BOS, (n,), generator=generator).tolist()
        rows.append([BOS, *words, EOS_TOKEN_ID] + [pad] * (75 - n))
    return torch.tensor(rows)


def _check_clip(config: CLIPTextConfig, pad: int) -> tuple[float, float]:
    ours = randomize_(CLIPTextModel(config), seed=1).eval()
    hf = _hf_clip(config, ours.state_dict())
    ids = _clip_ids([5, 40, 75], pad=pad, seed=2)
    with torch.no_grad():
        out = ours(ids)
        ref = hf(ids, output_hidden_states=True)
    ref_pooled = ref.text_embeds if config.project_pooled else ref.last_hidden_state[torch.arange(3), [6, 41, 76]]
    if not config.project_pooled:
        assert _max_diff(ref_pooled, hf.text_model(ids).pooler_output) == 0.0  # HF pooler = our EOS pick
    hidden_diff = _max_diff(out.hidden, ref.hidden_states[-2])
    pooled_diff = _max_diff(out.pooled, ref_pooled)
    assert hidden_diff <= TOL and pooled_diff <= TOL, (hidden_diff, pooled_diff)
    # not trivially equal to the final-normed or projected states
    assert _max_diff(out.hidden, ref.last_hidden_state) > 0.1
    return hidden_diff, pooled_diff


def test_clip_l_tiny_matches_transformers() -> None:
    """CLIP-L: quick_gelu, rows padded with EOS (49407), pooled unprojected (= HF pooler_output)."""
    _check_clip(TINY_CLIP_L, pad=EOS_TOKEN_ID)


def test_clip_g_tiny_matches_transformers() -> None:
    """CLIP-G: erf gelu, rows padded with 0, pooled = text_projection(EOS state) (= HF text_embeds)."""
    _check_clip(TINY_CLIP_G, pad=0)


def test_clip_l_real_width_matches_transformers() -> None:
    """CLIP-L at its real width (768, 12 heads) on 3 layers."""
    _check_clip(dataclasses.replace(CLIP_L, num_layers=3), pad=EOS_TOKEN_ID)


def test_clip_state_dict_keys() -> None:
    keys = set(CLIPTextModel(TINY_CLIP_G, device="meta").state_dict())
    assert "text_model.embeddings.position_ids" not in keys
    assert {"text_projection.weight", "text_model.final_layer_norm.bias"} <= keys
    assert "text_model.encoder.layers.2.self_attn.out_proj.weight" in keys
    no_proj = CLIPTextModel(dataclasses.replace(TINY_CLIP_L, projection_dim=None), device="meta")
    assert not any(k.startswith("text_projection") for k in no_proj.state_dict())


def test_clip_meta_build_then_assign_load() -> None:
    """The loader's path: build on meta, strict load with assign=True, run."""
    source = randomize_(CLIPTextModel(TINY_CLIP_L), seed=3).eval()
    model = CLIPTextModel(TINY_CLIP_L, device="meta")
    model.load_state_dict(source.state_dict(), strict=True, assign=True)
    ids = _clip_ids([3], pad=EOS_TOKEN_ID, seed=4)
    with torch.no_grad():
        assert torch.equal(model(ids).pooled, source(ids).pooled)


def test_clip_rejects_too_many_tokens() -> None:
    with pytest.raises(UserInputError):
        CLIPTextModel(TINY_CLIP_L, device="meta")(torch.zeros(1, 78, dtype=torch.long))


def _hf_t5(config: T5Config, state: dict[str, torch.Tensor], attention: str) -> torch.nn.Module:
    hf_config = transformers.T5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=64,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        dropout_rate=0.0,
        layer_norm_epsilon=config.layer_norm_eps,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )
    hf_config._attn_implementation = attention
    model = transformers.T5EncoderModel(hf_config).eval()
    model.load_state_dict({**state, "shared.weight": state["encoder.embed_tokens.weight"]}, strict=True)
    return model


def _t5_ids(length: int) -> torch.Tensor:
    """Two rows; row 0 = 20 tokens, EOS (1), then 0-padding that is attended (no mask, sd3.5 `T5XXLModel`)."""
    ids = torch.randint(2, TINY_T5.vocab_size, (2, length), generator=torch.Generator().manual_seed(6))
    ids[0, 20] = 1
    ids[0, 21:] = 0
    return ids


@pytest.mark.parametrize("length", [77, 300])
def test_t5_tiny_matches_transformers(length: int) -> None:
    """fp32 vs transformers (SDPA); 300 tokens reach relative distances > 128 (the last, shared buckets)."""
    ours = randomize_(T5Encoder(TINY_T5), seed=5).eval()
    hf = _hf_t5(TINY_T5, ours.state_dict(), attention="sdpa")
    ids = _t5_ids(length)
    with torch.no_grad():
        out = ours(ids)
        ref = hf(input_ids=ids).last_hidden_state
    diff = _max_diff(out, ref)
    assert diff <= TOL, diff
    assert out.abs().max() > 0.5


def test_t5_tiny_matches_transformers_eager_fp64() -> None:
    """fp64 vs transformers' eager attention (explicit unscaled q·k + bias, softmax), 300 tokens.

    transformers keeps the RMSNorm statistics in fp32 even in fp64, which bounds the agreement (~3e-6).
    """
    ours = randomize_(T5Encoder(TINY_T5), seed=5).eval().double()
    hf = _hf_t5(TINY_T5, ours.state_dict(), attention="eager").double()
    ids = _t5_ids(300)
    with torch.no_grad():
        diff = _max_diff(ours(ids), hf(input_ids=ids).last_hidden_state)
    assert diff <= TOL, diff


def test_t5_relative_buckets_match_transformers() -> None:
    relative = torch.arange(-600, 601)
    ours = relative_position_bucket(relative, 32, 128)
    ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(relative, True, 32, 128)
    assert torch.equal(ours, ref)
    assert ours.min() == 0 and ours.max() == 31


def test_t5_bf16_large_activations_stay_finite() -> None:
    """Residuals beyond the fp16 range (65504) run in bf16, finite and close to fp32."""
    ref_model = randomize_(T5Encoder(TINY_T5), seed=7).eval()
    with torch.no_grad():
        ref_model.encoder.embed_tokens.weight.mul_(4e5)
    residual_peak = []
    hook = ref_model.encoder.final_layer_norm.register_forward_hook(
        lambda _m, inputs, _o: residual_peak.append(inputs[0].abs().max().item())
    )
    ids = torch.randint(0, TINY_T5.vocab_size, (1, 100), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = ref_model(ids)
        hook.remove()
        out = T5Encoder(TINY_T5, dtype=torch.bfloat16).eval()
        out.load_state_dict(ref_model.state_dict())
        result = out(ids)
    assert residual_peak[0] > 65504 * 2
    assert result.dtype == torch.bfloat16 and torch.isfinite(result).all()
    assert _max_diff(result.float(), ref) <= 0.05 * ref.abs().max().item()


def test_t5_rejects_fp16() -> None:
    with pytest.raises(UserInputError, match="bfloat16"):
        T5Encoder(TINY_T5, device="meta", dtype=torch.float16)
    model = T5Encoder(TINY_T5).to(torch.float16)
    with pytest.raises(UserInputError, match="bfloat16"):
        model(torch.zeros(1, 4, dtype=torch.long))


def test_t5_state_dict_keys() -> None:
    keys = set(T5Encoder(TINY_T5, device="meta").state_dict())
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in keys
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in keys
    assert "encoder.block.1.layer.1.DenseReluDense.wi_1.weight" in keys
    assert not any(k.startswith("shared") for k in keys)

"""T5 v1.1 encoder (T5-XXL) with attribute names equal to the Hugging Face `T5EncoderModel` keys.

Matches sd3.5 `other_impls.py T5XXLModel` and transformers `T5EncoderModel` (encoder only, no `shared`
module: the loader maps `shared.weight` to `encoder.embed_tokens.weight` when needed).
Shapes: B = batch, N = tokens (any length, no maximum), D = d_model, h = heads (64-dim each).

fp16 is not supported: T5-XXL's residual stream exceeds the fp16 range (transformers clamps the infs it
produces; we don't). Run it in bf16 or fp32; `T5Encoder` raises `UserInputError` for fp16 in `__init__`
and in `forward` (the latter catches a module cast with `.to(torch.float16)` after construction).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd35.errors import UserInputError
from sd35.models.configs import HEAD_DIM, T5Config


def _reject_fp16(dtype: torch.dtype | None) -> None:
    if dtype == torch.float16:
        raise UserInputError(
            "the T5 encoder cannot run in float16 (its activations overflow the fp16 range); use bfloat16 or float32"
        )


class T5LayerNorm(nn.Module):
    """T5 RMSNorm: weight · x / sqrt(mean(x²) + eps), no mean subtraction, no bias, statistics in fp32."""

    def __init__(self, dim: int, eps: float, *, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(self.weight.dtype)


def relative_position_bucket(relative_position: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional T5 bucket of (key position − query position); ints [...] -> longs in [0, num_buckets).

    Half the buckets are for keys after the query. Within each half, distances below half of it are exact
    and the rest are log-spaced up to `max_distance`; farther keys share the last bucket
    (transformers `T5Attention._relative_position_bucket`, bidirectional=True).
    """
    half = num_buckets // 2
    buckets = (relative_position > 0).long() * half
    distance = relative_position.abs()
    max_exact = half // 2
    # clamp before the log so distances < max_exact (which use the exact branch) never take log(0)
    scaled = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (scaled * (half - max_exact)).long()).clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class T5Attention(nn.Module):
    """Unscaled self-attention with an additive position bias; [B,N,D], bias [1,h,N,N] -> [B,N,D].

    Only block 0 owns `relative_attention_bias` (an Embedding buckets -> heads).
    """

    def __init__(self, config: T5Config, has_relative_bias: bool, *, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.heads = config.num_heads
        inner = self.heads * HEAD_DIM
        self.q = nn.Linear(config.d_model, inner, bias=False, **kw)
        self.k = nn.Linear(config.d_model, inner, bias=False, **kw)
        self.v = nn.Linear(config.d_model, inner, bias=False, **kw)
        self.o = nn.Linear(inner, config.d_model, bias=False, **kw)
        if has_relative_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, self.heads, **kw)

    def forward(self, x: Tensor, position_bias: Tensor) -> Tensor:
        b, n, _ = x.shape
        # "B N (h d) -> B h N d"
        q, k, v = (p(x).view(b, n, self.heads, HEAD_DIM).transpose(1, 2) for p in (self.q, self.k, self.v))
        # T5 folds the scale into its weights: scores are q·k without 1/sqrt(d) (sd3.5 multiplies k by
        # sqrt(64) to cancel SDPA's scale; scale=1.0 is the same). No padding mask, as in the reference.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=position_bias, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(b, n, -1))


class T5LayerSelfAttention(nn.Module):
    """`layer.0`: x + SelfAttention(layer_norm(x))."""

    def __init__(self, config: T5Config, has_relative_bias: bool, *, device=None, dtype=None) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_bias, device=device, dtype=dtype)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_eps, device=device, dtype=dtype)

    def forward(self, x: Tensor, position_bias: Tensor) -> Tensor:
        return x + self.SelfAttention(self.layer_norm(x), position_bias)


class T5DenseGatedGelu(nn.Module):
    """Gated-GELU FFN: wo(gelu_tanh(wi_0 x) · wi_1 x); [B,N,D] -> [B,N,D] (T5 v1.1 "gated-gelu")."""

    def __init__(self, config: T5Config, *, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False, **kw)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False, **kw)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False, **kw)

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class T5LayerFF(nn.Module):
    """`layer.1`: x + DenseReluDense(layer_norm(x))."""

    def __init__(self, config: T5Config, *, device=None, dtype=None) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedGelu(config, device=device, dtype=dtype)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_eps, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    """One encoder block: `layer` = [self-attention, feed-forward]."""

    def __init__(self, config: T5Config, has_relative_bias: bool, *, device=None, dtype=None) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            [
                T5LayerSelfAttention(config, has_relative_bias, device=device, dtype=dtype),
                T5LayerFF(config, device=device, dtype=dtype),
            ]
        )

    def forward(self, x: Tensor, position_bias: Tensor) -> Tensor:
        return self.layer[1](self.layer[0](x, position_bias))


class T5Stack(nn.Module):
    """Container matching HF `encoder.*`: embed_tokens, block.{i}, final_layer_norm."""

    def __init__(self, config: T5Config, *, device=None, dtype=None) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, device=device, dtype=dtype)
        self.block = nn.ModuleList(
            T5Block(config, has_relative_bias=i == 0, device=device, dtype=dtype) for i in range(config.num_layers)
        )
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_eps, device=device, dtype=dtype)


class T5Encoder(nn.Module):
    """T5 v1.1 encoder; `forward(ids[B,N]) -> [B,N,D]` after final_layer_norm. bf16 or fp32 only."""

    def __init__(self, config: T5Config, *, device=None, dtype=None) -> None:
        super().__init__()
        _reject_fp16(dtype)
        if config.d_model % HEAD_DIM or config.num_layers < 1:
            raise ValueError(f"bad T5 config {config}: d_model must be a multiple of {HEAD_DIM}, layers >= 1")
        self.config = config
        self.encoder = T5Stack(config, device=device, dtype=dtype)

    def position_bias(self, n: int, device: torch.device) -> Tensor:
        """Relative position bias of block 0, shared by every block; [1,h,N,N] in the module's dtype."""
        positions = torch.arange(n, device=device)
        relative = positions[None, :] - positions[:, None]  # [query, key] = key − query
        buckets = relative_position_bucket(
            relative, self.config.relative_attention_num_buckets, self.config.relative_attention_max_distance
        )
        table = self.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
        return table(buckets).permute(2, 0, 1).unsqueeze(0)  # [N,N,h] -> [1,h,N,N]

    def forward(self, input_ids: Tensor) -> Tensor:
        """ids [B,N] (long) -> hidden states [B,N,D] (sd3.5 `T5XXLModel`, last layer, final norm)."""
        stack = self.encoder
        _reject_fp16(stack.embed_tokens.weight.dtype)
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise UserInputError(f"T5 expects token ids of shape [batch, tokens], got {tuple(input_ids.shape)}")
        x = stack.embed_tokens(input_ids)
        bias = self.position_bias(input_ids.shape[1], x.device).to(x.dtype)
        for block in stack.block:
            x = block(x, bias)
        return stack.final_layer_norm(x)

"""CLIP text transformer (CLIP-L and CLIP-G) with attribute names equal to the Hugging Face keys.

Matches sd3.5 `other_impls.py CLIPTextModel` as used by `SDClipModel(layer="hidden", layer_idx=-2)` and
transformers `CLIPTextModelWithProjection`. Shapes: B = batch, N = tokens (77), H = hidden, P = pooled width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd35.errors import UserInputError
from sd35.models.configs import HEAD_DIM, CLIPTextConfig

# The CLIP end-of-text token has the largest id of the vocabulary (openai/clip-vit-large-patch14), so the
# first EOS is the first argmax of the ids, even when the row is padded with 49407 (CLIP-L) or 0 (CLIP-G).
EOS_TOKEN_ID = 49407


@dataclass(frozen=True)
class CLIPTextOutput:
    """`hidden` [B,N,H]: output of the penultimate encoder layer, no final LayerNorm (HF hidden_states[-2]).

    `pooled` [B,P]: final_layer_norm(last layer) at the first EOS token; projected only for CLIP-G.
    """

    hidden: Tensor
    pooled: Tensor


def _quick_gelu(x: Tensor) -> Tensor:
    """x·sigmoid(1.702x), the OpenAI CLIP activation (CLIP-L)."""
    return x * torch.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with 64-dim heads; [B,N,H] -> [B,N,H]."""

    def __init__(self, hidden: int, heads: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.heads = heads
        kw = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(hidden, hidden, **kw)
        self.k_proj = nn.Linear(hidden, hidden, **kw)
        self.v_proj = nn.Linear(hidden, hidden, **kw)
        self.out_proj = nn.Linear(hidden, hidden, **kw)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        # "B N (h d) -> B h N d"
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(64)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class CLIPMLP(nn.Module):
    """fc1 -> activation -> fc2; [B,N,H] -> [B,N,H]."""

    def __init__(self, config: CLIPTextConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, **kw)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, **kw)
        self.hidden_act = config.hidden_act

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        # CLIP-G (OpenCLIP bigG) uses the exact erf gelu, not the tanh approximation.
        x = _quick_gelu(x) if self.hidden_act == "quick_gelu" else F.gelu(x)
        return self.fc2(x)


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x)); [B,N,H] -> [B,N,H]."""

    def __init__(self, config: CLIPTextConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        h, eps = config.hidden_size, config.layer_norm_eps
        self.layer_norm1 = nn.LayerNorm(h, eps=eps, **kw)
        self.self_attn = CLIPAttention(h, config.num_heads, **kw)
        self.layer_norm2 = nn.LayerNorm(h, eps=eps, **kw)
        self.mlp = CLIPMLP(config, **kw)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    """Token + learned absolute position embeddings; ids [B,N] -> [B,N,H].

    HF also has a `position_ids` buffer (arange(77)); some checkpoints store it. It is not registered here:
    positions are built on the fly, so the state dict never holds it and the loader drops the file's copy.
    """

    def __init__(self, config: CLIPTextConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size, **kw)
        self.position_embedding = nn.Embedding(config.max_positions, config.hidden_size, **kw)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPEncoder(nn.Module):
    """The stack of encoder layers (HF `CLIPEncoder`); holds only `layers`."""

    def __init__(self, config: CLIPTextConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(config, device=device, dtype=dtype) for _ in range(config.num_layers)
        )


class CLIPTextTransformer(nn.Module):
    """Container matching HF `text_model.*`: embeddings, encoder.layers, final_layer_norm."""

    def __init__(self, config: CLIPTextConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.embeddings = CLIPEmbeddings(config, **kw)
        self.encoder = CLIPEncoder(config, **kw)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, **kw)


class CLIPTextModel(nn.Module):
    """CLIP-L or CLIP-G text encoder; `forward(ids[B,N]) -> CLIPTextOutput(hidden[B,N,H], pooled[B,P])`.

    `text_projection` (Linear H -> projection_dim, no bias) exists iff `config.projection_dim` is set, so a
    CLIP-L file that carries it loads strictly; it is applied to the pooled vector only if
    `config.project_pooled` (CLIP-G). Computation runs in the parameters' dtype.
    """

    def __init__(self, config: CLIPTextConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        if config.num_layers < 1:
            raise ValueError("CLIP needs at least one encoder layer")
        if config.hidden_size % HEAD_DIM:
            raise ValueError(f"CLIP hidden size {config.hidden_size} is not a multiple of {HEAD_DIM}")
        if config.project_pooled and config.projection_dim is None:
            raise ValueError("CLIPTextConfig.project_pooled needs a projection_dim")
        self.config = config
        self.text_model = CLIPTextTransformer(config, device=device, dtype=dtype)
        if config.projection_dim is not None:
            self.text_projection = nn.Linear(
                config.hidden_size, config.projection_dim, bias=False, device=device, dtype=dtype
            )

    def forward(self, input_ids: Tensor) -> CLIPTextOutput:
        """ids [B,N] (N <= 77, each row holding an EOS) -> hidden [B,N,H], pooled [B,P]."""
        if input_ids.ndim != 2 or not 0 < input_ids.shape[1] <= self.config.max_positions:
            raise UserInputError(
                f"CLIP expects token ids of shape [batch, <= {self.config.max_positions}], got {tuple(input_ids.shape)}"
            )
        tm = self.text_model
        x = tm.embeddings(input_ids)
        layers = tm.encoder.layers
        for layer in layers[:-1]:
            x = layer(x)
        hidden = x  # input of the last layer = HF hidden_states[-2] (sd3.5 layer_idx=-2)
        x = tm.final_layer_norm(layers[-1](x))
        # torch.argmax returns the first maximal index: the first EOS, as in sd3.5 `CLIPTextModel_`.
        eos = input_ids.to(device=x.device, dtype=torch.int).argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0], device=x.device), eos]
        if self.config.project_pooled:
            pooled = self.text_projection(pooled)
        return CLIPTextOutput(hidden=hidden, pooled=pooled)

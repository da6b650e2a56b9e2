"""Tokens → SD3 conditioning: CLIP-L ‖ CLIP-G features zero-padded to the context width, then T5 tokens.

Matches ComfyUI `comfy/text_encoders/sd3_clip.py` `SD3ClipModel.encode_token_weights` and
`comfy/sd1_clip.py` `ClipTokenWeightEncoder.encode_token_weights` (per-token prompt weights). The
reference (Stability-AI/sd3.5 `sd3_infer.py get_cond`) builds the same layout from the first CLIP chunk
only and ignores weights; docs/prompts.md lists the differences.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd35.errors import CheckpointError, UserInputError
from sd35.models.clip import CLIPTextModel
from sd35.models.configs import CLIPTextConfig
from sd35.models.t5 import T5Encoder
from sd35.text.prompt import MAX_CLIP_CHUNKS, MAX_T5_TOKENS, EncoderTokens, PromptTokens, tokenize_prompt
from sd35.text.tokenizers import SD3Tokenizers
from sd35.types import Conditioning

SD3_CONTEXT_DIM = 4096  # T5-XXL d_model = MMDiT context_in_dim
SD3_POOLED_DIM = 768 + 1280  # CLIP-L pooled ‖ CLIP-G pooled = MMDiT adm_in_channels
SD3_CLIP_G_POOLED = 1280


def _pooled_width(config: CLIPTextConfig) -> int:
    return config.projection_dim if config.project_pooled and config.projection_dim else config.hidden_size


@dataclass(frozen=True, eq=False)
class TextEncoders:
    """The text encoders that are loaded; any may be None (most often T5, to save ~9 GB).

    `context_dim`: the MMDiT's context width (4096; the tiny models' T5 width otherwise). `pooled_dim`:
    the MMDiT's pooled width (adm_in_channels); None = the sum of the two CLIPs' pooled widths, or 2048
    for standard-width encoders. It fixes the zeros that stand in for a missing CLIP (ComfyUI: 768 / 1280).
    """

    clip_l: CLIPTextModel | None = None
    clip_g: CLIPTextModel | None = None
    t5: T5Encoder | None = None
    context_dim: int = SD3_CONTEXT_DIM
    pooled_dim: int | None = None

    def __post_init__(self) -> None:
        self.widths()  # validate early

    def widths(self) -> tuple[int, int]:
        """(CLIP-L width, CLIP-G pooled width): real ones when loaded, derived from pooled_dim otherwise
        (with both CLIPs missing only their sum, the width of the zero pooled vector, matters).

        Raises CheckpointError when the encoders do not fit the context / pooled widths.
        """
        l_w = _pooled_width(self.clip_l.config) if self.clip_l is not None else None
        g_w = _pooled_width(self.clip_g.config) if self.clip_g is not None else None
        pooled = self.pooled_dim
        if pooled is None:
            if l_w is not None and g_w is not None:
                pooled = l_w + g_w
            elif self.context_dim == SD3_CONTEXT_DIM:
                pooled = SD3_POOLED_DIM
            else:
                raise CheckpointError(
                    f"with a CLIP missing and context width {self.context_dim}, pass pooled_dim "
                    "(the diffusion model's adm_in_channels) to TextEncoders"
                )
        if l_w is None:
            l_w = pooled - (g_w if g_w is not None else SD3_CLIP_G_POOLED if pooled == SD3_POOLED_DIM else 0)
        if g_w is None:
            g_w = pooled - l_w
        if l_w <= 0 or g_w < 0 or l_w + g_w != pooled:
            raise CheckpointError(f"CLIP pooled widths {l_w} + {g_w} do not make the pooled width {pooled}")
        feats = (self.clip_l.config.hidden_size if self.clip_l else l_w) + (
            self.clip_g.config.hidden_size if self.clip_g else 0
        )
        if feats > self.context_dim:
            raise CheckpointError(f"CLIP features ({feats} wide) do not fit the context width {self.context_dim}")
        if self.t5 is not None and self.t5.config.d_model != self.context_dim:
            raise CheckpointError(f"T5 width {self.t5.config.d_model} != context width {self.context_dim}")
        return l_w, g_w

    def modules(self) -> tuple[nn.Module, ...]:
        return tuple(m for m in (self.clip_l, self.clip_g, self.t5) if m is not None)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _encode_weighted(
    run: Callable[[Tensor], tuple[Tensor, Tensor | None]], module: nn.Module, tokens: EncoderTokens
) -> tuple[Tensor, Tensor | None]:
    """Encode the rows, apply the prompt weights; → ([1, ΣN, H] float32, first row's pooled [1, P] | None).

    ComfyUI `ClipTokenWeightEncoder.encode_token_weights`: when a weight is not 1 (or there are no rows),
    the "empty" row (start, end, padding; as long as the longest row) is encoded in the same batch, and
    each weighted token becomes z = (z − z_empty)·w + z_empty. Pooled comes from the first row, unweighted.
    """
    rows = tokens.ids
    weighted = tokens.weighted
    if weighted or not rows:
        rows = rows + [list(tokens.special.empty(max((len(r) for r in rows), default=0)))]
    device = _device(module)
    hidden, pooled = run(torch.tensor(rows, dtype=torch.long, device=device))
    hidden = hidden.float()
    first_pooled = pooled[0:1].float() if pooled is not None else None
    n = len(tokens.chunks)
    if n == 0:
        return hidden[-1:], first_pooled
    z = hidden[:n]
    if weighted:
        weights = [list(c.weights) for c in tokens.chunks]
        w = torch.tensor(weights, dtype=torch.float32, device=z.device)[..., None]
        mask = torch.tensor([[x != 1.0 for x in row] for row in weights], device=z.device)[..., None]
        empty = hidden[-1:]
        z = torch.where(mask, (z - empty) * w + empty, z)
    return z.reshape(1, -1, z.shape[-1]), first_pooled


def _run_clip(model: CLIPTextModel) -> Callable[[Tensor], tuple[Tensor, Tensor | None]]:
    def run(ids: Tensor) -> tuple[Tensor, Tensor | None]:
        out = model(ids)
        return out.hidden, out.pooled

    return run


def _run_t5(model: T5Encoder) -> Callable[[Tensor], tuple[Tensor, Tensor | None]]:
    return lambda ids: (model(ids), None)


def check_encodable(tokens: PromptTokens) -> None:
    """Raise UserInputError when a prompt exceeds sd35's encoding limits (prompt.MAX_*)."""
    chunks = max(len(tokens.clip_l.chunks), len(tokens.clip_g.chunks))
    if tokens.t5.count > MAX_T5_TOKENS or chunks > MAX_CLIP_CHUNKS:
        raise UserInputError(
            f"prompt too long to encode: {tokens.t5.count} T5 tokens (at most {MAX_T5_TOKENS}), "
            f"{chunks} CLIP chunks (at most {MAX_CLIP_CHUNKS} of 75 tokens)"
        )


@torch.no_grad()
def encode_prompt(encoders: TextEncoders, tokens: PromptTokens) -> Conditioning:
    """PromptTokens → Conditioning(context [1, 77·n_chunks + T5 rows, C], pooled [1, P]), float32.

    ComfyUI `SD3ClipModel.encode_token_weights`: lg = CLIP-L ‖ CLIP-G hidden (a missing CLIP-L leaves its
    columns zero; a missing CLIP-G leaves nothing), zero-padded to C; pooled = L ‖ G pooled, zeros for a
    missing CLIP; T5 rows (≥ 77) follow lg; a missing T5 adds no rows. Tensors land on the device of the
    first encoder that ran. Raises UserInputError when no encoder is loaded or the prompt is too long.
    """
    if not encoders.modules():
        raise UserInputError(
            "no text encoder is loaded: the checkpoint has no CLIP-L, CLIP-G or T5 weights; "
            "give the text encoder files separately"
        )
    check_encodable(tokens)
    l_width, g_width = encoders.widths()
    parts: dict[str, Tensor] = {}
    lg = pooled = out = None
    if tokens.clip_l.chunks or tokens.clip_g.chunks:
        if encoders.clip_l is not None:
            lg, parts["l_pooled"] = _encode_weighted(_run_clip(encoders.clip_l), encoders.clip_l, tokens.clip_l)
        if encoders.clip_g is not None:
            g_out, parts["g_pooled"] = _encode_weighted(_run_clip(encoders.clip_g), encoders.clip_g, tokens.clip_g)
            if lg is not None:
                n = min(lg.shape[1], g_out.shape[1])
                lg = torch.cat([lg[:, :n], g_out[:, :n].to(lg.device)], dim=-1)
            else:
                lg = F.pad(g_out, (l_width, 0))
        device = lg.device if lg is not None else torch.device("cpu")
        l_pooled = parts.get("l_pooled", torch.zeros(1, l_width, device=device))
        g_pooled = parts.get("g_pooled", torch.zeros(1, g_width, device=device))
        pooled = torch.cat([l_pooled.to(device), g_pooled.to(device)], dim=-1)
        if lg is not None:
            out = lg = F.pad(lg, (0, encoders.context_dim - lg.shape[-1]))
    if encoders.t5 is not None:
        t5_out, _ = _encode_weighted(_run_t5(encoders.t5), encoders.t5, tokens.t5)
        out = t5_out if lg is None else torch.cat([lg, t5_out.to(lg.device)], dim=-2)
    device = out.device if out is not None else pooled.device if pooled is not None else torch.device("cpu")
    if out is None:
        out = torch.zeros(1, 77, encoders.context_dim, device=device)
    if pooled is None:
        pooled = torch.zeros(1, l_width + g_width, device=device)
    return Conditioning(context=out, pooled=pooled.to(device))


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt's conditioning and the tokens it came from (their warnings are for the person)."""

    conditioning: Conditioning
    tokens: PromptTokens

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.tokens.warnings


def _weights_state(module: nn.Module) -> tuple:
    """What changes when a module's weights do: its parameters' in-place version counters and dtypes.

    Moving a module between devices keeps the counters (same values, same conditioning up to rounding);
    loading or patching weights in place bumps them. Inference-mode tensors have no counter: then the
    module's identity alone is used.
    """
    try:
        versions = tuple(p._version for p in module.parameters())
    except RuntimeError:
        versions = ()
    return versions, tuple(sorted({str(p.dtype) for p in module.parameters()}))


class ConditioningCache:
    """Process-wide memo of encoded prompts keyed by (encoder weights, tokens): a repeated prompt is
    encoded once. Entries hold weak references to the encoders, so a freed encoder never matches a new
    one at the same address; the least recently used entry goes beyond `max_entries`. Thread-safe (one
    encode at a time). The returned tensors are shared: do not modify them in place.
    """

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, tuple[tuple, EncodedPrompt]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def encode(self, encoders: TextEncoders, tokenizers: SD3Tokenizers, prompt: str) -> EncodedPrompt:
        """Tokenize `prompt` and return its conditioning, encoding it only on the first request."""
        return self.encode_tokens(encoders, tokenize_prompt(tokenizers, prompt))

    def encode_tokens(self, encoders: TextEncoders, tokens: PromptTokens) -> EncodedPrompt:
        slots = (encoders.clip_l, encoders.clip_g, encoders.t5)
        state = tuple((id(m), _weights_state(m)) if m is not None else None for m in slots)
        key = (state, encoders.context_dim, encoders.widths(), tokens)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and all((r() if r is not None else None) is m for r, m in zip(entry[0], slots)):
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            self.misses += 1
            result = EncodedPrompt(encode_prompt(encoders, tokens), tokens)
            refs = tuple(weakref.ref(m) if m is not None else None for m in slots)
            self._entries[key] = (refs, result)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return result

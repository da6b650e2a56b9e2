"""MMDiT-X, the SD3.x diffusion transformer (sd3.5 `mmditx.py MMDiTX`), with checkpoint attribute names.

Glossary (names follow the reference and the checkpoint keys):
    x        image tokens [B, N, D] (N = h·w patches of the latent, D = hidden size); the latent itself on
             input/output is [B, 16, H, W] with h = H/p, w = W/p, p = patch size (2)
    context  text tokens [B, L, D] after `context_embedder` (input: [B, L, 4096], CLIP-L‖G zero-padded ‖ T5)
    y        pooled text vector [B, 2048] (CLIP-L 768 ‖ CLIP-G 1280), called `pooled` in the API
    c        conditioning vector [B, D] = t_embedder(t) + y_embedder(y); drives every adaLN modulation
    sigma    noise level in [0, 1] of the rectified-flow schedule
    t        timestep = 1000·sigma (float), the value `forward` takes (sd3.5 `BaseModel.apply_model`)

`MMDiTX.state_dict()` keys equal the official file's keys without the `model.diffusion_model.` prefix, so a
stripped official state dict loads with `strict=True`. One class covers SD3.5 Medium (attn2 on blocks 0–12,
QK RMSNorm), SD3 Medium (neither) and SD3.5 Large (depth 38, QK RMSNorm); the config says which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from sd35.errors import UserInputError
from sd35.models.configs import HEAD_DIM, MMDiTXConfig
from sd35.nn.attention import attention_heads, head_major, merge_heads, split_qkv
from sd35.nn.embeddings import (
    PatchEmbed,
    TimestepEmbedder,
    VectorEmbedder,
    crop_pos_embed,
    pad_to_patch_size,
)
from sd35.nn.linear import linear
from sd35.nn.norms import RMSNorm, layer_norm, modulate

QKV = tuple[Tensor, Tensor, Tensor]  # q, k, v, each [B, L, heads, 64]
Destinations = tuple[Tensor | None, Tensor | None, Tensor | None]  # where q, k, v go (None: nowhere)
NORM_EPS = 1e-6  # LayerNorm and QK RMSNorm eps (sd3.5 `DismantledBlock`, `SelfAttention`)
RunBlocks = Callable[[Tensor | None, Tensor, Tensor, frozenset[int], int, int], tuple[Tensor | None, Tensor]]


class BlockCache(Protocol):
    """Runs the joint blocks of one forward, possibly reusing work of earlier sampling steps.

    Called as cache(run, ctx, x, c, skip, depth) with run = `MMDiTX.run_blocks` (run(ctx, x, c, skip, start,
    stop) -> (ctx, x)); returns x [B, N, D] after block depth−1. Implemented in `sd35.pipeline.step_cache`.
    """

    def __call__(
        self, run: RunBlocks, ctx: Tensor, x: Tensor, c: Tensor, skip: frozenset[int], depth: int
    ) -> Tensor: ...


def _take_rows(t: Tensor, rows: list[int]) -> Tensor:
    """t[rows] along dim 0 by slicing: an index tensor built from a list would be a host-to-device copy
    (a sync on CUDA) once per SLG step. rows are usually one contiguous run (the positive rows)."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return t[rows[0] : rows[0] + len(rows)]
    return torch.cat([t[r : r + 1] for r in rows])


class SelfAttention(nn.Module):
    """Fused qkv projection, optional per-head q/k RMSNorm, output projection (none when pre_only)."""

    def __init__(self, dim: int, *, qk_norm: bool, pre_only: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, device=device, dtype=dtype)
        self.ln_q = RMSNorm(HEAD_DIM, NORM_EPS, device=device, dtype=dtype) if qk_norm else None
        self.ln_k = RMSNorm(HEAD_DIM, NORM_EPS, device=device, dtype=dtype) if qk_norm else None
        self.proj = None if pre_only else nn.Linear(dim, dim, device=device, dtype=dtype)

    def pre_attention(self, x: Tensor, out: Destinations | None = None) -> QKV:
        """[B, L, D] -> q, k, v [B, L, heads, 64], q and k normalised per head when qk_norm.

        With `out` (three [B, L, heads, 64] views, e.g. slices of the joint attention's head-major
        buffers) q and k are normalised (or, without qk_norm, copied) into them and v is copied; that
        saves the concatenation. A None destination skips that output (the returned tensor is then
        unnormalised). Without `out`, q and k are normalised in place in the projection output and v is a
        strided view of it.
        """
        q, k, v = split_qkv(linear(self.qkv, x), HEAD_DIM)
        q_out, k_out, v_out = (q, k, v) if out is None else out
        return _place(self.ln_q, q, q_out), _place(self.ln_k, k, k_out), _place(None, v, v_out)


def _place(norm: RMSNorm | None, t: Tensor, dest: Tensor | None) -> Tensor:
    """norm(t) (or t itself without a norm) written into dest (which may be t); dest None: t, untouched."""
    if dest is None:
        return t
    if norm is not None:
        return norm(t, out=dest)
    return t if dest is t else dest.copy_(t)


class Mlp(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2: [B, L, D] -> [B, L, D]."""

    def __init__(self, dim: int, hidden: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        hidden = linear(self.fc1, x, gelu=True)  # [B, L, 4D]: GELU fused or in place (sd35.nn.linear)
        return linear(self.fc2, hidden)


class DismantledBlock(nn.Module):
    """One stream (image or text) of a joint block, split around the shared attention (sd3.5 same name).

    Modulation chunks of adaLN_modulation(c), in order: (shift_msa, scale_msa, gate_msa, shift_mlp,
    scale_mlp, gate_mlp[, shift_msa2, scale_msa2, gate_msa2]); a pre-only block has (shift_msa, scale_msa).
    """

    def __init__(self, dim: int, *, qk_norm: bool, pre_only: bool, x_self_attn: bool, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.pre_only = pre_only
        self.attn = SelfAttention(dim, qk_norm=qk_norm, pre_only=pre_only, **kw)
        self.attn2 = SelfAttention(dim, qk_norm=qk_norm, **kw) if x_self_attn else None
        self.mlp = None if pre_only else Mlp(dim, 4 * dim, **kw)  # mlp_ratio 4
        self.n_mods = 2 if pre_only else (9 if x_self_attn else 6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.n_mods * dim, **kw))

    def pre_attention(self, x: Tensor, c: Tensor, out: Destinations) -> tuple[QKV, QKV | None, tuple[Tensor, ...]]:
        """x [B, L, D], c [B, D] -> (qkv, qkv of attn2 or None, modulation chunks [B, D] each).

        out: where the joint attention's q, k and v go (`SelfAttention.pre_attention`); attn2's go to
        head-major buffers of their own.
        """
        mods = self.adaLN_modulation(c).chunk(self.n_mods, dim=1)
        x_norm = layer_norm(x, NORM_EPS)
        qkv2 = None
        if self.attn2 is not None:  # attn2 reads the same norm1(x), modulated with its own shift/scale
            own = tuple(head_major(x, x.shape[1], HEAD_DIM) for _ in "qkv")
            qkv2 = self.attn2.pre_attention(modulate(x_norm, mods[6], mods[7]), own)
        x_mod = modulate(x_norm, mods[0], mods[1], inplace=True)  # x_norm is ours
        return self.attn.pre_attention(x_mod, out), qkv2, mods

    def post_attention(self, x: Tensor, attn: Tensor, attn2: Tensor | None, mods: tuple[Tensor, ...]) -> Tensor:
        """Gated residual updates: x [B, L, D], attention outputs [B, L, D] -> new x [B, L, D].

        The input x is left untouched: the first update allocates the new residual stream, the later
        ones accumulate into it in place.
        """
        assert self.attn.proj is not None and self.mlp is not None, "a pre-only block has no post-attention"
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:6]
        x = torch.addcmul(x, gate_msa.unsqueeze(1), linear(self.attn.proj, attn))
        if attn2 is not None and self.attn2 is not None:
            x.addcmul_(mods[8].unsqueeze(1), linear(self.attn2.proj, attn2))
        mlp_in = modulate(layer_norm(x, NORM_EPS), shift_mlp, scale_mlp, inplace=True)
        return x.addcmul_(gate_mlp.unsqueeze(1), self.mlp(mlp_in))


class JointBlock(nn.Module):
    """Context and image streams attending jointly, context tokens first (sd3.5 `JointBlock`)."""

    def __init__(self, dim: int, *, qk_norm: bool, pre_only: bool, x_self_attn: bool, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"qk_norm": qk_norm, "device": device, "dtype": dtype}
        self.context_block = DismantledBlock(dim, pre_only=pre_only, x_self_attn=False, **kw)
        self.x_block = DismantledBlock(dim, pre_only=False, x_self_attn=x_self_attn, **kw)

    def forward(self, context: Tensor, x: Tensor, c: Tensor) -> tuple[Tensor | None, Tensor]:
        """context [B, L, D], x [B, N, D], c [B, D] -> (context or None after a pre-only block, x)."""
        n_ctx, n_x = context.shape[1], x.shape[1]
        # q, k and v go straight into head-major joint [context, image] buffers (no concatenation, and the
        # layout SDPA is fastest on). The reference discards the context rows of a pre-only block: then
        # only the image queries are needed.
        pre_only = self.context_block.pre_only
        k, v = head_major(x, n_ctx + n_x, HEAD_DIM), head_major(x, n_ctx + n_x, HEAD_DIM)
        q = head_major(x, n_x if pre_only else n_ctx + n_x, HEAD_DIM)
        q_ctx, q_x = (None, q) if pre_only else (q[:, :n_ctx], q[:, n_ctx:])
        _, _, ctx_mods = self.context_block.pre_attention(context, c, (q_ctx, k[:, :n_ctx], v[:, :n_ctx]))
        _, x_qkv2, x_mods = self.x_block.pre_attention(x, c, (q_x, k[:, n_ctx:], v[:, n_ctx:]))
        # one SDPA over all queries: faster on CPUs than separate context/image query calls
        joint = attention_heads(q, k, v)
        ctx_attn = None if pre_only else merge_heads(joint[:, :n_ctx])
        x_attn = merge_heads(joint if pre_only else joint[:, n_ctx:])
        x_attn2 = merge_heads(attention_heads(*x_qkv2)) if x_qkv2 is not None else None
        x = self.x_block.post_attention(x, x_attn, x_attn2, x_mods)
        if ctx_attn is None:
            return None, x
        return self.context_block.post_attention(context, ctx_attn, None, ctx_mods), x


class FinalLayer(nn.Module):
    """adaLN (shift, scale) -> Linear to p·p·C per token: [B, N, D], c [B, D] -> [B, N, p·p·C]."""

    def __init__(self, dim: int, patch_size: int, out_channels: int, *, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels, **kw)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, **kw))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(layer_norm(x, NORM_EPS), shift, scale))


class MMDiTX(nn.Module):
    """The SD3.x MMDiT(-X): latent, timestep and text conditioning in, velocity out.

    Compute dtype is the weights' dtype (fp32, fp16 or bf16): inputs are cast to it (and moved to the
    weights' device); the timestep features are computed in fp32 and then cast; the output is returned in
    the dtype of the input `x`.
    """

    def __init__(self, config: MMDiTXConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        dim, kw = config.hidden_size, {"device": device, "dtype": dtype}
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, dim, **kw)
        # Learned table of pos_embed_max_size² positions, read from the checkpoint (never recomputed).
        self.pos_embed = nn.Parameter(torch.zeros(1, config.pos_embed_max_size**2, dim, **kw))
        self.t_embedder = TimestepEmbedder(dim, **kw)
        self.y_embedder = VectorEmbedder(config.adm_in_channels, dim, **kw)
        self.context_embedder = nn.Linear(config.context_in_dim, dim, **kw)
        self.joint_blocks = nn.ModuleList(
            JointBlock(
                dim,
                qk_norm=config.qk_norm,
                pre_only=i == config.depth - 1,  # the last block's context output is never used
                x_self_attn=i in config.x_block_self_attn_layers,
                **kw,
            )
            for i in range(config.depth)
        )
        self.final_layer = FinalLayer(dim, config.patch_size, config.out_channels, **kw)

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        pooled: Tensor,
        context: Tensor,
        skip_layers: Sequence[int] = (),
        *,
        branch_rows: Sequence[int] | None = None,
        block_cache: BlockCache | None = None,
    ) -> Tensor:
        """Velocity prediction [B, 16, H, W] (sd3.5 `MMDiTX.forward`).

        x [B, 16, H, W] noisy latent (H, W need not be multiples of the patch size: the latent is padded
        circularly and the output cropped, as ComfyUI does); timestep [B] (or one value) = 1000·sigma;
        pooled [B, adm_in_channels]; context [B, L, context_in_dim], any L ≥ 1. Joint blocks whose index is
        in `skip_layers` are not run (both streams pass through); indices outside 0..depth−1 are ignored,
        as in the reference and ComfyUI.

        `branch_rows` batches Skip Layer Guidance with the main pass: `skip_layers` then do not apply to the
        batch; each listed row instead gets a copy that skips them, appended to the output, which is
        [B + len(branch_rows), 16, H, W]: rows :B as with no skip_layers, row B+j as a separate
        `forward(x[[r_j]], ..., skip_layers=skip_layers)` gives. The blocks before the first skipped one
        are identical for a row and its copy, so they run once. `block_cache` (not with branch_rows) runs
        the blocks instead of the plain loop, to reuse work across sampling steps (pipeline.step_cache).
        """
        self._check_inputs(x, pooled, context)
        weight = self.x_embedder.proj.weight
        out_dtype, (height, width), p = x.dtype, x.shape[-2:], self.config.patch_size
        x = pad_to_patch_size(x.to(device=weight.device, dtype=weight.dtype), p)
        h, w = x.shape[-2] // p, x.shape[-1] // p
        x = self.x_embedder(x) + self._cropped_pos_embed(h, w, height, width).to(weight.dtype)

        timestep = timestep.to(weight.device).reshape(-1).expand(x.shape[0])
        c = self.t_embedder(timestep) + self.y_embedder(pooled.to(device=weight.device, dtype=weight.dtype))
        ctx = self.context_embedder(context.to(device=weight.device, dtype=weight.dtype))

        skip = frozenset(i for i in skip_layers if 0 <= i < self.config.depth)
        if branch_rows is not None:
            if block_cache is not None:
                raise ValueError("block_cache cannot be combined with branch_rows")
            x, c = self._run_branched(ctx, x, c, skip, list(branch_rows))
        elif block_cache is not None:
            x = block_cache(self.run_blocks, ctx, x, c, skip, self.config.depth)
        else:
            x = self.run_blocks(ctx, x, c, skip, 0, self.config.depth)[1]

        x = self.final_layer(x, c)
        return self.unpatchify(x, h, w)[..., :height, :width].to(out_dtype)

    def run_blocks(
        self, ctx: Tensor | None, x: Tensor, c: Tensor, skip: frozenset[int], start: int, stop: int
    ) -> tuple[Tensor | None, Tensor]:
        """Joint blocks start..stop−1 except those in `skip`: (ctx [B, L, D], x [B, N, D]) -> same.

        ctx becomes None after the last (pre-only) block. The inputs are not modified.
        """
        for i in range(start, stop):
            if i not in skip:
                assert ctx is not None, "no block runs after the last (pre-only) one"
                ctx, x = self.joint_blocks[i](ctx, x, c)
        return ctx, x

    def _run_branched(
        self, ctx: Tensor, x: Tensor, c: Tensor, skip: frozenset[int], rows: list[int]
    ) -> tuple[Tensor, Tensor]:
        """The blocks for B rows plus skip-layer copies of `rows` -> (x [B+k, N, D], c [B+k, D])."""
        depth, b = self.config.depth, x.shape[0]
        first = min(skip, default=depth)
        ctx_or_none, x = self.run_blocks(ctx, x, c, frozenset(), 0, first)
        c = torch.cat([c, _take_rows(c, rows)])
        x = torch.cat([x, _take_rows(x, rows)])
        if ctx_or_none is None:  # every block ran already (nothing skipped)
            return x, c
        ctx = torch.cat([ctx_or_none, _take_rows(ctx_or_none, rows)])
        for i in range(first, depth):
            block = self.joint_blocks[i]
            if i not in skip:
                ctx_or_none, x = block(ctx, x, c)
            else:  # only the original rows run this block; the copies pass through
                ctx_or_none, x_main = block(ctx[:b], x[:b], c[:b])
                x = torch.cat([x_main, x[b:]])
                if ctx_or_none is not None:
                    ctx_or_none = torch.cat([ctx_or_none, ctx[b:]])
            if ctx_or_none is None:
                break  # the last (pre-only) block has run
            ctx = ctx_or_none
        return x, c

    def unpatchify(self, x: Tensor, h: int, w: int) -> Tensor:
        """[B, h·w, p·p·C] -> [B, C, h·p, w·p] (reference einsum nhwpqc->nchpwq)."""
        p, channels = self.config.patch_size, self.config.out_channels
        x = x.view(x.shape[0], h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], channels, h * p, w * p)

    def _cropped_pos_embed(self, h: int, w: int, height: int, width: int) -> Tensor:
        side = self.config.pos_embed_max_size
        if h > side or w > side:
            p = self.config.patch_size
            raise UserInputError(
                f"latent {height}x{width} ({h}x{w} patches) is larger than this model's position table of "
                f"{side}x{side} patches (largest latent {side * p}x{side * p}); use a smaller image"
            )
        return crop_pos_embed(self.pos_embed, h, w)

    def _check_inputs(self, x: Tensor, pooled: Tensor, context: Tensor) -> None:
        config = self.config
        problems = []
        if x.ndim != 4 or x.shape[1] != config.in_channels:
            problems.append(f"x must be [B, {config.in_channels}, H, W], got {list(x.shape)}")
        if pooled.ndim != 2 or pooled.shape[-1] != config.adm_in_channels:
            problems.append(f"pooled must be [B, {config.adm_in_channels}], got {list(pooled.shape)}")
        if context.ndim != 3 or context.shape[-1] != config.context_in_dim or context.shape[1] == 0:
            problems.append(f"context must be [B, L>0, {config.context_in_dim}], got {list(context.shape)}")
        if not problems and not (x.shape[0] == pooled.shape[0] == context.shape[0]):
            problems.append(f"batch sizes differ: x {x.shape[0]}, pooled {pooled.shape[0]}, context {context.shape[0]}")
        if problems:
            raise UserInputError("MMDiTX inputs do not fit the model: " + "; ".join(problems))

"""The optimised MMDiT-X forward computes what a plain, unfused transcription of the spec computes.

`_plain_block` below is spec §1 written the obvious way: separate q/k/v matmuls from the checkpoint's fused
weight, torch's F.rms_norm, concatenated joint attention (one SDPA over context+image queries, then split),
every op out of place. The model instead uses one fused qkv matmul, a CPU RMSNorm writing straight into
head-major joint buffers, one SDPA over them, in-place modulation/GELU/residual accumulation. Same maths:
agreement to ~1e-6.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sd35.models.configs import SD35_MEDIUM, TINY_MMDITX, MMDiTXConfig
from sd35.models.mmditx import JointBlock, MMDiTX
from sd35.nn.attention import attention_heads, head_major, merge_heads
from sd35.nn.init import randomize_
from sd35.nn.norms import RMSNorm, rms_norm

TOL = 2e-5  # fp32, outputs of order 1
REAL_WIDTH = dataclasses.replace(SD35_MEDIUM, depth=2, pos_embed_max_size=16, x_block_self_attn_layers=(0,))
NO_QK_NORM = dataclasses.replace(TINY_MMDITX, qk_norm=False, x_block_self_attn_layers=())  # SD3 Medium's kind


def _plain_stream_qkv(block, x_mod: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """Unfused: q, k, v = three matmuls with the thirds of the fused weight; F.rms_norm on q and k."""
    b, n, d = x_mod.shape
    wq, wk, wv = block.qkv.weight.chunk(3)
    bq, bk, bv = block.qkv.bias.chunk(3)
    q, k, v = (F.linear(x_mod, w, bb).view(b, n, heads, 64) for w, bb in ((wq, bq), (wk, bk), (wv, bv)))
    if block.ln_q is not None:
        q = F.rms_norm(q, (64,), block.ln_q.weight, block.ln_q.eps)
        k = F.rms_norm(k, (64,), block.ln_k.weight, block.ln_k.eps)
    return q, k, v


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


def _plain_block(block: JointBlock, ctx: torch.Tensor, x: torch.Tensor, c: torch.Tensor):
    """One joint block, spec §1 'Joint block', every op out of place."""
    heads = x.shape[-1] // 64

    def mods(stream):
        return [m.unsqueeze(1) for m in stream.adaLN_modulation(c).chunk(stream.n_mods, dim=1)]

    def norm(t):
        return F.layer_norm(t, (t.shape[-1],), eps=1e-6)

    cm, xm = mods(block.context_block), mods(block.x_block)
    cq, ck, cv = _plain_stream_qkv(block.context_block.attn, norm(ctx) * (1 + cm[1]) + cm[0], heads)
    xq, xk, xv = _plain_stream_qkv(block.x_block.attn, norm(x) * (1 + xm[1]) + xm[0], heads)
    joint = _sdpa(torch.cat([cq, xq], 1), torch.cat([ck, xk], 1), torch.cat([cv, xv], 1))
    ctx_attn, x_attn = joint[:, : ctx.shape[1]], joint[:, ctx.shape[1] :]

    def post(stream, t, attn, m, attn2=None):
        t = t + m[2] * stream.attn.proj(attn)
        if attn2 is not None:
            t = t + m[8] * stream.attn2.proj(attn2)
        h = norm(t) * (1 + m[4]) + m[3]
        return t + m[5] * stream.mlp.fc2(F.gelu(stream.mlp.fc1(h), approximate="tanh"))

    x_attn2 = None
    if block.x_block.attn2 is not None:
        x_attn2 = _sdpa(*_plain_stream_qkv(block.x_block.attn2, norm(x) * (1 + xm[7]) + xm[6], heads))
    x_out = post(block.x_block, x, x_attn, xm, x_attn2)
    return (None if block.context_block.pre_only else post(block.context_block, ctx, ctx_attn, cm)), x_out


def _model(config: MMDiTXConfig, seed: int = 0) -> MMDiTX:
    return randomize_(MMDiTX(config, device="meta").to_empty(device="cpu"), seed).eval()


@pytest.mark.parametrize(
    "config", [TINY_MMDITX, REAL_WIDTH, NO_QK_NORM], ids=["tiny", "real-width-1536", "tiny-sd3-no-qk-norm"]
)
def test_every_block_matches_the_plain_unfused_block(config: MMDiTXConfig) -> None:
    model = _model(config)
    g = torch.Generator().manual_seed(3)
    ctx = torch.randn(2, 23, config.hidden_size, generator=g)
    x = torch.randn(2, 40, config.hidden_size, generator=g)
    c = torch.randn(2, config.hidden_size, generator=g)
    x_before, ctx_before = x.clone(), ctx.clone()
    with torch.no_grad():
        for i, block in enumerate(model.joint_blocks):
            ctx_fast, x_fast = block(ctx, x, c)
            ctx_plain, x_plain = _plain_block(block, ctx, x, c)
            diff = (x_fast - x_plain).abs().max().item()
            print(f"block {i}: max |fast - plain| x {diff:.2e}")
            assert diff <= TOL
            if ctx_plain is None:
                assert ctx_fast is None
            else:
                assert (ctx_fast - ctx_plain).abs().max().item() <= TOL
    # the in-place work inside a block never touches the caller's tensors
    assert torch.equal(x, x_before) and torch.equal(ctx, ctx_before)


def test_cpu_rms_norm_matches_torch_and_works_in_place() -> None:
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 50, 3, 4, 64, generator=g) * 3
    q = qkv[:, :, 0]  # a strided view, as the model normalises it
    weight = torch.randn(64, generator=g)
    expected = F.rms_norm(q, (64,), weight, 1e-6)
    torch.testing.assert_close(rms_norm(q, weight, 1e-6), expected, rtol=1e-6, atol=1e-6)
    bf16 = rms_norm(q.to(torch.bfloat16), weight.to(torch.bfloat16), 1e-6)
    torch.testing.assert_close(bf16.float(), expected, rtol=2e-2, atol=2e-2)
    norm = RMSNorm(64, 1e-6)
    norm.weight.data.copy_(weight)
    out = norm(q, out=q)
    assert out.data_ptr() == q.data_ptr()  # written into the qkv buffer
    torch.testing.assert_close(qkv[:, :, 0], expected, rtol=1e-6, atol=1e-6)


def test_head_major_buffers_give_the_same_attention_as_token_major_views() -> None:
    g = torch.Generator().manual_seed(1)
    like = torch.empty(2, 1, 4 * 64)
    q, k, v = (torch.randn(2, 37, 4, 64, generator=g) for _ in "qkv")
    bufs = [head_major(like, 37, 64) for _ in "qkv"]
    assert bufs[0].shape == (2, 37, 4, 64) and bufs[0].transpose(1, 2).is_contiguous()
    for buf, t in zip(bufs, (q, k, v), strict=True):
        buf.copy_(t)
    token_major = attention_heads(q, k, v)
    head_first = attention_heads(*bufs)
    torch.testing.assert_close(head_first, token_major, rtol=0, atol=1e-6)  # equal on the machines we ran
    torch.testing.assert_close(merge_heads(head_first[:, 5:]), _sdpa(q, k, v)[:, 5:], rtol=0, atol=1e-6)
    assert merge_heads(head_first[:, 5:]).is_contiguous()

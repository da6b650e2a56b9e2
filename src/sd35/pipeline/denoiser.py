"""The denoise callable handed to the samplers: MMDiT velocity → denoised, with CFG and Skip Layer Guidance.

Matches ComfyUI `comfy/samplers.py` sampling_function/cfg_function and `comfy_extras/nodes_slg.py`, and
sd3.5 `sd3_impls.py` CFGDenoiser/SkipLayerCFGDenoiser: guidance is applied to denoised predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sd35.models.mmditx import MMDiTX
from sd35.pipeline.conditioning import CondEntry, CondList, active_entries
from sd35.pipeline.step_cache import StepCache
from sd35.sampling.flow import denoised_from_velocity
from sd35.sampling.guidance import SkipLayerGuidance, cfg_combine, slg_combine
from sd35.sampling.schedule import ModelSampling


def _group_inputs(
    entries: Sequence[CondEntry], indices: list[int], batch: int, device: torch.device, dtype: torch.dtype, memo: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [n·batch, L, C], pooled [n·batch, P]) of the entries `indices`, on `device` in `dtype`."""
    key = (tuple(id(entries[i].conditioning) for i in indices), batch, device, dtype)
    if key not in memo:
        conds = [entries[i].conditioning for i in indices]
        memo[key] = (
            torch.cat([c.context.expand(batch, -1, -1) for c in conds]).to(device, dtype),
            torch.cat([c.pooled.expand(batch, -1) for c in conds]).to(device, dtype),
            conds,  # keeps the conditionings alive, so their ids in the key stay theirs
        )
    context, pooled, _ = memo[key]
    return context, pooled


@dataclass(frozen=True)
class Guidance:
    """What the denoiser mixes: cfg scale, the optional SLG, and the total step count for its window."""

    cfg: float
    slg: SkipLayerGuidance | None
    num_steps: int


def predict(
    model: MMDiTX,
    x: torch.Tensor,
    sigma: torch.Tensor,
    entries: Sequence[CondEntry],
    skip_layers: tuple[int, ...] = (),
    *,
    branch: int = 0,
    cache: StepCache | None = None,
    inputs: dict | None = None,
) -> list[torch.Tensor]:
    """Denoised prediction [B, 16, h, w] (fp32) for each entry; entries with equal shapes share one forward.

    With `branch` = k > 0, `skip_layers` apply not to the entries but to extra skip-layer copies of the
    first k entries, batched into the same forwards (`MMDiTX.forward(branch_rows=...)`); their predictions
    are appended, giving len(entries) + k outputs. `cache` (a `StepCache`) may reuse block work across steps
    for forwards without skip layers. `inputs` (a dict owned by the caller) keeps each group's batched
    context and pooled vector on x's device between calls: built once instead of copied to the device every
    step (a host-to-device copy from pageable memory, which waits for the queued work on CUDA).
    """
    dtype = next(model.parameters()).dtype
    batch = x.shape[0]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault(tuple(entry.conditioning.context.shape), []).append(i)
    outputs: list[torch.Tensor | None] = [None] * (len(entries) + branch)
    for indices in groups.values():
        n = len(indices)
        context, pooled = _group_inputs(entries, indices, batch, x.device, dtype, {} if inputs is None else inputs)
        branched = [j for j, i in enumerate(indices) if i < branch]
        rows = [j * batch + r for j in branched for r in range(batch)] if branch else None
        kwargs: dict = {"skip_layers": skip_layers}
        if rows is not None:
            kwargs["branch_rows"] = rows
        elif cache is not None and not skip_layers:  # one cache stream per batch shape and conditioning set
            key = (tuple(x.shape), tuple(id(entries[i].conditioning) for i in indices))
            kwargs["block_cache"] = cache.for_key(key)
        timestep = (sigma * 1000.0).expand(batch * n).to(torch.float32)
        v = model(
            x.repeat(n, 1, 1, 1).to(dtype),
            timestep.to(x.device),
            pooled,
            context,
            **kwargs,
        ).float()
        xs = x.repeat(n + len(branched), 1, 1, 1)
        denoised = denoised_from_velocity(xs, v, sigma).chunk(n + len(branched))
        for chunk, i in zip(denoised, indices + [len(entries) + indices[j] for j in branched], strict=True):
            outputs[i] = chunk
    return outputs  # type: ignore[return-value]


def _average(predictions: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """ComfyUI averages the active entries' predictions; with none active the prediction is zero."""
    if not predictions:
        return torch.zeros_like(like)
    return torch.stack(predictions).mean(0)


def make_denoise_fn(
    model: MMDiTX,
    positive: CondList,
    negative: CondList,
    guidance: Guidance,
    model_sampling: ModelSampling,
    *,
    batch_slg: bool = False,
    step_cache: StepCache | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """fn(x [B,16,h,w] fp32, sigma (0-d), step) -> denoised [B,16,h,w] fp32.

    Cond and uncond run in one batched forward when their context lengths match. With cfg == 1 the
    uncond pass is skipped (as ComfyUI does). The SLG pass (positive only, listed blocks skipped) runs only
    on steps where the guidance window is active; with `batch_slg` (which needs `MMDiTX.forward`'s
    branch_rows; `sample_latents` turns it on) it joins the same forward, sharing the blocks before the
    first skipped one (equal to the separate pass up to float rounding).
    `step_cache` (opt-in, approximate) reuses block work across steps; None computes every step fully.
    """
    inputs: dict = {}  # conditioning batched on the device once, reused every step (see `predict`)

    @torch.no_grad()
    def denoise(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        # samplers may pass σ per batch element; all are equal (ComfyUI reads the first one too)
        # The host value drives the guidance windows. Read from a CPU σ it costs no device sync; the device
        # copy is a fill kernel, not a host-to-device transfer (which would wait for the queued work).
        s = float(torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)[0])
        sigma = torch.full((), s, dtype=torch.float32, device=x.device)
        pos = active_entries(positive, s, model_sampling)
        neg = active_entries(negative, s, model_sampling) if guidance.cfg != 1.0 else ()
        slg = guidance.slg
        use_slg = slg is not None and slg.scale != 0 and slg.active(step, guidance.num_steps, s, model_sampling)
        layers = tuple(slg.layers) if slg is not None and use_slg else ()
        if use_slg and batch_slg:
            predictions = predict(model, x, sigma, pos + neg, layers, branch=len(pos), inputs=inputs)
            skipped = predictions[len(pos) + len(neg) :]
        else:
            predictions = predict(model, x, sigma, pos + neg, cache=step_cache, inputs=inputs)
            skipped = predict(model, x, sigma, pos, skip_layers=layers, inputs=inputs) if use_slg else []
        cond = _average(predictions[: len(pos)], x)
        if guidance.cfg == 1.0:
            out = cond
        else:
            out = cfg_combine(cond, _average(predictions[len(pos) : len(pos) + len(neg)], x), guidance.cfg)
        if slg is not None and use_slg:
            out = slg_combine(out, cond, _average(skipped, x), slg.scale)
        return out

    return denoise

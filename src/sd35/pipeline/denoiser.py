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
from sd35.sampling.flow import denoised_from_velocity
from sd35.sampling.guidance import SkipLayerGuidance, cfg_combine, slg_combine
from sd35.sampling.schedule import ModelSampling


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
) -> list[torch.Tensor]:
    """Denoised prediction [B, 16, h, w] (fp32) for each entry; entries with equal shapes share one forward."""
    dtype = next(model.parameters()).dtype
    batch = x.shape[0]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault(tuple(entry.conditioning.context.shape), []).append(i)
    outputs: list[torch.Tensor | None] = [None] * len(entries)
    for indices in groups.values():
        n = len(indices)
        context = torch.cat([entries[i].conditioning.context.expand(batch, -1, -1) for i in indices])
        pooled = torch.cat([entries[i].conditioning.pooled.expand(batch, -1) for i in indices])
        xs = x.repeat(n, 1, 1, 1)
        timestep = (sigma * 1000.0).expand(batch * n).to(torch.float32)
        v = model(
            xs.to(dtype),
            timestep.to(x.device),
            pooled.to(x.device, dtype),
            context.to(x.device, dtype),
            skip_layers=skip_layers,
        ).float()
        denoised = denoised_from_velocity(xs, v, sigma)
        for chunk, i in zip(denoised.chunk(n), indices, strict=True):
            outputs[i] = chunk
    return outputs  # type: ignore[return-value]


def _average(predictions: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """ComfyUI averages the active entries' predictions; with none active the prediction is zero."""
    if not predictions:
        return torch.zeros_like(like)
    return torch.stack(predictions).mean(0)


def make_denoise_fn(
    model: MMDiTX, positive: CondList, negative: CondList, guidance: Guidance, model_sampling: ModelSampling
) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """fn(x [B,16,h,w] fp32, sigma (0-d), step) -> denoised [B,16,h,w] fp32.

    Cond and uncond run in one batched forward when their context lengths match. With cfg == 1 the
    uncond pass is skipped (as ComfyUI does). The SLG pass (positive only, listed blocks skipped) runs only
    on steps where the guidance window is active.
    """

    @torch.no_grad()
    def denoise(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        # samplers may pass σ per batch element; all are equal (ComfyUI reads the first one too)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)[0]
        s = float(sigma)
        pos = active_entries(positive, s, model_sampling)
        neg = active_entries(negative, s, model_sampling) if guidance.cfg != 1.0 else ()
        predictions = predict(model, x, sigma, pos + neg)
        cond = _average(predictions[: len(pos)], x)
        if guidance.cfg == 1.0:
            out = cond
        else:
            out = cfg_combine(cond, _average(predictions[len(pos) :], x), guidance.cfg)
        slg = guidance.slg
        if slg is not None and slg.scale != 0 and slg.active(step, guidance.num_steps, s, model_sampling):
            skipped = predict(model, x, sigma, pos, skip_layers=tuple(slg.layers))
            out = slg_combine(out, cond, _average(skipped, x), slg.scale)
        return out

    return denoise

"""Timestep-ranged conditioning and the denoiser's guidance passes, as ComfyUI's sampler applies them."""

from __future__ import annotations

import torch

from sd35.pipeline.conditioning import CondEntry, active_entries, negative_for_request, single, zero_out
from sd35.pipeline.denoiser import Guidance, make_denoise_fn
from sd35.sampling.guidance import SkipLayerGuidance
from sd35.sampling.schedule import ModelSampling, get_sigmas
from sd35.types import Conditioning

MS = ModelSampling(shift=3.0)


def _cond(value: float, length: int = 5) -> Conditioning:
    return Conditioning(torch.full((1, length, 8), value), torch.full((1, 4), value))


def test_official_negative_switches_to_zeros_after_step_8_of_40() -> None:
    """comfyui.md §1 (measured in ComfyUI): with shift 3, 40 steps, sgm_uniform, steps 0–8 use the empty
    prompt's negative and steps 9–39 the zeroed one."""
    negative = negative_for_request(_cond(1.0), zero_after=0.2)
    sigmas = get_sigmas("sgm_uniform", 40, MS)
    used = []
    for step in range(40):
        active = active_entries(negative, float(sigmas[step]), MS)
        assert len(active) == 1, f"step {step}: {len(active)} entries active"
        used.append(float(active[0].conditioning.pooled.abs().sum()) > 0)
    assert used == [True] * 9 + [False] * 31


def test_zero_out_keeps_ranges_and_zeroes_both_tensors() -> None:
    entries = (CondEntry(_cond(2.0), 0.1, 0.7),)
    (zeroed,) = zero_out(entries)
    assert (zeroed.start_percent, zeroed.end_percent) == (0.1, 0.7)
    assert not zeroed.conditioning.context.any() and not zeroed.conditioning.pooled.any()
    assert entries[0].conditioning.context.all()  # input untouched


class _FakeModel(torch.nn.Module):
    """velocity = mean of the pooled vector (+10 per skipped layer): lets a test read what was run."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.calls: list[tuple[int, tuple[int, ...]]] = []

    def forward(self, x, timestep, pooled, context, skip_layers=()):  # noqa: ANN001
        self.calls.append((x.shape[0], tuple(skip_layers)))
        v = pooled.mean(-1) + 10.0 * len(skip_layers)
        return v[:, None, None, None].expand_as(x) * self.weight


def test_cfg_and_slg_formulas_and_passes() -> None:
    model = _FakeModel()
    slg = SkipLayerGuidance(layers=(1,), scale=2.0, start=0.1, end=0.5, rule="steps")
    fn = make_denoise_fn(model, single(_cond(1.0)), single(_cond(3.0)), Guidance(4.0, slg, 10), MS)
    x = torch.zeros(2, 16, 2, 2)
    sigma = torch.tensor(0.5)
    # step 0: outside the window (0.1·10 < i < 0.5·10 means steps 2..4)
    out = fn(x, sigma, 0)
    assert model.calls == [(4, ())]  # cond and uncond batched, batch 2 each
    d_cond, d_uncond = x - sigma * 1.0, x - sigma * 3.0
    torch.testing.assert_close(out, d_uncond + (d_cond - d_uncond) * 4.0)
    model.calls.clear()
    out = fn(x, sigma, 3)
    assert model.calls == [(4, ()), (2, (1,))]  # the SLG pass: positive only, layer 1 skipped
    d_skip = x - sigma * 11.0
    cfg = d_uncond + (d_cond - d_uncond) * 4.0
    torch.testing.assert_close(out, cfg + (d_cond - d_skip) * 2.0)


def test_cfg_one_skips_the_uncond_pass() -> None:
    model = _FakeModel()
    fn = make_denoise_fn(model, single(_cond(1.0)), single(_cond(3.0)), Guidance(1.0, None, 10), MS)
    out = fn(torch.zeros(1, 16, 2, 2), torch.tensor(0.3), 0)
    assert model.calls == [(1, ())]
    torch.testing.assert_close(out, torch.full((1, 16, 2, 2), -0.3))


def test_several_active_entries_are_averaged_and_none_gives_zero() -> None:
    model = _FakeModel()
    positive = (CondEntry(_cond(1.0)), CondEntry(_cond(5.0, length=7)))  # different lengths: two forwards
    negative = (CondEntry(_cond(2.0), 0.0, 0.0001),)  # active only at the very start
    fn = make_denoise_fn(model, positive, negative, Guidance(2.0, None, 10), MS)
    x = torch.zeros(1, 16, 2, 2)
    out = fn(x, torch.tensor(0.5), 5)
    cond = -0.5 * (1.0 + 5.0) / 2
    # no negative entry active at sigma 0.5: ComfyUI's uncond prediction is zero
    torch.testing.assert_close(out, torch.full_like(x, 0.0 + (cond - 0.0) * 2.0))

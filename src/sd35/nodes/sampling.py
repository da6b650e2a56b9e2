"""Sampling nodes: ModelSamplingSD3, SkipLayerGuidanceSD3, KSampler, KSamplerAdvanced.

Model patches return new frozen DiffusionModel values (never mutate their input). The samplers call
`pipeline.generate.sample_latents`, the same library call `sd35 generate` makes, with ComfyUI's
`common_ksampler` behaviour around it (empty 4-channel latents widened to 16, per-step progress).
Sources: ComfyUI `nodes.py`, `comfy_extras/nodes_model_advanced.py`, `nodes_sd3.py`, `nodes_slg.py`.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from sd35.nodes.services import Services
from sd35.nodes.values import SD3_LATENT_CHANNELS, Latent
from sd35.pipeline.components import DiffusionModel
from sd35.pipeline.conditioning import CondList
from sd35.pipeline.generate import SamplingSettings, sample_latents
from sd35.sampling.guidance import SkipLayerGuidance
from sd35.sampling.samplers import SAMPLERS, StepInfo
from sd35.sampling.schedule import SCHEDULERS, ModelSampling
from sd35.workflow import InputSpec, NodeContext, NodeSpec, OutputSpec

log = logging.getLogger(__name__)

# ComfyUI v0.3.64 KSampler.SAMPLERS / SCHEDULERS, listed as ComfyUI lists them so its workflows validate;
# names sd35 does not implement are refused when the prompt is validated.
COMFY_SAMPLER_NAMES = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)  # fmt: skip
COMFY_SCHEDULER_NAMES = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)  # fmt: skip
MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class PinnedSkipLayerGuidance(SkipLayerGuidance):
    """SLG whose sigma window was fixed when the node ran: ComfyUI's SkipLayerGuidanceDiT converts its
    percentages with the model_sampling of the MODEL it receives (a later ModelSamplingSD3 does not move it)."""

    pinned: ModelSampling = field(default_factory=ModelSampling)

    def sigma_window(self, model_sampling: ModelSampling) -> tuple[float, float]:
        return super().sigma_window(self.pinned)


def model_sampling_sd3(model: DiffusionModel, shift: float, **_: Any) -> tuple[DiffusionModel]:
    """A copy of MODEL with discrete-flow sampling of this shift, multiplier 1000 (ModelSamplingSD3)."""
    return (replace(model, model_sampling=ModelSampling(shift=shift, multiplier=1000.0)),)


def parse_layers(layers: str) -> tuple[int, ...]:
    """ComfyUI reads every run of digits: "7, 8, 9" → (7, 8, 9); anything else is ignored."""
    return tuple(int(x) for x in re.findall(r"\d+", layers))


def skip_layer_guidance_sd3(
    model: DiffusionModel, layers: str, scale: float, start_percent: float, end_percent: float, **_: Any
) -> tuple[DiffusionModel]:
    """MODEL with Skip Layer Guidance (positive-only pass with these joint blocks skipped, sigma window).
    No layers → the model unchanged, as ComfyUI."""
    blocks = parse_layers(layers)
    if not blocks:
        return (model,)
    if model.slg is not None:
        log.warning("SkipLayerGuidanceSD3: the model already has Skip Layer Guidance; this node replaces it")
    slg = PinnedSkipLayerGuidance(
        layers=blocks, scale=scale, start=start_percent, end=end_percent, rule="sigma", pinned=model.model_sampling
    )
    return (replace(model, slg=slg),)


def skip_layer_guidance_dit(
    model: DiffusionModel,
    double_layers: str,
    single_layers: str,
    scale: float,
    start_percent: float,
    end_percent: float,
    rescaling_scale: float,
    **_: Any,
) -> tuple[DiffusionModel]:
    """ComfyUI SkipLayerGuidanceDiT on SD3: `double_layers` are the joint blocks; an MMDiT has no single
    blocks, so `single_layers` skip nothing (ComfyUI's patch finds no such block either)."""
    if parse_layers(single_layers) and not parse_layers(double_layers):
        log.info("SkipLayerGuidanceDiT: SD3 has no single blocks; the model is unchanged")
    return skip_layer_guidance_sd3(model, double_layers, scale, start_percent, end_percent)


def check_rescaling(rescaling_scale: float = 0.0, **_: Any) -> bool | str:
    if rescaling_scale != 0:
        return "rescaling_scale other than 0 is not implemented by sd35"
    return True


def check_sampler(sampler_name: str | None = None, scheduler: str | None = None, **_: Any) -> bool | str:
    """VALIDATE_INPUTS: refuse ComfyUI names sd35 has no implementation for (before anything runs)."""
    if sampler_name is not None and sampler_name not in SAMPLERS:
        return f"sampler_name {sampler_name!r} is not implemented by sd35; available: {', '.join(SAMPLERS)}"
    if scheduler is not None and scheduler not in SCHEDULERS:
        return f"scheduler {scheduler!r} is not implemented by sd35; available: {', '.join(SCHEDULERS)}"
    return True


def _latent_in(latent: Latent) -> torch.Tensor:
    """ComfyUI fix_empty_latent_channels: an all-zero latent with the wrong channel count is repeated to 16."""
    samples = latent.samples
    if samples.shape[1] != SD3_LATENT_CHANNELS and not bool(torch.count_nonzero(samples)):
        repeats = -(-SD3_LATENT_CHANNELS // samples.shape[1])
        samples = samples.repeat(1, repeats, 1, 1)[:, :SD3_LATENT_CHANNELS]
    return samples


def common_ksampler(
    services: Services,
    model: DiffusionModel,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: CondList,
    negative: CondList,
    latent: Latent,
    context: NodeContext,
    **options: Any,
) -> tuple[Latent]:
    """ComfyUI `common_ksampler`: the inputs both KSampler nodes share, in the same order, plus node-specific
    `options` (further SamplingSettings fields); reports per-step progress to `context`."""
    settings = SamplingSettings(seed=seed, steps=steps, cfg=cfg, sampler=sampler_name, scheduler=scheduler, **options)

    def on_step(info: StepInfo) -> None:
        context.report_progress(info.step + 1, info.total)  # raises Cancelled when interrupted

    samples = sample_latents(model, positive, negative, _latent_in(latent), settings, services.policy, on_step)
    return (Latent(samples),)


def ksampler(
    services: Services,
    model: DiffusionModel,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: CondList,
    negative: CondList,
    latent_image: Latent,
    denoise: float,
    *,
    context: NodeContext,
) -> tuple[Latent]:
    """ComfyUI KSampler: full noise at `seed`, then `steps` steps (of int(steps/denoise) when denoise < 1)."""
    return common_ksampler(
        services, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, context,
        denoise=denoise,
    )  # fmt: skip


def ksampler_advanced(
    services: Services,
    model: DiffusionModel,
    add_noise: str,
    noise_seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: CondList,
    negative: CondList,
    latent_image: Latent,
    start_at_step: int,
    end_at_step: int,
    return_with_leftover_noise: str,
    *,
    context: NodeContext,
) -> tuple[Latent]:
    """ComfyUI KSamplerAdvanced: the schedule for `steps`, run from start_at_step to end_at_step (last sigma
    forced to 0 unless leftover noise is returned); add_noise "disable" starts from the latent as is."""
    return common_ksampler(
        services, model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, context,
        add_noise=add_noise == "enable",
        start_step=start_at_step,
        end_step=end_at_step,
        leftover_noise=return_with_leftover_noise == "enable",
    )  # fmt: skip


def ksampler_specs(services: Services) -> list[NodeSpec]:
    return [
        _ksampler_spec(functools.partial(ksampler, services)),
        _ksampler_advanced_spec(functools.partial(ksampler_advanced, services)),
        *_patch_specs(),
    ]


def _common_inputs(tooltips: bool) -> dict[str, InputSpec]:
    def tip(text: str) -> str | None:
        return text if tooltips else None

    return {
        "steps": InputSpec("steps", "INT", default=20, min=1, max=10000, tooltip=tip(STEPS_TOOLTIP)),
        "cfg": InputSpec(
            "cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=tip(CFG_TOOLTIP)
        ),
        "sampler_name": InputSpec("sampler_name", "COMBO", choices=COMFY_SAMPLER_NAMES, tooltip=tip(SAMPLER_TOOLTIP)),
        "scheduler": InputSpec(
            "scheduler",
            "COMBO",
            choices=COMFY_SCHEDULER_NAMES,
            tooltip=tip("The scheduler controls how noise is gradually removed to form the image."),
        ),
    }


def _ksampler_spec(function: Any) -> NodeSpec:
    common = _common_inputs(tooltips=True)
    return NodeSpec(
        "KSampler",
        inputs=(
            InputSpec("model", "MODEL", tooltip="The model used for denoising the input latent."),
            InputSpec(
                "seed",
                "INT",
                default=0,
                min=0,
                max=MAX_SEED,
                control_after_generate=True,
                tooltip="The random seed used for creating the noise.",
            ),
            common["steps"],
            common["cfg"],
            common["sampler_name"],
            common["scheduler"],
            InputSpec(
                "positive",
                "CONDITIONING",
                tooltip="The conditioning describing the attributes you want to include in the image.",
            ),
            InputSpec(
                "negative",
                "CONDITIONING",
                tooltip="The conditioning describing the attributes you want to exclude from the image.",
            ),
            InputSpec("latent_image", "LATENT", tooltip="The latent image to denoise."),
            InputSpec("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=DENOISE_TOOLTIP),
        ),
        outputs=(OutputSpec("LATENT", tooltip="The denoised latent."),),
        function=function,
        category="sampling",
        display_name="KSampler",
        description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
        validate_inputs=check_sampler,
    )


def _ksampler_advanced_spec(function: Any) -> NodeSpec:
    common = _common_inputs(tooltips=False)
    return NodeSpec(
        "KSamplerAdvanced",
        inputs=(
            InputSpec("model", "MODEL"),
            InputSpec("add_noise", "COMBO", choices=("enable", "disable")),
            InputSpec("noise_seed", "INT", default=0, min=0, max=MAX_SEED, control_after_generate=True),
            common["steps"],
            common["cfg"],
            common["sampler_name"],
            common["scheduler"],
            InputSpec("positive", "CONDITIONING"),
            InputSpec("negative", "CONDITIONING"),
            InputSpec("latent_image", "LATENT"),
            InputSpec("start_at_step", "INT", default=0, min=0, max=10000),
            InputSpec("end_at_step", "INT", default=10000, min=0, max=10000),
            InputSpec("return_with_leftover_noise", "COMBO", choices=("disable", "enable")),
        ),
        outputs=(OutputSpec("LATENT"),),
        function=function,
        category="sampling",
        display_name="KSampler (Advanced)",
        validate_inputs=check_sampler,
    )


def _patch_specs() -> list[NodeSpec]:
    return [
        NodeSpec(
            "ModelSamplingSD3",
            inputs=(
                InputSpec("model", "MODEL"),
                InputSpec("shift", "FLOAT", default=3.0, min=0.0, max=100.0, step=0.01),
            ),
            outputs=(OutputSpec("MODEL"),),
            function=model_sampling_sd3,
            category="advanced/model",
            display_name="ModelSamplingSD3",
            python_module="comfy_extras.nodes_model_advanced",
        ),
        _slg_spec("SkipLayerGuidanceSD3", ("layers",), skip_layer_guidance_sd3, "comfy_extras.nodes_sd3"),
        _slg_spec(
            "SkipLayerGuidanceDiT",
            ("double_layers", "single_layers"),
            skip_layer_guidance_dit,
            "comfy_extras.nodes_slg",
            InputSpec("rescaling_scale", "FLOAT", default=0.0, min=0.0, max=10.0, step=0.01),
            validate_inputs=check_rescaling,
        ),
    ]


def _slg_spec(
    name: str, layer_inputs: tuple[str, ...], function: Any, python_module: str, *extra: InputSpec, **options: Any
) -> NodeSpec:
    """SkipLayerGuidanceSD3 / SkipLayerGuidanceDiT (in ComfyUI the SD3 node subclasses the DiT one): MODEL, the
    layer lists ("7, 8, 9" strings), the same scale and sigma-window inputs, then `extra` inputs."""
    return NodeSpec(
        name,
        inputs=(
            InputSpec("model", "MODEL"),
            *(InputSpec(layers, "STRING", default="7, 8, 9", extra=(("multiline", False),)) for layers in layer_inputs),
            InputSpec("scale", "FLOAT", default=3.0, min=0.0, max=10.0, step=0.1),
            InputSpec("start_percent", "FLOAT", default=0.01, min=0.0, max=1.0, step=0.001),
            InputSpec("end_percent", "FLOAT", default=0.15, min=0.0, max=1.0, step=0.001),
            *extra,
        ),
        outputs=(OutputSpec("MODEL"),),
        function=function,
        category="advanced/guidance",
        description="Generic version of SkipLayerGuidance node that can be used on every DiT model.",
        python_module=python_module,
        experimental=True,
        **options,
    )


STEPS_TOOLTIP = "The number of steps used in the denoising process."
CFG_TOOLTIP = (
    "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result "
    "in images more closely matching the prompt however too high values will negatively impact quality."
)
SAMPLER_TOOLTIP = (
    "The algorithm used when sampling, this can affect the quality, speed, and style of the generated output."
)
DENOISE_TOOLTIP = (
    "The amount of denoising applied, lower values will maintain the structure of the initial image allowing "
    "for image to image sampling."
)

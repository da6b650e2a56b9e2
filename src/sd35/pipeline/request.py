"""GenerationRequest: everything one txt2img/img2img call needs, validated before any weights load.

Defaults follow the official SD3.5 Medium ComfyUI workflow (`SD3.5M_example_workflow.json`: 40 steps,
cfg 5.5, dpmpp_2m, sgm_uniform, ModelSamplingSD3 shift 3.0, negative zeroed after 20 % of the schedule) with
Skip Layer Guidance on as the model card recommends (layers 7,8,9, scale 2.5, 0.01–0.20: sd3.5 `sd3_infer.py`
CONFIGS["sd3.5_medium"]["skip_layer_config"]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sd35.errors import UserInputError
from sd35.sampling.guidance import SkipLayerGuidance  # re-exported for front ends
from sd35.sampling.samplers import SAMPLERS
from sd35.sampling.schedule import SCHEDULERS

DEFAULT_SLG = SkipLayerGuidance(layers=(7, 8, 9), scale=2.5, start=0.01, end=0.20, rule="steps")
SIZE_MULTIPLE = 16  # 8 (VAE) × 2 (patch): smaller steps give latents the MMDiT must pad
MAX_SEED = 2**64 - 1  # ComfyUI KSampler seed range


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. `init_image` is an [H, W, 3] float image in [0, 1] (already loaded by the caller)."""

    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    steps: int = 40
    cfg: float = 5.5
    sampler: str = "dpmpp_2m"
    scheduler: str = "sgm_uniform"
    shift: float = 3.0
    seed: int = 0
    batch_size: int = 1
    slg: SkipLayerGuidance | None = DEFAULT_SLG
    # the official workflow gives the negative prompt for the first 20 % of the schedule, then zeroed
    # conditioning (ConditioningZeroOut + ConditioningSetTimestepRange 0.2–1); None = the plain negative
    negative_zero_after: float | None = 0.2
    init_image: object | None = field(default=None, repr=False)
    denoise: float = 1.0

    def validate(self, max_latent_side: int | None = None) -> None:
        """Raise UserInputError naming the first problem; `max_latent_side` is the position table in pixels."""
        for name, value in (("width", self.width), ("height", self.height)):
            if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
                raise UserInputError(f"{name} {value} must be a positive multiple of {SIZE_MULTIPLE}")
            if max_latent_side is not None and value > max_latent_side:
                raise UserInputError(
                    f"{name} {value} is larger than the model's position table allows ({max_latent_side} px)"
                )
        if self.steps < 1:
            raise UserInputError(f"steps must be at least 1 (got {self.steps})")
        if self.batch_size < 1:
            raise UserInputError(f"batch size must be at least 1 (got {self.batch_size})")
        if self.sampler not in SAMPLERS:
            raise UserInputError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if self.scheduler not in SCHEDULERS:
            raise UserInputError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        if not 0.0 <= self.denoise <= 1.0:
            raise UserInputError(f"denoise must be within [0, 1] (got {self.denoise})")
        if self.denoise < 1.0 and self.init_image is None:
            raise UserInputError("denoise < 1 needs an init image")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserInputError(f"seed must be within [0, 2^64-1] (got {self.seed})")
        if self.cfg < 0:
            raise UserInputError(f"cfg must not be negative (got {self.cfg})")
        if self.shift <= 0:
            raise UserInputError(f"shift must be positive (got {self.shift})")
        if self.negative_zero_after is not None and not 0.0 <= self.negative_zero_after <= 1.0:
            raise UserInputError("the negative's zero-out point must be within [0, 1]")
        if self.slg is not None:
            if not 0.0 <= self.slg.start <= self.slg.end <= 1.0:
                raise UserInputError("Skip Layer Guidance needs 0 <= start <= end <= 1")
            if any(layer < 0 for layer in self.slg.layers):
                raise UserInputError("Skip Layer Guidance layers must be non-negative block indices")

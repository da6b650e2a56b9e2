"""Speed options of a generation, and applying the ones that transform the loaded MMDiT.

Defaults are the exact path (no option changes the maths beyond float rounding) except the batched SLG
pass, which is the same computation run in one forward. Everything approximate is opt-in:

- `step_cache` > 0: reuse the MMDiT's blocks across steps when the first block's output barely changes
  (pipeline.step_cache); 0 = off, bit-identical to no cache.
- `compile`: torch.compile of each joint block (runtime.compile); numerically equal up to float rounding,
  costs a one-time warm-up (reported).
- `int8`: dynamic int8 quantization of the joint blocks' Linear layers (CPU, fp32 weights).
- `fp8`: fp8 weights, fp8 matmuls via torch._scaled_mm on Ada/Hopper GPUs; elsewhere dequantized per call.
- `threads`: torch intra-op threads on the CPU (None: torch's default, one per core).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from sd35.errors import UserInputError
from sd35.pipeline.components import Components, DiffusionModel
from sd35.pipeline.step_cache import StepCache
from sd35.runtime.compile import CompileReport, compile_blocks
from sd35.runtime.cpu import apply_cpu_settings
from sd35.runtime.devices import DevicePolicy
from sd35.runtime.quant import fp8_matmul_supported, quantize_fp8_, quantize_int8_dynamic_

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPath:
    batch_slg: bool = True
    step_cache: float = 0.0
    compile: bool = False
    int8: bool = False
    fp8: bool = False
    threads: int | None = None

    def validate(self) -> None:
        if self.step_cache < 0:
            raise UserInputError(f"--step-cache must be >= 0 (0 = off), got {self.step_cache}")
        if self.threads is not None and self.threads < 1:
            raise UserInputError(f"--threads must be >= 1, got {self.threads}")
        if self.int8 and self.fp8:
            raise UserInputError("--int8 and --fp8 are alternatives; choose one")

    def new_step_cache(self) -> StepCache | None:
        """A fresh cache for one sampling run, or None when caching is off."""
        return StepCache(self.step_cache) if self.step_cache > 0 else None


def apply_fast_path(components: Components, fast: FastPath) -> tuple[Components, CompileReport | None]:
    """`apply_fast_path_to` on the components' MMDiT; returns the components to use."""
    diffusion, report = apply_fast_path_to(components.diffusion, components.policy, fast)
    return replace(components, diffusion=diffusion), report


def apply_fast_path_to(
    diffusion: DiffusionModel, policy: DevicePolicy, fast: FastPath
) -> tuple[DiffusionModel, CompileReport | None]:
    """CPU settings, then quantization, then compilation of the MMDiT; returns the model to use.

    The network is changed in place (quantized layers replace its Linear children), so do this once, right
    after loading, before any LoRA is applied or any copy is made.
    """
    fast.validate()
    if policy.device.type == "cpu":
        settings = apply_cpu_settings(fast.threads)
        log.info("cpu: %d threads, malloc tuned %s, native bf16 %s", *vars(settings).values())
    network = diffusion.network
    if fast.int8:
        if policy.device.type != "cpu" or policy.dtype != torch.float32:
            raise UserInputError("--int8 runs on the CPU in fp32 only (use --device cpu --dtype fp32)")
        quantize_int8_dynamic_(network.joint_blocks)
    if fast.fp8:
        if not fp8_matmul_supported(policy.device):
            log.warning("--fp8: no fp8 matmuls on %s; weights are dequantized on every call (slow)", policy.device)
        quantize_fp8_(network.joint_blocks)
    # no inductor weight freezing: on CPUs it keeps a second, packed copy of the weights for a gain not
    # separable from no-freeze compilation in our measurements (BENCHMARKS.md)
    report = compile_blocks(network.joint_blocks) if fast.compile else None
    return replace(diffusion, network=network), report

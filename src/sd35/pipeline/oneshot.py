"""One generation straight from files, loading in stages so the text encoders and the MMDiT are never in
memory together: text encoders → encode → freed; then MMDiT + VAE → sample → decode.

Peak memory is max(text stage, image stage) instead of their sum: with the real files in fp32 on a CPU,
about 22 GB (T5-XXL 19 GB + CLIPs) then 10 GB, rather than 32 GB at once. `sd35 generate` uses this;
callers generating repeatedly keep `Components` loaded and call `generate` instead.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path

from sd35.lora import LoraSpec, apply_loras
from sd35.pipeline.fastpath import FastPath, apply_fast_path_to
from sd35.pipeline.files import Preflight, load_image_stack, load_text_stack
from sd35.pipeline.generate import GenerationResult, StepCallback, encode_request, render
from sd35.pipeline.request import GenerationRequest
from sd35.runtime.devices import DevicePolicy

log = logging.getLogger(__name__)


def generate_from_files(
    pre: Preflight,
    request: GenerationRequest,
    policy: DevicePolicy,
    *,
    tokenizer_dir: Path | None = None,
    loras: Sequence[LoraSpec] = (),
    fast: FastPath | None = None,
    on_step: StepCallback | None = None,
) -> GenerationResult:
    """Load → encode → free the text encoders → load → sample → decode (LoRAs merged into fresh weights)."""
    request.validate(pre.max_image_side)
    text = load_text_stack(pre, policy, tokenizer_dir=tokenizer_dir)
    if loras:
        _, text = apply_loras(None, text, loras, inplace=True)
    encoded = encode_request(text, request, policy)
    del text  # the conditioning is all the image stage needs
    gc.collect()
    fast = fast or FastPath()
    # --fp8 without LoRAs quantizes while loading; with LoRAs they are merged into the full-precision weights
    # first and apply_fast_path_to quantizes afterwards (it leaves layers that are fp8 already alone)
    diffusion, vae = load_image_stack(pre, policy, fp8=fast.fp8 and not loras)
    if loras:
        diffusion, _ = apply_loras(diffusion, None, loras, inplace=True)
    diffusion, _ = apply_fast_path_to(diffusion, policy, fast)  # after the LoRA merge: quantization swaps layers
    return render(diffusion, vae, request, encoded, policy, on_step, fast)

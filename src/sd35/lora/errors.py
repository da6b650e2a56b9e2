"""LoRA errors: each message names the file and the problem, so the CLI can print it as it is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sd35.errors import CheckpointError
from sd35.loading.errors import format_keys


class LoraError(CheckpointError):
    """A LoRA file that cannot be applied to the loaded SD3/SD3.5 models."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"LoRA {self.path}: {problem}")


class LoraArchitectureError(LoraError):
    """The file is a LoRA for another model family (SD1.x/SDXL UNet, Flux, ...)."""

    def __init__(self, path: str | Path, architecture: str, examples: Sequence[str]) -> None:
        self.architecture = architecture
        super().__init__(
            path,
            f"is a LoRA for {architecture}, not for SD3/SD3.5 (keys such as {format_keys(list(examples), 3)}); "
            "sd35 applies SD3/SD3.5 LoRAs only",
        )


class LoraKeyError(LoraError):
    """Keys that no SD3/SD3.5 LoRA naming convention maps to a weight of the loaded models."""

    def __init__(self, path: str | Path, keys: Sequence[str], hint: str = "") -> None:
        self.keys = sorted(keys)
        message = (
            f"{len(self.keys)} key(s) match no weight of the loaded models: {format_keys(self.keys)}. "
            "Known layouts: kohya/OneTrainer (lora_unet_*, lora_transformer_*, lora_te1_/te2_/te3_*), "
            "ComfyUI (diffusion_model.*, text_encoders.*), diffusers/PEFT (transformer.*, text_encoder*.*), "
            "SimpleTuner LyCORIS (lycoris_*)"
        )
        super().__init__(path, message + (f". {hint}" if hint else ""))


class LoraShapeError(LoraError):
    """Factor shapes that contradict each other (rank mismatch) or the weight they target."""

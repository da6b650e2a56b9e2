"""The affine map between VAE latents and the MMDiT's (sampler's) latent space."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentFormat:
    """`to_model(z) = (z − shift)·scale` and its inverse `to_vae(x) = x/scale + shift` (elementwise).

    Matches sd3.5 `sd3_impls.py SD3LatentFormat.process_in` / `process_out`.
    """

    scale_factor: float = 1.5305  # sd3.5 `SD3LatentFormat.scale_factor`
    shift_factor: float = 0.0609  # sd3.5 `SD3LatentFormat.shift_factor`

    def to_model(self, z_vae: torch.Tensor) -> torch.Tensor:
        """VAE latent [B,16,h,w] -> model latent [B,16,h,w] (reference `process_in`, used after encode)."""
        return (z_vae - self.shift_factor) * self.scale_factor

    def to_vae(self, x: torch.Tensor) -> torch.Tensor:
        """Model latent [B,16,h,w] -> VAE latent [B,16,h,w] (reference `process_out`, used before decode)."""
        return x / self.scale_factor + self.shift_factor


SD3_LATENT_FORMAT = LatentFormat(scale_factor=1.5305, shift_factor=0.0609)

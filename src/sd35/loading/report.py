"""`inspect_paths`: what each file holds, whether it would load, and what generation still needs.

Reads headers only: configs come from shapes, and each component's names and shapes are checked against
a model built on the meta device (the same check `load_component` runs before reading data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sd35.errors import CheckpointError
from sd35.loading.detect import ComponentInfo, scan
from sd35.loading.keymaps import COMPONENTS
from sd35.loading.load import check_found
from sd35.models.configs import AutoencoderConfig, CLIPTextConfig, MMDiTXConfig, T5Config


@dataclass(frozen=True)
class PathReport:
    """One inspected path: its components and their load problems, or the error that stopped reading."""

    path: Path
    components: tuple[ComponentInfo, ...] = ()
    problems: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class InspectReport:
    entries: tuple[PathReport, ...]
    missing: tuple[str, ...]  # components generation needs that no path holds
    mismatches: tuple[str, ...]  # components that do not fit together (widths)

    @property
    def ok(self) -> bool:
        """Every path was readable and every component would load."""
        return all(e.error is None and not e.problems for e in self.entries)

    @property
    def ready(self) -> bool:
        """Everything needed to generate is there and fits together."""
        return self.ok and not self.missing and not self.mismatches

    def to_json(self) -> dict:
        def info(c: ComponentInfo) -> dict:
            d = dataclasses.asdict(c)
            d["path"], d["sources"] = str(c.path), [str(s) for s in c.sources]
            d["config_type"] = type(c.config).__name__
            return d

        entries = [
            {
                "path": str(e.path),
                "components": [info(c) for c in e.components],
                "problems": list(e.problems),
                "error": e.error,
            }
            for e in self.entries
        ]
        return {
            "entries": entries,
            "missing": list(self.missing),
            "mismatches": list(self.mismatches),
            "ok": self.ok,
            "ready": self.ready,
        }

    def format(self) -> str:
        """A human-readable report (one block per path)."""
        lines = []
        for e in self.entries:
            lines.append(str(e.path))
            if e.error:
                lines.append(f"  error: {e.error}")
            for c in e.components:
                quant = f"+scales ({c.quantization})" if c.quantization else ""
                where = "" if c.path == e.path else f"  [{_relative(c.path, e.path)}]"
                lines.append(
                    f"  {c.component:<7} {c.layout:<9} {c.stored_dtype + quant:<14} {_count(c.n_params):>8} params "
                    f"{_size(c.n_bytes):>9}{where}"
                )
                role = f"; CLIP role from {c.detected_by}" if c.component.startswith("clip") else ""
                lines.append(f"          {describe_config(c.config)}{role}")
            lines += [f"  problem: {p}" for p in e.problems]
        if self.mismatches:
            lines += [f"mismatch: {m}" for m in self.mismatches]
        if self.missing:
            lines.append(f"missing for generation: {', '.join(self.missing)}")
        elif self.ready:
            lines.append("ready for generation: all five components found and compatible")
        if not self.ok:
            lines.append("some paths cannot be used as they are (see the errors above)")
        return "\n".join(lines)


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def describe_config(config: object) -> str:
    """One line per config type, with the facts a user checks (depth, width, table, ...)."""
    if isinstance(config, MMDiTXConfig):
        attn2 = config.x_block_self_attn_layers
        attn2_text = f"attn2 on blocks {attn2[0]}-{attn2[-1]}" if attn2 else "no attn2"
        side = config.pos_embed_max_size * config.patch_size * 8
        return (
            f"depth {config.depth}, hidden {config.hidden_size}, heads {config.num_heads}, "
            f"pos table {config.pos_embed_max_size} (up to {side}px), {attn2_text}, "
            f"qk-norm {'rms' if config.qk_norm else 'none'}, pooled {config.adm_in_channels}, "
            f"context {config.context_in_dim}"
        )
    if isinstance(config, AutoencoderConfig):
        return f"ch {config.ch}, mult {list(config.ch_mult)}, {config.num_res_blocks} res blocks, z {config.z_channels}"
    if isinstance(config, CLIPTextConfig):
        proj = f"projection {config.projection_dim}" if config.projection_dim else "no projection"
        return f"width {config.hidden_size}, {config.num_layers} layers, {config.hidden_act}, {proj}"
    if isinstance(config, T5Config):
        return f"d_model {config.d_model}, {config.num_layers} layers, d_ff {config.d_ff}, vocab {config.vocab_size}"
    return repr(config)


def _mismatches(first: dict[str, ComponentInfo]) -> list[str]:
    """Width rules between components (spec §3: pooled = L ‖ G; context = pad(L ‖ G) ‖ T5)."""
    out = []
    model = first.get("mmditx")
    if model is None:
        return out
    cfg: MMDiTXConfig = model.config  # type: ignore[assignment]
    clip_l, clip_g, t5, vae = (first.get(c) for c in ("clip_l", "clip_g", "t5xxl", "vae"))
    if clip_l and clip_g:
        l_cfg, g_cfg = clip_l.config, clip_g.config
        pooled = l_cfg.hidden_size + (g_cfg.projection_dim or g_cfg.hidden_size)
        if pooled != cfg.adm_in_channels:
            out.append(f"CLIP-L + CLIP-G pooled width {pooled} != diffusion model's {cfg.adm_in_channels}")
        if l_cfg.hidden_size + g_cfg.hidden_size > cfg.context_in_dim:
            out.append(f"CLIP-L + CLIP-G features are wider than the context width {cfg.context_in_dim}")
    if t5 and t5.config.d_model != cfg.context_in_dim:
        out.append(f"T5 width {t5.config.d_model} != diffusion model's context width {cfg.context_in_dim}")
    if vae and vae.config.z_channels != cfg.in_channels:
        out.append(f"VAE latent channels {vae.config.z_channels} != diffusion model's {cfg.in_channels}")
    return out


def inspect_paths(paths: Iterable[str | Path], *, verify: bool = True) -> InspectReport:
    """Inspect files/folders; `verify` also checks each component's keys and shapes against its model."""
    entries = []
    first: dict[str, ComponentInfo] = {}
    for path in map(Path, paths):
        try:
            found = scan(path)
        except CheckpointError as exc:
            entries.append(PathReport(path, error=str(exc)))
            continue
        problems = []
        for f in found:
            first.setdefault(f.info.component, f.info)
            if verify:
                try:
                    check_found(f)
                except CheckpointError as exc:
                    problems.append(str(exc))
        entries.append(PathReport(path, tuple(f.info for f in found), tuple(problems)))
    missing = tuple(c for c in COMPONENTS if c not in first)
    return InspectReport(tuple(entries), missing, tuple(_mismatches(first)))

"""Checkpoint errors raised by `sd35.loading`; each message names the file and says what to do."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sd35.errors import CheckpointError

LIST_LIMIT = 12  # keys shown per list in an error message; the rest are counted


def format_keys(keys: Sequence[str], limit: int = LIST_LIMIT) -> str:
    """'a, b, c (+N more)': a readable, bounded rendering of a key list."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


class CheckpointFormatError(CheckpointError):
    """The file is not a readable safetensors file (empty, text, truncated, inconsistent header, ...)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsafeCheckpointError(CheckpointError):
    """A pickle-based checkpoint (.ckpt/.pt/.pth/.bin/.pkl): sd35 never unpickles."""

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path = Path(path)
        target = self.path.with_suffix(".safetensors")
        super().__init__(
            f"{self.path}: is a {kind}. sd35 does not load pickles, because unpickling a file can run "
            "arbitrary code hidden in it. Download the .safetensors release of this model, or convert the "
            "file once where you trust it:\n"
            '  python -c "import torch; from safetensors.torch import save_file; '
            f"sd = torch.load('{self.path}', map_location='cpu', weights_only=True); "
            "sd = sd.get('state_dict', sd); "
            f"save_file({{k: v.contiguous() for k, v in sd.items()}}, '{target}')\""
        )


class WrongComponentError(CheckpointError):
    """The file is readable but does not hold the component that was asked for (or nothing known)."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class LoadError(CheckpointError):
    """Strict load failed: the file's tensors do not match the model built from the detected config.

    `missing`: model keys no file tensor fills; `unexpected`: file keys the model has no place for;
    `mismatched`: (key, shape in file, shape in model).
    """

    def __init__(
        self,
        component: str,
        source: str | Path,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        self.component = component
        self.source = Path(source)
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        lines = [f"{self.source}: cannot load {component}: the file does not match the {component} model"]
        if self.missing:
            lines.append(f"  missing {len(self.missing)} key(s): {format_keys(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected {len(self.unexpected)} key(s): {format_keys(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} (file {list(f)}, model {list(m)})" for k, f, m in self.mismatched]
            lines.append(f"  mis-shaped {len(shown)} tensor(s): {format_keys(shown, 6)}")
        lines.append("  The file may be damaged, or made for a different model.")
        super().__init__("\n".join(lines))

"""The one-way import rule of design.md §6.3, checked on every module's AST, and ruff."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sd35"

# Top-level packages every layer may use: stdlib-only helpers and small value types.
SHARED = {"errors", "types", "__init__"}

# package -> sd35 packages it may import (besides itself and SHARED). cli may also read files through
# `loading` (inspect, make-tiny) and tokenize through `text` (tokens): both are thin, read-only uses.
ALLOWED: dict[str, set[str]] = {
    "nn": set(),
    "models": {"nn"},
    "sampling": set(),
    "text": {"models", "nn"},
    "loading": {"models", "nn", "text"},
    "runtime": set(),
    "lora": {"models", "nn", "loading"},
    "pipeline": {"models", "nn", "text", "sampling", "loading", "runtime", "lora"},
    "imageio": set(),
    "workflow": set(),
    "nodes": {"workflow", "pipeline", "loading", "sampling", "runtime", "imageio", "text", "lora"},
    "cli": {"nodes", "workflow", "pipeline", "runtime", "imageio", "loading", "text", "server"},
    "server": {"nodes", "workflow", "pipeline", "runtime", "imageio", "text"},
}
# third-party modules a package must never import
FORBIDDEN_EXTERNAL = {
    "workflow": {"torch", "numpy", "PIL", "safetensors"},
    "models": {"safetensors", "PIL"},
    "sampling": {"safetensors", "PIL"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    package_parts = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
                names.add(module)
                if not node.module:
                    names.update(f"{base}.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
    return names


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).parts
        yield (rel[0] if len(rel) > 1 else Path(rel[0]).stem), path


@pytest.mark.parametrize(("layer", "path"), list(_modules()), ids=lambda v: str(v))
def test_one_way_imports(layer: str, path: Path) -> None:
    if layer in SHARED:
        allowed_internal: set[str] = set()
    else:
        allowed_internal = ALLOWED[layer] | {layer}
    bad = []
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "sd35":
            target = parts[1] if len(parts) > 1 else "__init__"
            if target not in SHARED and target not in allowed_internal:
                bad.append(name)
        elif parts[0] in FORBIDDEN_EXTERNAL.get(layer, set()):
            bad.append(name)
    assert not bad, f"{path.relative_to(SRC)} ({layer}) imports {sorted(bad)}"


def test_every_package_has_a_rule() -> None:
    for child in SRC.iterdir():
        if child.is_dir() and (child / "__init__.py").exists():
            assert child.name in ALLOWED, f"add {child.name} to ALLOWED in {__file__}"


def test_importing_sd35_does_not_import_torch() -> None:
    code = "import sys, sd35, sd35.errors, sd35.workflow; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a test dependency"
    root = SRC.parents[1]
    targets = [str(root / d) for d in ("src", "tests", "benchmarks") if (root / d).exists()]
    for command in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):  # lint, then layout
        result = subprocess.run([ruff, *command, *targets], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
